"""Misuse fails at once, before anything is written, with an exception whose message names the fix:
a client of the wrong kind, a URL, an out-of-range version, a bad descriptor set, a message class
that is not the schema's type, an async function given to the sync front end. And the way out of a
forced incompatible schema change: ``Store.migrate``. Real servers, both engines."""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

import ctxlink
import ctxlink.aio
import ctxlink.embedded
import pytest
import redis
import redis.asyncio
from ctxlink import ArgumentError, CtxError, MessageTypeError, SchemaError, ValidationError
from redis.exceptions import ResponseError
from sdk_support import Protos  # type: ignore[import-not-found]


@pytest.fixture
def store(client: redis.Redis, sdk_engine: str, protos: Protos) -> ctxlink.Store:
    s = ctxlink.connect(client, engine=sdk_engine)
    s.register_schema("order", protos.Order)
    return s


def url_of(server: Any, **query: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.url}/0" + (f"?{extra}" if extra else "")


def data_calls(client: redis.Redis) -> int:
    """Commands that could have written a context (module or Lua engine)."""
    stats = client.info("commandstats")
    return sum(
        v["calls"] for k, v in stats.items() if k in ("cmdstat_ctx.cas", "cmdstat_ctx.del",
                                                     "cmdstat_evalsha", "cmdstat_eval")
    )


def dirty(client: redis.Redis) -> int:
    """Writes since the last save (every write counts, on both engines)."""
    return int(client.info("persistence")["rdb_changes_since_last_save"])


def names_connected(client: redis.Redis) -> list[str]:
    return [c["name"] for c in client.client_list()]


def gone(client: redis.Redis, name: str) -> bool:
    """True once no connection named ``name`` is left (the server sees a close a moment later)."""
    for _ in range(100):
        if name not in names_connected(client):
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------------------------------
# the wrong kind of client, URLs


def test_sync_connect_refuses_an_asyncio_client_naming_aio_connect(module_server: Any) -> None:
    aclient = redis.asyncio.Redis(host="127.0.0.1", port=module_server.port)
    with pytest.raises(TypeError, match=r"ctxlink\.aio\.connect"):
        ctxlink.connect(aclient)


def test_aio_connect_refuses_a_sync_client_naming_connect(module_server: Any) -> None:
    with pytest.raises(TypeError, match=r"use ctxlink\.connect\(\)"):
        asyncio.run(ctxlink.aio.connect(module_server.client()))


def test_connect_refuses_what_is_not_a_client_or_a_url(module_server: Any) -> None:
    with pytest.raises(ArgumentError, match=r"redis://"):
        ctxlink.connect(f"127.0.0.1:{module_server.port}")
    with pytest.raises(TypeError, match=r"redis-py client"):
        ctxlink.connect(42)
    with pytest.raises(TypeError, match=r"server\.url or server\.client\(\)"):
        ctxlink.connect(module_server)  # the EmbeddedRedis itself
    with pytest.raises(ArgumentError, match=r"engine must be"):
        ctxlink.connect(module_server.client(), engine="sql")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"unknown_fields"):
        ctxlink.connect(module_server.client(), unknown_fields="ignore")  # type: ignore[arg-type]


def test_a_store_from_a_url_owns_and_closes_its_client(server: Any, sdk_engine: str,
                                                        client: redis.Redis,
                                                        protos: Protos) -> None:
    with ctxlink.connect(url_of(server, client_name="owned"), engine=sdk_engine) as store:
        assert store.engine == sdk_engine and isinstance(store.client, redis.Redis)
        store.register_schema("order", protos.Order)
        assert store.cas("u:1", 0, protos.Order(order_id="u"), schema="order").ok
        assert "owned" in names_connected(client)
    assert gone(client, "owned")
    # a Store given a client leaves it open
    given = server.client(client_name="given")
    store = ctxlink.connect(given, engine=sdk_engine)
    store.get("u:1")
    store.close()
    with store:
        pass
    assert given.ping() and "given" in names_connected(client)
    given.close()


def test_connect_from_a_url_closes_the_client_when_it_fails(module_server: Any) -> None:
    probe = module_server.client()
    with pytest.raises(ArgumentError):  # refused after the engine detection ran
        ctxlink.connect(url_of(module_server, client_name="failing"), engine="nope")  # type: ignore[arg-type]
    assert gone(probe, "failing")


