"""CTX.* inside MULTI/EXEC and Lua scripts, and WATCH: a rejected or conflicting command does not
mark the key as modified (docs/PROTOCOL.md, "Errors" and "Replication")."""

from __future__ import annotations

import pytest
import redis

from helpers import NO_COMMAND_LINE, NO_RAW_COMMANDS, assert_error, check_error, key_state
from wire import f_len, f_varint


@pytest.fixture
def ready(backend, pb):
    pb.register(backend, "order")
    pb.register(backend, "doc")
    return backend


# --------------------------------------------------------------------------- MULTI / EXEC


@pytest.mark.module_only(NO_RAW_COMMANDS)
def test_cas_inside_multi_exec_is_applied(ready, pb, r):
    b = ready
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(*b.cas_args("order:1", 0, pb.order(1), schema="order", by="a"))
    pipe.execute_command(*b.cas_args("order:1", 1, pb.order(2)))
    pipe.execute_command(*b.get_args("order:1"))
    res = pipe.execute()
    assert res[:2] == [1, 2]
    assert res[2][:3] == [2, pb.order(2), b"order"]


@pytest.mark.module_only(NO_RAW_COMMANDS)
def test_conflicts_inside_multi_exec_are_replies_not_errors(ready, pb, r):
    b = ready
    b.cas("order:1", 0, pb.order(1), schema="order")
    current = b.get("order:1")
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(*b.cas_args("order:1", 0, pb.order(1), schema="order"))
    pipe.execute_command(*b.cas_args("order:404", 3, pb.order(4)))
    pipe.execute_command(*b.del_args("order:1", 9))
    assert pipe.execute() == [current, None, current]


@pytest.mark.module_only(NO_RAW_COMMANDS)
def test_rejected_cas_inside_multi_exec_does_not_abort_the_transaction(ready, pb, r):
    b = ready
    b.cas("order:1", 0, pb.order(1), schema="order")
    before = key_state(r, "order:1")
    pipe = r.pipeline(transaction=True)
    pipe.set("a", 1)
    pipe.execute_command(*b.cas_args("order:1", 1, f_varint(2, 2) + f_len(1, b"\xff")))
    pipe.execute_command(*b.cas_args("order:1", 1, pb.order(9)))
    pipe.execute_command(*b.cas_args("order:2", 0, pb.order(1)))
    pipe.set("b", 2)
    res = pipe.execute(raise_on_error=False)
    assert res[0] is True and res[4] is True
    check_error(res[1], "CTXINVALID")
    check_error(res[2], "CTXVERSION")
    check_error(res[3], "CTXSCHEMA")
    assert key_state(r, "order:1") == before
    assert r.exists("order:2") == 0
    assert r.mget("a", "b") == [b"1", b"2"]


# --------------------------------------------------------------------------- Lua


@pytest.mark.module_only(reason="redis.call('CTX.CAS') needs the native commands")
def test_cas_from_lua_with_redis_call(ready, pb, r):
    b = ready
    script = "return redis.call('CTX.CAS', KEYS[1], ARGV[1], ARGV[2], 'SCHEMA', 'order', 'BY', 'lua')"
    assert r.eval(script, 1, "order:1", 0, pb.order(1)) == 1
    assert b.get("order:1")[4] == b"lua"
    # a conflict comes back as the current state (array) or nil
    assert r.eval(script, 1, "order:1", 0, pb.order(1)) == b.get("order:1")
    assert r.eval(script, 1, "order:2", 5, pb.order(6)) is None
    # an error keeps its code through redis.call ...
    with pytest.raises(redis.ResponseError) as ei:
        r.eval(script, 1, "order:1", 1, f_varint(2, 2) + f_len(1, b"\xff"))
    check_error(ei.value, "CTXINVALID")
    # ... and through pcall
    pscript = ("local ok = redis.pcall('CTX.CAS', KEYS[1], ARGV[1], ARGV[2]) "
               "return ok")
    with pytest.raises(redis.ResponseError) as ei:
        r.eval(pscript, 1, "order:1", 1, pb.order(7))
    check_error(ei.value, "CTXVERSION")
    assert b.get("order:1")[0] == 1
    get = "return redis.call('CTX.GET', KEYS[1])"
    assert r.eval(get, 1, "order:1") == b.get("order:1")


@pytest.mark.module_only(reason="CTX.* called from EVAL_RO / no-writes scripts needs the native "
                                 "commands")
def test_ctx_get_is_allowed_in_read_only_scripts_and_cas_is_not(ready, pb, r):
    b = ready
    b.cas("order:1", 0, pb.order(1), schema="order")
    assert r.execute_command("EVAL_RO", "return redis.call('CTX.GET', KEYS[1])", 1, "order:1")[0] == 1
    with pytest.raises(redis.ResponseError):
        r.execute_command("EVAL_RO", "return redis.call('CTX.CAS', KEYS[1], 1, ARGV[1])", 1,
                          "order:1", pb.order(2))
    with pytest.raises(redis.ResponseError):
        r.execute_command("EVAL", "#!lua flags=no-writes\nreturn redis.call('CTX.DEL', KEYS[1], 1)",
                          1, "order:1")
    assert b.get("order:1")[0] == 1


# --------------------------------------------------------------------------- WATCH


