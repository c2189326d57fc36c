"""Every bad value of an argument of protocol 3 (and the settings added with it) gets its
documented error and changes nothing (docs/PROTOCOL.md: CTX.CAS / CTX.PATCH / CTX.DEL `INC`
and `PX`, CTX.TOUCH, CTX.WAIT, CTX.SCHEMA.SET `HISTORY` / `HISTORYPAYLOADS` / `WINDOW`,
"History" for store.history, "The SDK" for ``ttl=``, ``incarnation=``, ``store.wait``,
``store.touch``).

One table, both engines. Each row is one bad call and the error it must raise: the SDK's calls
(``ArgumentError``, a ``ValueError``; ``TypeError`` for a wrong type) on both engines, and on
the module the raw commands with their ``ERR ...`` text. Every row runs against the same stored
state (a context with a TTL and a history stream, a second context, the registry) and requires
it byte-identical afterwards: ``DEBUG DIGEST`` (every key, its value and its expiry) and
``DEBUG DIGEST-VALUE`` of every key. The Lua engine has no command line (its scripts take what
the SDK checked), so its rows are the SDK's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import pytest
import redis
import servers as srv

import ctxlink

ORDER = "ctxlink.example.Order"
PX_MAX = 10**15


class Row(NamedTuple):
    id: str
    call: Callable[[ctxlink.Store, redis.Redis, Any], Any]
    error: type[BaseException]
    text: str                     # a part of the message (the module's error text, exactly)
    engines: tuple[str, ...] = ("module", "lua")


def _sdk(id_: str, call: Callable[[ctxlink.Store, redis.Redis, Any], Any], text: str = "",
         error: type[BaseException] = ctxlink.ArgumentError) -> Row:
    return Row(id_, call, error, text)


def _raw(id_: str, *args: Any, text: str) -> Row:
    """A module command line; the reply must be the error ``text`` exactly."""
    return Row(id_, lambda s, r, pb: r.execute_command(*args), redis.ResponseError, text,
               ("module",))


NAN, INF = float("nan"), float("inf")
ERR_INC = "ERR INC must be 16 hex digits, not all zero"
ERR_PX = f"ERR PX must be an integer from 1 to {PX_MAX}"
ERR_TOUCH = f"ERR milliseconds must be an integer from 1 to {PX_MAX}"
ERR_AFTER = "ERR after_version must be an integer from 0 to 9223372036854775806"
ERR_TIMEOUT = "ERR timeout_ms must be an integer from 0 (no timeout) to 1099511627776"
ERR_HISTORY = "ERR HISTORY must be an integer from 0 to 1000"
ERR_HPAYLOADS = "ERR HISTORYPAYLOADS must be yes or no"
ERR_WINDOW = "ERR WINDOW must be an integer from 1 to 255"
ERR_SYNTAX = "ERR syntax error"


def _payload(pb: Any, version: int) -> bytes:
    return pb.Order(order_id="o-1", version=version).SerializeToString()


def _rows() -> list[Row]:
    rows: list[Row] = []
    # store.history: since_version / limit
    for bad in (-1, 1.5, "1", True):
        rows.append(_sdk(f"history-since_version={bad!r}",
                         lambda s, r, pb, b=bad: s.history("ctx:1", since_version=b),
                         "since_version"))
        rows.append(_sdk(f"history-limit={bad!r}",
                         lambda s, r, pb, b=bad: s.history("ctx:1", limit=b), "limit"))
    # ttl= on cas (a create and an update), on update, and touch
    for bad in (0, -1, -0.5, NAN, INF, -INF, True, False, 10**12 + 1):
        rows.append(_sdk(f"cas-create-ttl={bad!r}",
                         lambda s, r, pb, b=bad: s.cas("ctx:new", 0, _payload(pb, 1),
                                                       schema="order", ttl=b), "ttl"))
        rows.append(_sdk(f"cas-update-ttl={bad!r}",
                         lambda s, r, pb, b=bad: s.cas("ctx:1", 3, _payload(pb, 4), ttl=b),
                         "ttl"))
        rows.append(_sdk(f"update-ttl={bad!r}",
                         lambda s, r, pb, b=bad: s.update(
                             "ctx:1", lambda o: setattr(o, "order_id", "x"),
                             message_class=pb.Order, ttl=b), "ttl"))
        rows.append(_sdk(f"touch-ttl={bad!r}", lambda s, r, pb, b=bad: s.touch("ctx:1", b),
                         "ttl"))
    for bad in ("5", b"5", [1]):
        rows.append(_sdk(f"cas-ttl-type={bad!r}",
                         lambda s, r, pb, b=bad: s.cas("ctx:1", 3, _payload(pb, 4), ttl=b),
                         error=TypeError))
        rows.append(_sdk(f"touch-ttl-type={bad!r}", lambda s, r, pb, b=bad: s.touch("ctx:1", b),
                         error=TypeError))
    # incarnation= (INC)
    for bad in ("0" * 16, "xyz", "0123456789abcdeg", "0123456789abcdef0", " " * 16):
        rows.append(_sdk(f"cas-incarnation={bad!r}",
                         lambda s, r, pb, b=bad: s.cas("ctx:1", 3, _payload(pb, 4),
                                                       incarnation=b), "incarnation"))
        rows.append(_sdk(f"delete-incarnation={bad!r}",
                         lambda s, r, pb, b=bad: s.delete("ctx:1", 3, incarnation=b),
                         "incarnation"))
    # store.wait: after_version / timeout (nothing blocks, nothing is sent)
    for bad in (-1, 1.5, "1", 2**63, True):
        rows.append(_sdk(f"wait-after_version={bad!r}",
                         lambda s, r, pb, b=bad: s.wait("ctx:1", b, 0.01), "after_version"))
    for bad in (-1, -0.001, NAN, -INF, "1", True):  # INF is "forever", as None
        rows.append(_sdk(f"wait-timeout={bad!r}",
                         lambda s, r, pb, b=bad: s.wait("ctx:1", 99, b), "timeout"))
    # register_schema(history=, history_payloads=) and an unknown setting
    for bad in (-1, 1001, 1.5, "3", True):
        rows.append(_sdk(f"register-history={bad!r}",
                         lambda s, r, pb, b=bad: s.register_schema(
                             "order", pb.fds("order"), message_type=ORDER, history=b),
                         "history"))
    for bad in ("yes", 1, 0, "maybe"):
        rows.append(_sdk(f"register-history_payloads={bad!r}",
                         lambda s, r, pb, b=bad: s.register_schema(
                             "order", pb.fds("order"), message_type=ORDER, history_payloads=b),
                         "history_payloads"))
    for bad in (0, -1, 256, 1.5, "16", True):
        rows.append(_sdk(f"register-window={bad!r}",
                         lambda s, r, pb, b=bad: s.register_schema(
                             "order", pb.fds("order"), message_type=ORDER, window=b),
                         "window"))
    rows.append(_sdk("register-unknown-setting",
                     lambda s, r, pb: s.register_schema("order", pb.fds("order"),
                                                        message_type=ORDER, maxlen=3),
                     error=TypeError))

    # ---- the module's command lines
    v4 = b"\x08\x04"  # field 1 (version) = 4: a valid Order at the next version
    for bad in ("xyz", "0" * 16, "0123456789abcdeg", "0123456789abcdef0", "0123456789abcde",
                ""):
        rows.append(_raw(f"CTX.CAS-INC={bad!r}", "CTX.CAS", "ctx:1", 3, v4, "INC", bad,
                         text=ERR_INC))
        rows.append(_raw(f"CTX.PATCH-INC={bad!r}", "CTX.PATCH", "ctx:1", 3, v4, "FIELDS", 1, 1,
                         "INC", bad, text=ERR_INC))
        rows.append(_raw(f"CTX.DEL-INC={bad!r}", "CTX.DEL", "ctx:1", 3, "INC", bad,
                         text=ERR_INC))
    rows.append(_raw("CTX.CAS-INC-missing-value", "CTX.CAS", "ctx:1", 3, v4, "INC",
                     text=ERR_SYNTAX))
    rows.append(_raw("CTX.CAS-INC-twice", "CTX.CAS", "ctx:1", 3, v4, "INC", "0123456789abcdef",
                     "INC", "0123456789abcdef", text=ERR_SYNTAX))
    for bad in (0, -1, PX_MAX + 1, "abc", "1.5", "", "1e3", 2**64):
        rows.append(_raw(f"CTX.CAS-PX={bad!r}", "CTX.CAS", "ctx:1", 3, v4, "PX", bad,
                         text=ERR_PX))
        rows.append(_raw(f"CTX.CAS-create-PX={bad!r}", "CTX.CAS", "ctx:new", 0, b"\x08\x01",
                         "SCHEMA", "order", "PX", bad, text=ERR_PX))
        rows.append(_raw(f"CTX.PATCH-PX={bad!r}", "CTX.PATCH", "ctx:1", 3, v4, "FIELDS", 1, 1,
                         "PX", bad, text=ERR_PX))
        rows.append(_raw(f"CTX.TOUCH={bad!r}", "CTX.TOUCH", "ctx:1", bad, text=ERR_TOUCH))
    rows.append(_raw("CTX.CAS-PX-twice", "CTX.CAS", "ctx:1", 3, v4, "PX", 1000, "PX", 1000,
                     text=ERR_SYNTAX))
    for bad in (-1, "abc", 2**63 - 1, "1.5", ""):
        rows.append(_raw(f"CTX.WAIT-after_version={bad!r}", "CTX.WAIT", "ctx:1", bad, 10,
                         text=ERR_AFTER))
    for bad in (-1, "abc", 2**40 + 1, "0.5", ""):
        rows.append(_raw(f"CTX.WAIT-timeout_ms={bad!r}", "CTX.WAIT", "ctx:1", 99, bad,
                         text=ERR_TIMEOUT))

    def schema_set(*opts: Any) -> Callable[[ctxlink.Store, redis.Redis, Any], Any]:
        return lambda s, r, pb: r.execute_command("CTX.SCHEMA.SET", "order", ORDER,
                                                  pb.fds("order"), *opts)

    for bad in (-1, 1001, "abc", "1.5", "", 2**64):
        rows.append(Row(f"CTX.SCHEMA.SET-HISTORY={bad!r}", schema_set("HISTORY", bad),
                        redis.ResponseError, ERR_HISTORY, ("module",)))
    for bad in ("maybe", "1", "0", "", "true", "yess"):
        rows.append(Row(f"CTX.SCHEMA.SET-HISTORYPAYLOADS={bad!r}",
                        schema_set("HISTORYPAYLOADS", bad), redis.ResponseError, ERR_HPAYLOADS,
                        ("module",)))
    for bad in (0, -1, 256, "abc", "1.5", "", 2**64):
        rows.append(Row(f"CTX.SCHEMA.SET-WINDOW={bad!r}", schema_set("WINDOW", bad),
                        redis.ResponseError, ERR_WINDOW, ("module",)))
    rows.append(Row("CTX.SCHEMA.SET-WINDOW-twice", schema_set("WINDOW", 32, "WINDOW", 32),
                    redis.ResponseError, ERR_SYNTAX, ("module",)))
    rows.append(Row("CTX.SCHEMA.SET-WINDOW", schema_set("WINDOW"), redis.ResponseError,
                    ERR_SYNTAX, ("module",)))
    for opts in (("MAXLEN", 3), ("HISTORY", 3, "HISTORY", 3), ("HISTORYPAYLOADS", "yes",
                 "HISTORYPAYLOADS", "no"), ("HISTORY",), ("HISTORYPAYLOADS",), ("FEEDX", 1)):
        rows.append(Row(f"CTX.SCHEMA.SET-{'-'.join(map(str, opts))}", schema_set(*opts),
                        redis.ResponseError, ERR_SYNTAX, ("module",)))
    return rows


ROWS = _rows()


def _state(r: redis.Redis) -> tuple[Any, dict[bytes, Any]]:
    keys = sorted(r.scan_iter(count=1000))
    return (r.execute_command("DEBUG", "DIGEST"),
            {k: (r.type(k), r.execute_command("DEBUG", "DIGEST-VALUE", k)[0],
                 r.execute_command("PEXPIRETIME", k)) for k in keys})


@pytest.fixture(scope="module")
def world(engine: str, shared_server: srv.Server, pb: Any) -> Iterator[tuple[ctxlink.Store,
                                                                            redis.Redis]]:
    """A context with a TTL and a history stream (3 writes), a second context, the registry;
    schema "order" keeps 5 changes with payloads."""
    r = shared_server.client()
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    store = ctxlink.connect(shared_server.client(socket_timeout=10), engine=engine)
    assert store.engine == engine
    store.register_schema("order", pb.fds("order"), message_type=ORDER, history=5,
                          history_payloads=True)
    assert store.cas("ctx:1", 0, _payload(pb, 1), schema="order", by="a", ttl=3600).ok
    assert store.cas("ctx:1", 1, _payload(pb, 2), by="b").ok
    assert store.cas("ctx:1", 2, _payload(pb, 3), by="c").ok
    assert store.cas("ctx:2", 0, _payload(pb, 1), schema="order").ok
    assert len(store.history("ctx:1")) == 3
    yield store, r
    store.client.close()
    r.close()


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_a_bad_argument_gets_its_documented_error_and_changes_nothing(
        engine: str, world: tuple[ctxlink.Store, redis.Redis], pb: Any, row: Row) -> None:
    if engine not in row.engines:
        pytest.skip(f"{row.id}: a command line of the module (the Lua engine has none)")
    store, r = world
    before = _state(r)
    assert before[1], "the state under test is there"
    with pytest.raises(row.error) as info:
        row.call(store, r, pb)
    if row.error is redis.ResponseError:
        assert srv.error_text(info.value) == row.text
    else:
        assert row.text in str(info.value)
        if row.error is ctxlink.ArgumentError:
            assert isinstance(info.value, ValueError)
    assert _state(r) == before, f"{row.id} changed the stored state"


def test_the_table_covers_what_the_issue_names() -> None:
    ids = " ".join(row.id for row in ROWS)
    for part in ("history-since_version=-1", "history-limit=-1", "cas-create-ttl=0",
                 "nan", "inf", "ttl=True", "touch-ttl=0", "wait-after_version=-1",
                 "wait-timeout=-1", "CTX.CAS-INC=", "CTX.CAS-PX=0", "CTX.SCHEMA.SET-HISTORY=-1",
                 "CTX.SCHEMA.SET-HISTORYPAYLOADS=", "CTX.SCHEMA.SET-MAXLEN-3",
                 "register-unknown-setting", "register-window=0", "CTX.SCHEMA.SET-WINDOW=0"):
        assert part in ids, part
    assert len(ROWS) > 150


def test_the_state_check_sees_a_touch_and_a_write(
        engine: str, world: tuple[ctxlink.Store, redis.Redis], pb: Any) -> None:
    """The comparison the table relies on does see an expiry and a history entry change."""
    store, r = world
    before = _state(r)
    assert store.touch("ctx:2", 7200)
    touched = _state(r)
    assert touched != before
    assert store.cas("ctx:2", 1, _payload(pb, 2)).ok
    assert _state(r) != touched