def test_aio_connect_from_a_url_closes_the_client_when_it_fails(module_server: Any,
                                                                stock_server: Any) -> None:
    """Both engines: the asyncio Store's owned client is closed when connect() fails after
    opening it (a bad option refused after the engine detection; the module asked of a server
    without it)."""
    async def main() -> None:
        with pytest.raises(ArgumentError):
            await ctxlink.aio.connect(url_of(module_server, client_name="afailing"),
                                      engine="nope")  # type: ignore[arg-type]
        with pytest.raises(ctxlink.CtxError):
            await ctxlink.aio.connect(url_of(stock_server, client_name="afailing2"),
                                      engine="module")

    asyncio.run(main())
    assert gone(module_server.client(), "afailing")
    assert gone(stock_server.client(), "afailing2")


def test_connect_takes_a_unix_socket_url(tmp_path: Any, protos: Protos) -> None:
    sock = tmp_path / "redis.sock"
    with ctxlink.embedded.EmbeddedRedis(module=ctxlink.embedded.find_module(),
                               args=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
        with ctxlink.connect(f"unix://{sock}") as store:
            assert store.engine == "module"
            store.register_schema("order", protos.Order)
            assert store.cas("s", 0, protos.Order(order_id="s"), schema="order").ok


def test_aio_store_from_a_url_owns_its_client(server: Any, sdk_engine: str, client: redis.Redis,
                                             protos: Protos) -> None:
    async def main() -> None:
        async with await ctxlink.aio.connect(url_of(server, client_name="aowned"),
                                             engine=sdk_engine) as store:
            assert isinstance(store.client, redis.asyncio.Redis)
            await store.register_schema("order", protos.Order)
            assert (await store.cas("a:1", 0, protos.Order(), schema="order")).ok
            with pytest.raises(ArgumentError):  # the asyncio fast path checks the range too
                await store.cas("a:1", -1, b"", schema="order")
            assert "aowned" in names_connected(client)
        assert gone(client, "aowned")

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# arguments checked before sending


@pytest.mark.parametrize("bad", [-1, -(2**70), 2**63 - 1, 2**64])
def test_out_of_range_expected_version_is_refused_before_sending(
    store: ctxlink.Store, client: redis.Redis, protos: Protos, bad: int
) -> None:
    store.cas("k", 0, protos.Order(order_id="k"), schema="order")
    before, calls = client.get("k"), data_calls(client)
    raw = protos.Order(version=1).SerializeToString()
    for call in (
        lambda: store.cas("k", bad, raw, schema="order"),
        lambda: store.cas("k", bad, protos.Order(), schema="order"),
        lambda: store.delete("k", bad),
    ):
        with pytest.raises(ArgumentError, match=r"expected_version must be .* got") as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, CtxError)
    assert data_calls(client) == calls and client.get("k") == before


def test_lua_engine_limits_expected_version_to_2_pow_53(stock_server: Any, protos: Protos) -> None:
    r = stock_server.client()
    r.flushall()
    store = ctxlink.connect(r, engine="lua")
    with pytest.raises(ArgumentError, match=r"0\.\.9007199254740990 on the Lua engine"):
        store.cas("k", 2**53 - 1, b"", schema="order")
    assert store.cas("k", 2**53 - 2, b"") == ctxlink.CasResult(False, 0, None)  # conflict


def test_expected_version_of_the_wrong_type_is_a_type_error(store: ctxlink.Store) -> None:
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match=r"expected_version must be an int"):
            store.cas("k", bad, b"", schema="order")  # type: ignore[arg-type]


def test_a_schema_name_of_the_wrong_type_is_a_type_error_on_both_engines(
    store: ctxlink.Store, client: redis.Redis, protos: Protos
) -> None:
    """The module engine's fast path sent it (``b"order"`` was accepted, ``123`` became
    ``unknown schema '123'``) where the Lua engine raised TypeError: now both raise, before
    sending."""
    calls = data_calls(client)
    raw = protos.Order(version=1).SerializeToString()
    for bad in (b"order", 123):
        for payload in (raw, protos.Order(version=1)):
            with pytest.raises(TypeError, match=r"schema must be a str \(a schema name\), not"):
                store.cas("k", 0, payload, schema=bad)  # type: ignore[arg-type]
    assert data_calls(client) == calls and client.get("k") is None