def _watch_then(backend, r, key, action):
    """WATCH ``key`` on one connection, run ``action`` on another, then try to EXEC."""
    other = backend.server.client()
    try:
        with r.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            action(backend.with_client(other))
            pipe.multi()
            pipe.set("watch:proof", "1")
            try:
                pipe.execute()
                return True
            except redis.WatchError:
                return False
    finally:
        other.close()
        other.connection_pool.disconnect()


def _bad(pb):
    return f_varint(2, 2) + f_len(1, b"\xff")


NOT_MODIFYING = {
    "stale-conflict": lambda b, pb: b.cas("order:1", 0, pb.order(1), schema="order"),
    "future-conflict": lambda b, pb: b.cas("order:1", 5, pb.order(6)),
    "invalid": lambda b, pb: _expect(b.cas, "CTXINVALID", "order:1", 1, _bad(pb)),
    "version": lambda b, pb: _expect(b.cas, "CTXVERSION", "order:1", 1, pb.order(5)),
    "schema-mismatch": lambda b, pb: _expect(b.cas, "CTXSCHEMA", "order:1", 1, pb.order(2), "doc"),
    "del-conflict": lambda b, pb: b.delete("order:1", 4),
    "get": lambda b, pb: b.get("order:1"),
}


def _expect(fn, code, *args):
    assert_error(code, fn, *args)


@pytest.mark.parametrize("case", list(NOT_MODIFYING))
def test_watch_survives_rejected_or_conflicting_writes(ready, pb, r, case):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    assert _watch_then(ready, r, "order:1", lambda b: NOT_MODIFYING[case](b, pb)) is True
    assert r.get("watch:proof") == b"1"


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_watch_survives_a_syntax_error(ready, pb, r):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    assert _watch_then(ready, r, "order:1", lambda b: _expect(
        b.command, "ERR", "CTX.CAS", "order:1", "x", pb.order(2))) is True
    assert r.get("watch:proof") == b"1"


@pytest.mark.parametrize("case", ["nil-conflict", "invalid-create", "no-schema", "unknown-schema"])
def test_watch_on_a_missing_key_survives_failed_creates(ready, pb, r, case):
    actions = {
        "nil-conflict": lambda b: b.cas("order:9", 3, pb.order(4)),
        "invalid-create": lambda b: _expect(b.cas, "CTXINVALID", "order:9", 0, _bad(pb)[:-1], "order"),
        "no-schema": lambda b: _expect(b.cas, "CTXSCHEMA", "order:9", 0, pb.order(1)),
        "unknown-schema": lambda b: _expect(b.cas, "CTXSCHEMA", "order:9", 0, pb.order(1), "nosuch"),
    }
    assert _watch_then(ready, r, "order:9", actions[case]) is True
    assert r.exists("order:9") == 0


def test_successful_cas_aborts_the_watchers_exec(ready, pb, r):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    assert _watch_then(ready, r, "order:1", lambda b: b.cas("order:1", 1, pb.order(2))) is False
    assert r.exists("watch:proof") == 0


def test_successful_create_aborts_the_watchers_exec(ready, pb, r):
    assert _watch_then(ready, r, "order:1",
                       lambda b: b.cas("order:1", 0, pb.order(1), schema="order")) is False


def test_successful_del_aborts_the_watchers_exec(ready, pb, r):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    assert _watch_then(ready, r, "order:1", lambda b: b.delete("order:1", 1)) is False


# --------------------------------------------------------------------------- protocol 3


@pytest.mark.module_only(NO_COMMAND_LINE)
@pytest.mark.parametrize("case", ["ctxgone", "bad-inc", "bad-px", "touch-absent", "touch-bad-ms",
                                  "px-conflict"])
def test_watch_survives_refused_protocol_3_writes(ready, pb, r, case):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    inc = ready.get("order:1")[5].decode()
    other = "1" * 16 if inc != "1" * 16 else "2" * 16
    actions = {
        "ctxgone": lambda b: _expect(b.command, "CTXGONE", "CTX.CAS", "order:1", 1, pb.order(2),
                                     "INC", other),
        "bad-inc": lambda b: _expect(b.command, "ERR", "CTX.DEL", "order:1", 1, "INC", "0" * 16),
        "bad-px": lambda b: _expect(b.command, "ERR", "CTX.CAS", "order:1", 1, pb.order(2),
                                    "PX", 0),
        "touch-absent": lambda b: b.command("CTX.TOUCH", "order:2", 1000),
        "touch-bad-ms": lambda b: _expect(b.command, "ERR", "CTX.TOUCH", "order:1", -5),
        "px-conflict": lambda b: b.command("CTX.CAS", "order:1", 7, pb.order(8), "PX", 1000),
    }
    assert _watch_then(ready, r, "order:1", actions[case]) is True
    assert r.get("watch:proof") == b"1" and r.pttl("order:1") == -1


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_a_touch_aborts_the_watchers_exec_and_px_works_inside_multi(ready, pb, r):
    ready.cas("order:1", 0, pb.order(1), schema="order")
    assert _watch_then(ready, r, "order:1",
                       lambda b: b.command("CTX.TOUCH", "order:1", 100_000)) is False
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("CTX.CAS", "order:1", 1, pb.order(2), "PX", 200_000)
    pipe.execute_command("CTX.TOUCH", "order:1", 300_000)
    pipe.execute_command("CTX.GET", "order:1")
    res = pipe.execute()
    assert res[:2] == [2, 1] and res[2][0] == 2 and len(res[2]) == 6
    assert 290_000 < r.pttl("order:1") <= 300_000
