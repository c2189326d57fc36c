"""The write-id window per schema (``WINDOW n`` / ``register_schema(window=)``; docs/PROTOCOL.md,
"Storage format" and "Write ids"), on both engines: a context keeps its schema's window of write
records, replays a re-send that many writes back, reports the oldest known version and refuses an
append's stale base (``rebase``) by it, and is trimmed by its next write when the setting shrinks.
The bound and the default are the C core's, and the Lua scripts' copies equal them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import ctxvalue
import pytest
import redis
import servers as srv
from faultproxy import FaultProxy
from test_append import ITEMS, _send

import ctxlink
from ctxlink._append import append_command
from ctxlink._ctxcore import lib
from ctxlink._window import WINDOW_DEFAULT, WINDOW_MAX

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(engine: str, shared_server: srv.Server) -> Iterator[ctxlink.Store]:
    shared_server.assert_alive()
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    s = ctxlink.connect(shared_server.client(), engine=engine)
    yield s
    s.client.close()
    shared_server.assert_alive()


def _value(server: srv.Server, key: str) -> ctxvalue.Value:
    return ctxvalue.decode(bytes(server.r.get(key)))


def _writes(store: ctxlink.Store, pb: Any, key: str, n: int, prefix: str = "w") -> None:
    """n updates of ``key``, each with write id ``<prefix><version it produces>``."""
    for _ in range(n):
        snap = store.get(key)
        assert snap is not None
        v = snap.version
        assert store.cas(key, v, pb.Order(order_id="o", base_price=v + 1),
                         write_id=f"{prefix}{v + 1}").ok


def _writes_matcher(agent: ctxlink.Store) -> Any:
    names = {b"CTX.CAS", b"CTX.PATCH"}

    def match(args: list[bytes]) -> bool:
        shas = {s.sha.encode() for n, s in list(agent._st.scripts.items())
                if n.split(":", 1)[0] in ("cas", "patch") and ":" in n}
        return bool(args) and (args[0].upper() in names or (
            args[0].upper() in (b"EVALSHA", b"EVALSHA_RO") and args[1] in shas))

    return match


def _lost_reply_then(store: ctxlink.Store, server: srv.Server, engine: str, pb: Any,
                     intervening: int) -> ctxlink.CasResult:
    """A write (version 1 -> 2) whose reply is lost while ``intervening`` other writes land,
    then re-sent by the SDK with its write id."""
    store.cas("o:lost", 0, pb.Order(order_id="o"), schema="order")

    def others(_: Any) -> None:
        for _ in range(intervening):
            store.update("o:lost", lambda o: setattr(o, "discount", o.discount + 1),
                         message_class=pb.Order)

    with FaultProxy(server.port) as proxy:
        agent = ctxlink.connect(redis.Redis(port=proxy.port), engine=engine)
        try:
            proxy.arm(_writes_matcher(agent), times=1, hook=others)
            return agent.cas("o:lost", 1, pb.Order(order_id="o", base_price=10),
                             write_id="lost-1")
        finally:
            agent.client.close()


def test_a_resend_40_writes_later_is_replayed_under_window_64(
        store: ctxlink.Store, shared_server: srv.Server, engine: str, pb: Any) -> None:
    assert store.register_schema("order", pb.Order, window=64) == 1
    result = _lost_reply_then(store, shared_server, engine, pb, 40)
    assert result.ok and result.replayed and result.version == 2
    order = store.get("o:lost").decode(pb.Order)  # type: ignore[union-attr]
    assert (order.base_price, order.discount) == (10, 40)  # landed once


def test_a_resend_20_writes_later_is_outcome_unknown_under_the_default_window(
        store: ctxlink.Store, shared_server: srv.Server, engine: str, pb: Any) -> None:
    store.register_schema("order", pb.Order)
    assert store.get_schema("order").window == WINDOW_DEFAULT == 16  # type: ignore[union-attr]
    with pytest.raises(ctxlink.OutcomeUnknownError):
        _lost_reply_then(store, shared_server, engine, pb, 20)
    order = store.get("o:lost").decode(pb.Order)  # type: ignore[union-attr]
    assert (order.base_price, order.discount) == (10, 20)


def test_a_context_keeps_its_schemas_window_of_records(
        store: ctxlink.Store, shared_server: srv.Server, pb: Any) -> None:
    store.register_schema("order", pb.Order, window=64)
    assert store.cas("o:1", 0, pb.Order(order_id="o"), schema="order", write_id="w1").ok
    _writes(store, pb, "o:1", 69)
    v = _value(shared_server, "o:1")
    assert (v.version, len(v.window), v.oldest_known) == (70, 64, 7)
    # the oldest record still replays, the one before it is gone: a conflict
    assert store.cas("o:1", 6, pb.Order(order_id="o", base_price=1), write_id="w7").replayed
    res = store.cas("o:1", 5, pb.Order(order_id="o", base_price=1), write_id="w6")
    assert not res.ok and not res.replayed and res.current.version == 70  # type: ignore[union-attr]


def test_the_largest_window_holds_255_records(
        store: ctxlink.Store, shared_server: srv.Server, pb: Any) -> None:
    assert WINDOW_MAX == lib.CTX_WINDOW_MAX == 255
    store.register_schema("order", pb.Order, window=WINDOW_MAX)
    assert store.cas("o:1", 0, pb.Order(order_id="o"), schema="order", write_id="w1").ok
    _writes(store, pb, "o:1", 259)
    v = _value(shared_server, "o:1")
    assert (v.version, len(v.window), v.oldest_known) == (260, 255, 6)
    assert store.cas("o:1", 5, pb.Order(order_id="o"), write_id="w6").replayed
    assert not store.cas("o:1", 4, pb.Order(order_id="o"), write_id="w5").ok


def test_a_smaller_window_trims_a_context_at_its_next_write(
        store: ctxlink.Store, shared_server: srv.Server, pb: Any) -> None:
    store.register_schema("order", pb.Order, window=64)
    assert store.cas("o:1", 0, pb.Order(order_id="o"), schema="order", write_id="w1").ok
    _writes(store, pb, "o:1", 39)
    assert len(_value(shared_server, "o:1").window) == 40
    assert store.register_schema("order", pb.Order, window=8) == 2  # a new revision
    assert len(_value(shared_server, "o:1").window) == 40  # nothing rewritten yet
    _writes(store, pb, "o:1", 1)
    v = _value(shared_server, "o:1")
    assert (v.version, len(v.window), v.oldest_known) == (41, 8, 34)
    assert [r.digest for r in v.window] == [ctxvalue.id_digest(f"w{n}")
                                            for n in range(41, 33, -1)]
    assert store.cas("o:1", 33, pb.Order(order_id="o"), write_id="w34").replayed
    assert not store.cas("o:1", 32, pb.Order(order_id="o"), write_id="w33").ok
    # growing it again keeps what is there and fills up
    store.register_schema("order", pb.Order, window=20)
    _writes(store, pb, "o:1", 15)
    assert len(_value(shared_server, "o:1").window) == 20


def test_an_append_is_rebased_only_beyond_the_schemas_window(
        store: ctxlink.Store, shared_server: srv.Server, pb: Any) -> None:
    store.register_schema("order", pb.Order, window=64)
    assert store.cas("o:1", 0, pb.Order(order_id="a"), schema="order").ok
    el = pb.Order(items=[{"sku": "z"}]).SerializeToString()
    for i in range(40):
        store.append("o:1", "items", [pb.LineItem(sku=str(i))], message_class=pb.Order)
    # base 1, 40 writes back: inside the window, applied (the default window would say rebase)
    args = append_command("o:1", 1, el, (), (ITEMS,), (), None, None, "a-1")
    assert _send(store, args) == 42
    assert _send(store, args) == [b"replayed", 42]
    for i in range(64):
        store.append("o:1", "items", [pb.LineItem(sku=f"x{i}")], message_class=pb.Order)
    before = bytes(shared_server.r.get("o:1"))
    args = append_command("o:1", 41, el, (), (ITEMS,), (), None, None, "a-2")
    assert _send(store, args) == [b"rebase", 106]
    assert bytes(shared_server.r.get("o:1")) == before


def test_a_delete_with_an_id_reports_the_oldest_version_the_window_knows(
        store: ctxlink.Store, shared_server: srv.Server, engine: str, pb: Any) -> None:
    store.register_schema("order", pb.Order, window=64)
    assert store.cas("o:1", 0, pb.Order(order_id="o"), schema="order", write_id="w1").ok
    _writes(store, pb, "o:1", 69)
    if engine == "module":
        reply = shared_server.r.execute_command("CTX.DEL", "o:1", 3, "ID", "d-1")
        assert reply[0] == 70 and reply[5] == 7
    assert not store.delete("o:1", 3)
    assert store.delete("o:1", 70)


def test_the_window_setting_is_kept_reported_and_outside_the_digest(
        store: ctxlink.Store, pb: Any) -> None:
    assert store.register_schema("order", pb.Order) == 1
    info = store.get_schema("order")
    assert info is not None and info.window == 16
    assert store.register_schema("order", pb.Order) == 1  # the same: nothing changes
    assert store.register_schema("order", pb.Order, window=16) == 1
    assert store.register_schema("order", pb.Order, window=100) == 2
    assert store.register_schema("order", pb.Order) == 2  # not given: the entry's
    info = store.get_schema("order")
    assert info is not None and (info.window, info.revision) == (100, 2)
    assert store.register_schema("order", pb.Order, history=3) == 3
    assert store.get_schema("order").window == 100  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [0, -1, 256, 1000, 1.5, "3", True, None.__class__])
def test_a_bad_window_is_refused_before_anything_is_sent(
        store: ctxlink.Store, shared_server: srv.Server, pb: Any, bad: Any) -> None:
    store.register_schema("order", pb.Order, window=32)
    before = shared_server.r.execute_command("DEBUG", "DIGEST")
    with pytest.raises(ctxlink.ArgumentError, match="window must be an int from 1 to 255"):
        store.register_schema("order", pb.Order, window=bad)
    assert shared_server.r.execute_command("DEBUG", "DIGEST") == before


def test_the_lua_copies_of_the_window_bound_are_the_c_cores() -> None:
    assert (lib.CTX_WINDOW_MAX, lib.CTX_WINDOW_DEFAULT) == (255, 16)
    prelude = (REPO_ROOT / "lua" / "prelude.lua").read_text()
    assert f"local WINDOW_MAX = {lib.CTX_WINDOW_MAX}\n" in prelude
    assert f"local WINDOW_DEFAULT = {lib.CTX_WINDOW_DEFAULT}\n" in prelude
    assert (WINDOW_MAX, WINDOW_DEFAULT) == (lib.CTX_WINDOW_MAX, lib.CTX_WINDOW_DEFAULT)
    header = (REPO_ROOT / "module" / "core" / "ctx_core.h").read_text()
    assert "#define CTX_WINDOW_MAX 255\n" in header


def test_the_async_store_sets_and_reports_the_window(
        engine: str, shared_server: srv.Server, pb: Any) -> None:
    import asyncio

    import redis.asyncio as aredis

    import ctxlink.aio

    shared_server.r.flushall()

    async def run() -> tuple[int, int, int]:
        client = aredis.Redis(port=shared_server.port)
        s = await ctxlink.aio.connect(client, engine=engine)
        rev = await s.register_schema("order", pb.Order, window=48)
        with pytest.raises(ctxlink.ArgumentError):
            await s.register_schema("order", pb.Order, window=0)
        info = await s.get_schema("order")
        await s.cas("o:1", 0, pb.Order(order_id="o"), schema="order")
        for v in range(1, 60):
            await s.cas("o:1", v, pb.Order(order_id="o", base_price=v))
        await client.aclose()
        assert info is not None
        return rev, info.window, len(_value(shared_server, "o:1").window)

    assert asyncio.run(run()) == (1, 48, 48)