def test_register_schema_refuses_bytes_that_are_not_a_descriptor_set(
    store: ctxlink.Store, client: redis.Redis
) -> None:
    before = sorted(client.keys("*"))
    for junk in (b"garbage", b"\xff\xff\xff", b""):
        with pytest.raises(SchemaError, match=r"^CTXSCHEMA .*descriptor"):
            store.register_schema("junk", junk)
    with pytest.raises(TypeError, match=r"binary mode"):
        store.register_schema("junk", "order.pb")
    with pytest.raises(TypeError, match=r"message class"):
        store.register_schema("junk", 3.5)
    assert sorted(client.keys("*")) == before


def test_server_errors_are_also_redis_response_errors(store: ctxlink.Store) -> None:
    try:
        store.cas("e", 0, b"\xff\xff", schema="order")
    except ResponseError as exc:  # what redis-py users catch
        assert isinstance(exc, ValidationError) and str(exc).startswith("CTXINVALID")
    else:  # pragma: no cover
        pytest.fail("no error")


# ---------------------------------------------------------------------------------------------
# message classes that are not the schema's type


def test_update_with_another_message_class_names_the_expected_type(
    store: ctxlink.Store, client: redis.Redis, protos: Protos
) -> None:
    LineItem = protos.cls("order", "ctxlink.example.LineItem")
    store.cas("o", 0, protos.Order(order_id="o", base_price=5), schema="order")
    before, writes = client.get("o"), dirty(client)
    with pytest.raises(MessageTypeError, match=r"stores ctxlink\.example\.Order messages, not "
                                               r"ctxlink\.example\.LineItem") as info:
        store.update("o", lambda m: None, message_class=LineItem)
    assert info.value.expected == "ctxlink.example.Order" and isinstance(info.value, TypeError)
    with pytest.raises(MessageTypeError, match=r"ctxlink\.example\.Order"):
        store.cas("o", 1, LineItem(sku="x"))
    with pytest.raises(MessageTypeError):
        store.cas("new", 0, LineItem(sku="x"), schema="order")
    with pytest.raises(MessageTypeError):
        store.update("new", lambda m: None, message_class=LineItem, schema="order",
                     default=LineItem)
    with pytest.raises(TypeError, match=r"message class"):
        store.update("o", lambda m: None, message_class=protos.Order())  # an instance
    assert dirty(client) == writes and client.get("o") == before
    assert not client.exists("new")


def test_a_fresh_store_reads_the_schema_type_from_the_registry(
    server: Any, sdk_engine: str, store: ctxlink.Store, protos: Protos
) -> None:
    store.cas("o", 0, protos.Order(order_id="o"), schema="order")
    other = ctxlink.connect(server.client(), engine=sdk_engine)  # never registered anything
    with pytest.raises(MessageTypeError):
        other.update("o", lambda m: None, message_class=protos.cls("order",
                                                                   "ctxlink.example.LineItem"))
    assert other.update("o", lambda m: setattr(m, "discount", 1),
                        message_class=protos.Order).version == 2


def test_snapshot_decode_refuses_a_class_that_is_not_the_schemas(
    store: ctxlink.Store, protos: Protos
) -> None:
    store.cas("o", 0, protos.Order(order_id="o", base_price=7), schema="order")
    snap = store.get("o")
    assert snap is not None and snap.decode(protos.Order).base_price == 7
    # no field in common: refused whatever the SDK knows
    FloatVersion = protos.cls("versions", "ctxlink.test.v.FloatVersion")
    with pytest.raises(MessageTypeError, match=r"no field ctxlink\.test\.v\.FloatVersion knows"):
        snap.decode(FloatVersion)
    # some fields in common: refused because this process knows the schema's type
    with pytest.raises(MessageTypeError, match=r"stores ctxlink\.example\.Order"):
        snap.decode(protos.cls("order", "ctxlink.example.LineItem"))
    store.cas("p", 0, protos.Order(order_id="p"), schema="order")
    only_known = store.get("p")  # fields 1 and 2: LineItem knows both (sku, quantity)
    assert only_known is not None
    with pytest.raises(MessageTypeError, match=r"stores ctxlink\.example\.Order"):
        only_known.decode(protos.cls("order", "ctxlink.example.LineItem"))
    # an older class of the same type (fewer fields) still decodes
    compat = protos.cls("order_v2_compat", "ctxlink.example.Order")
    assert compat().DESCRIPTOR.full_name == "ctxlink.example.Order"
    assert snap.decode(compat).order_id == "o"


