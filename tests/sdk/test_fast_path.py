"""The module engine's hot paths of ``get`` / ``cas`` (no operation generator, direct sending on a
stock redis-py client) give exactly what the generic path gives: replies, conflicts, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import ctxlink
import ctxlink.aio
import pytest
import redis
import redis.asyncio
from ctxlink import _lua, _sync, _write
from ctxlink._order_schema import Order
from ctxlink._types import CasResult, Snapshot

# The direct sender (ctxlink._sync._Direct) is built for redis-py 6+ only; on 5 (allowed by
# pyproject, run by make test-floors) every command goes through execute_command.
needs_redis_py_6 = pytest.mark.skipif(int(redis.__version__.split(".")[0]) < 6,
                                      reason="the direct sender is for redis-py 6+")


@pytest.fixture
def mstore(module_server: Any) -> Any:
    r = module_server.client()
    r.flushall()
    store = ctxlink.connect(r, engine="module")
    store.register_schema("order", Order)
    yield store
    r.close()


def payload(version: int, price: int = 1) -> bytes:
    return Order(order_id="o-1", version=version, base_price=price).SerializeToString()


def generic_get(store: Any, key: str) -> Any:
    return _sync._run(store.client, _write.op_get(store._st, key))


@needs_redis_py_6
def test_stock_client_uses_the_direct_sender(mstore: Any) -> None:
    assert isinstance(mstore._send, _sync._Direct)


def test_lua_engine_has_no_fast_path(stock_server: Any) -> None:
    if _lua.find_lua_dir() is None:
        pytest.skip("no Lua scripts")
    assert ctxlink.connect(stock_server.client(), engine="lua")._send is None


def test_get_and_cas_match_the_generic_path(mstore: Any) -> None:
    assert mstore.get("k") is None and generic_get(mstore, "k") is None
    res = mstore.cas("k", 0, payload(1), schema="order", by="agent")
    assert res == CasResult(True, 1, None) and res and type(res) is CasResult
    snap = mstore.get("k")
    assert type(snap) is Snapshot and snap == generic_get(mstore, "k")
    assert (snap.version, snap.raw, snap.schema, snap.updated_by) == (1, payload(1), "order",
                                                                      "agent")
    assert snap.decode(Order).version == 1
    # conflict: the current state, built like the generic path's
    res = mstore.cas("k", 0, payload(1))
    assert not res and res.version == 1 and res.current == snap
    expected = _sync._run(mstore.client, _write.op_cas(mstore._st, "k", 0, payload(1), None, None))
    assert res == expected
    assert mstore.cas("absent", 3, payload(4)) == CasResult(False, 0, None)


def test_snapshot_is_immutable_and_prints_its_fields(mstore: Any) -> None:
    mstore.cas("k", 0, payload(1), schema="order")
    snap = mstore.get("k")
    with pytest.raises(AttributeError):
        snap.version = 5
    assert repr(snap).startswith("Snapshot(version=1, raw=b")
    assert hash(snap) == hash(Snapshot(**snap._asdict()))


def test_errors_map_to_the_same_classes(mstore: Any) -> None:
    with pytest.raises(ctxlink.ValidationError) as info:
        mstore.cas("bad", 0, b"\x0a\xff", schema="order")
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(ctxlink.VersionError):
        mstore.cas("bad", 0, payload(7), schema="order")
    with pytest.raises(ctxlink.SchemaError):
        mstore.cas("bad", 0, payload(1), schema="nope")
    mstore.client.set("plain", "x")
    with pytest.raises(ctxlink.WrongTypeError):
        mstore.get("plain")
    with pytest.raises(TypeError):
        mstore.cas("k", True, payload(1), schema="order")
    # an error reply that is not ours passes through unchanged (NOPERM)
    mstore.client.execute_command(
        "ACL", "SETUSER", "nocas", "on", "nopass", "+@all", "-ctx.cas", "~*"
    )
    limited = ctxlink.connect(
        redis.Redis(port=mstore.client.connection_pool.connection_kwargs["port"],
                    username="nocas", password="x"),
        engine="module",
    )
    with pytest.raises(redis.exceptions.ResponseError) as plain:
        limited.cas("k", 0, payload(1), schema="order")
    assert not isinstance(plain.value, ctxlink.CtxError)
    limited.client.close()


def test_writes_bypass_execute_command_and_reads_still_use_it(mstore: Any) -> None:
    """A write goes out once on a pooled connection (ctxlink._send): never through
    execute_command, whose retries could apply it twice; reads still go through an
    instance-patched execute_command (instrumentation sees them)."""
    client = mstore.client
    sent: list[tuple[Any, ...]] = []
    real = client.execute_command

    def recording(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        return real(*args, **kwargs)

    client.execute_command = recording
    try:
        mstore.cas("k", 0, payload(1), schema="order")
        mstore.get("k")
    finally:
        del client.execute_command
    assert [a[0] for a in sent] == ["CTX.GET"]
    assert mstore.get("k").version == 1


def test_response_callback_and_single_connection_clients(module_server: Any) -> None:
    single = redis.Redis(host="127.0.0.1", port=module_server.port, single_connection_client=True)
    store = ctxlink.connect(single, engine="module")
    store.register_schema("order", Order)
    assert store.cas("single", 0, payload(1), schema="order").ok
    assert store.get("single").version == 1  # type: ignore[union-attr]
    single.close()

    r = module_server.client()
    store = ctxlink.connect(r, engine="module")
    r.set_response_callback("CTX.GET", lambda reply, **kw: reply)
    assert store.get("single").version == 1  # type: ignore[union-attr]
    r.close()


@needs_redis_py_6
def test_a_dropped_connection_is_retried(mstore: Any) -> None:
    client = mstore.client
    mstore.cas("k", 0, payload(1), schema="order")
    conn = client.connection_pool.get_connection()
    client.connection_pool.release(conn)
    other = redis.Redis(host=conn.host, port=conn.port)
    other.client_kill_filter(_type="normal", skipme=True)
    other.close()
    assert mstore.get("k").version == 1  # type: ignore[union-attr]
    assert mstore.cas("k", 1, payload(2)).version == 2


def test_aio_fast_path(module_server: Any) -> None:
    async def main() -> None:
        r = redis.asyncio.Redis(host="127.0.0.1", port=module_server.port)
        try:
            await r.flushall()
            store = await ctxlink.aio.connect(r, engine="module")
            await store.register_schema("order", Order)
            assert await store.get("k") is None
            assert await store.cas("k", 0, payload(1), schema="order", by="a") == (
                CasResult(True, 1, None)
            )
            snap = await store.get("k")
            assert snap is not None and (snap.version, snap.updated_by) == (1, "a")
            res = await store.cas("k", 0, payload(1))
            assert not res and res.current == snap
            with pytest.raises(ctxlink.aio.ValidationError):
                await store.cas("bad", 0, b"\x0a\xff", schema="order")
        finally:
            await r.aclose()

    asyncio.run(main())


@needs_redis_py_6
def test_a_connection_error_goes_through_redis_py_retries(
    mstore: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mstore.cas("k", 0, payload(1), schema="order")
    real = redis.connection.Connection.send_command
    failures = [1]

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise redis.exceptions.ConnectionError("injected")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_command", flaky)
    assert mstore.get("k").version == 1  # type: ignore[union-attr]
    assert failures == [0]
    # no retries allowed: the error surfaces, as with execute_command
    client = mstore.client
    conn = client.connection_pool.get_connection()
    client.connection_pool.release(conn)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    monkeypatch.setattr(conn, "retry", Retry(NoBackoff(), 0))
    failures[0] = 1
    with pytest.raises(redis.exceptions.ConnectionError):
        mstore.get("k")