def test_agent_without_registry_access_skips_the_type_check(
    module_server: Any, protos: Protos
) -> None:
    admin = module_server.client()
    admin.flushall()
    ctxlink.connect(admin).register_schema("order", protos.Order)
    admin.execute_command("ACL", "SETUSER", "agent", "on", "nopass", "+@all", "~order:*")
    agent = ctxlink.connect(redis.Redis(host="127.0.0.1", port=module_server.port, username="agent", password="x"))
    assert agent.cas("order:1", 0, protos.Order(order_id="a"), schema="order").ok
    up = agent.update("order:1", lambda m: setattr(m, "discount", 2), message_class=protos.Order)
    assert up.version == 2
    admin.execute_command("ACL", "DELUSER", "agent")
    agent.client.close()


# ---------------------------------------------------------------------------------------------
# async functions


def test_sync_update_refuses_an_async_function_naming_ctxlink_aio(
    store: ctxlink.Store, client: redis.Redis, protos: Protos
) -> None:
    store.cas("o", 0, protos.Order(order_id="o"), schema="order")
    before = client.get("o")

    async def bump(m: Any) -> None:
        m.discount += 1

    with pytest.raises(TypeError, match=r"ctxlink\.aio"):
        store.update("o", bump, message_class=protos.Order)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited"
        with pytest.raises(TypeError, match=r"ctxlink\.aio"):
            store.update("o", lambda m: bump(m), message_class=protos.Order)
    assert client.get("o") == before


def test_aio_update_awaits_an_async_function(server: Any, sdk_engine: str, protos: Protos) -> None:
    async def main() -> None:
        r = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
        store = await ctxlink.aio.connect(r, engine=sdk_engine)
        await store.register_schema("order", protos.Order)

        async def bump(m: Any) -> None:
            await asyncio.sleep(0)
            m.discount += 3

        async def fresh() -> Any:
            return protos.Order(order_id="n")

        up = await store.update("n", bump, message_class=protos.Order, schema="order",
                                default=fresh)
        assert (up.version, up.message.discount) == (1, 3)
        up = await store.update("n", bump, message_class=protos.Order)
        assert (up.version, up.message.discount) == (2, 6)
        await r.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# migrating after a forced incompatible schema change


def test_migrate_rewrites_contexts_after_a_forced_incompatible_change(
    store: ctxlink.Store, client: redis.Redis, protos: Protos
) -> None:
    Old, New = protos.Order, protos.cls("order_v2_incompat", "ctxlink.example.Order")
    store.cas("m:1", 0, Old(order_id="m1", base_price=12_500, discount=5), schema="order")
    store.cas("m:2", 0, Old(order_id="m2", base_price=900), schema="order", by="router")
    assert store.register_schema("order", protos.fds["order_v2_incompat"],
                                 message_type="ctxlink.example.Order", force=True) == 2
    with pytest.raises(ValidationError, match=r"^CTXINVALID"):  # old payloads no longer fit
        store.update("m:1", lambda m: setattr(m, "discount", 6), message_class=New)

    def convert(msg: Any) -> None:
        msg.base_price = "EUR 125.00"

    up = store.migrate("m:1", New, convert, by="migration")
    assert (up.version, up.message.order_id, up.message.base_price, up.message.discount) == (
        2, "m1", "EUR 125.00", 5)
    snap = store.get("m:1")
    assert snap is not None and snap.updated_by == "migration" and snap.decode(New) == up.message
    up2 = store.migrate("m:2", New)  # no fn: the field that no longer fits is dropped
    assert up2.version == 2 and up2.message.base_price == "" and up2.message.order_id == "m2"
    # the contexts take ordinary writes again
    assert store.update("m:2", lambda m: setattr(m, "discount", 1), message_class=New).version == 3
    with pytest.raises(MessageTypeError):
        store.migrate("m:1", protos.cls("order", "ctxlink.example.LineItem"))
    with pytest.raises(ctxlink.NotFoundError, match=r"to migrate"):
        store.migrate("absent", New)


def test_aio_migrate(server: Any, sdk_engine: str, protos: Protos) -> None:
    New = protos.cls("order_v2_incompat", "ctxlink.example.Order")

    async def main() -> None:
        r = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
        store = await ctxlink.aio.connect(r, engine=sdk_engine)
        await store.register_schema("order", protos.Order)
        await store.cas("m", 0, protos.Order(order_id="m", base_price=3), schema="order")
        await store.register_schema("order", protos.fds["order_v2_incompat"],
                                    message_type="ctxlink.example.Order", force=True)

        async def convert(msg: Any) -> None:
            msg.base_price = "3"

        up = await store.migrate("m", New, convert)
        assert (up.version, up.message.base_price) == (2, "3")
        await r.aclose()

    asyncio.run(main())
