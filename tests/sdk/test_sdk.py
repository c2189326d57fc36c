"""The Python SDK against both engines: the module (CTX.*) and the Lua scripts on a stock server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import ctxlink
import ctxlink.aio
import ctxlink.embedded
import pytest
import redis
import redis.asyncio
from ctxlink import (
    CasResult,
    ConflictError,
    CtxError,
    NotFoundError,
    PayloadTooLarge,
    SchemaError,
    Snapshot,
    ValidationError,
    VersionError,
    WrongTypeError,
)
from ctxlink._exceptions import EXCEPTION_CLASSES, error_from_reply
from sdk_support import LUA_MISSING, Protos  # type: ignore[import-not-found]


def make_store(client: redis.Redis, engine: str) -> ctxlink.Store:
    store = ctxlink.connect(client, engine=engine)
    assert store.engine == engine
    return store


def stats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k[len("cmdstat_") :]: v["calls"] for k, v in info.items()}


@pytest.fixture
def store(client: redis.Redis, sdk_engine: str, protos: Protos) -> ctxlink.Store:
    s = make_store(client, sdk_engine)
    assert s.register_schema("order", protos.Order) == 1
    return s


# ---------------------------------------------------------------------------------------------
# connect


def test_auto_picks_module(module_server: Any) -> None:
    r = module_server.client()
    assert ctxlink.connect(r).engine == "module"


def test_auto_picks_lua_on_stock_server(stock_server: Any) -> None:
    r = stock_server.client()
    if ctxlink._lua.find_lua_dir() is None:
        with pytest.raises(ctxlink.EngineError):
            ctxlink.connect(r)
        pytest.skip(LUA_MISSING)
    assert ctxlink.connect(r).engine == "lua"
    with pytest.raises(ctxlink.EngineError):
        ctxlink.connect(r, engine="module")


def test_refuses_decoding_client(module_server: Any) -> None:
    with pytest.raises(ValueError):
        ctxlink.connect(module_server.client(decode_responses=True))


# ---------------------------------------------------------------------------------------------
# get / cas / delete


def test_get_cas_delete_shapes(store: ctxlink.Store, protos: Protos) -> None:
    Order = protos.Order
    assert store.get("order:1") is None

    res = store.cas(
        "order:1", 0, Order(order_id="o-1", base_price=100), schema="order", by="router"
    )
    assert res == CasResult(True, 1, None) and res

    snap = store.get("order:1")
    assert isinstance(snap, Snapshot)
    assert (snap.version, snap.schema, snap.updated_by) == (1, "order", "router")
    assert snap.updated_ms > 1_600_000_000_000
    msg = snap.decode(Order)
    assert msg.order_id == "o-1" and msg.version == 1 and msg.base_price == 100

    # bytes payload: the caller sets the version itself; no SCHEMA needed on update
    raw = Order(order_id="o-1", version=2, base_price=101).SerializeToString()
    assert store.cas("order:1", 1, raw).version == 2
    assert store.get("order:1").raw == raw  # type: ignore[union-attr]
    assert store.get("order:1").updated_by == ""  # type: ignore[union-attr]

    # delete: conflict, then success, then conflict on the absent key
    res = store.delete("order:1", 1)
    assert not res.ok and res.version == 2 and res.current is not None and res.current.raw == raw
    assert store.delete("order:1", 2) == CasResult(True, 0, None)
    assert store.get("order:1") is None
    assert store.delete("order:1", 2) == CasResult(False, 0, None)


def test_cas_message_version_is_set_on_a_copy(store: ctxlink.Store, protos: Protos) -> None:
    msg = protos.Order(order_id="o-2", version=42)
    assert store.cas("order:2", 0, msg, schema="order").ok
    assert msg.version == 42  # the caller's message is untouched
    assert store.cas("order:2", 1, msg).version == 2
    assert store.get("order:2").decode(protos.Order).version == 2  # type: ignore[union-attr]


def test_conflict_carries_state(store: ctxlink.Store, protos: Protos) -> None:
    Order = protos.Order
    store.cas("order:3", 0, Order(order_id="o-3", base_price=7), schema="order", by="a")
    store.cas("order:3", 1, Order(order_id="o-3", base_price=8), by="b")
    res = store.cas("order:3", 1, Order(order_id="o-3", base_price=9), by="c")
    assert not res.ok and res.version == 2
    assert res.current is not None
    assert res.current.version == 2 and res.current.updated_by == "b"
    assert res.current.decode(Order).base_price == 8
    # create over an existing key is a conflict too
    res = store.cas("order:3", 0, Order(order_id="x"), schema="order")
    assert not res.ok and res.current is not None and res.current.version == 2
    # update of an absent key: conflict with no state
    assert store.cas("order:none", 4, Order()) == CasResult(False, 0, None)


# ---------------------------------------------------------------------------------------------
# errors


def test_exception_table() -> None:
    assert set(EXCEPTION_CLASSES) == {
        "CTXINVALID",
        "CTXSCHEMA",
        "CTXVERSION",
        "CTXTOOBIG",
        "CTXFIELD",
        "WRONGTYPE",
        "CTXGONE",
    }
    for code, cls in EXCEPTION_CLASSES.items():
        exc = error_from_reply(f"{code} some text")
        assert type(exc) is cls and str(exc) == f"{code} some text"
        assert isinstance(exc, CtxError)
    assert error_from_reply("ERR syntax error") is None
    assert issubclass(ConflictError, CtxError) and issubclass(NotFoundError, LookupError)
    # CTXGONE: a conflict (the context was replaced), and an error reply like the others
    gone = error_from_reply("CTXGONE the context was deleted and re-created (incarnation none, "
                            "this write was based on 0123456789abcdef)")
    assert isinstance(gone, ctxlink.ContextReplacedError) and isinstance(gone, ConflictError)
    assert isinstance(gone, redis.ResponseError) and gone.current is None and gone.key is None


def test_errors_per_code(store: ctxlink.Store, client: redis.Redis, protos: Protos) -> None:
    Order = protos.Order
    with pytest.raises(SchemaError, match=r"^CTXSCHEMA"):
        store.cas("e:1", 0, Order(order_id="x"))  # create without schema
    with pytest.raises(SchemaError, match=r"^CTXSCHEMA"):
        store.cas("e:1", 0, Order(order_id="x"), schema="nosuch")
    with pytest.raises(ValidationError, match=r"^CTXINVALID"):
        store.cas("e:1", 0, b"\xff\xff\xff", schema="order")
    with pytest.raises(VersionError, match=r"^CTXVERSION"):
        store.cas("e:1", 0, Order(version=5).SerializeToString(), schema="order")
    client.set("e:str", "plain")
    with pytest.raises(WrongTypeError, match=r"^WRONGTYPE"):
        store.get("e:str")
    with pytest.raises(WrongTypeError):
        store.cas("e:str", 0, Order(), schema="order")
    with pytest.raises(WrongTypeError):
        store.delete("e:str", 1)
    with pytest.raises(TypeError):
        store.cas("e:1", 0, "not bytes", schema="order")  # type: ignore[arg-type]
    assert store.get("e:1") is None


def test_payload_too_large(sdk_engine: str, protos: Protos) -> None:
    if sdk_engine == "module":
        server = ctxlink.embedded.EmbeddedRedis(
            module=ctxlink.embedded.find_module(), module_args=["max-payload-bytes", "64"]
        )
        kwargs: dict[str, Any] = {}
    else:
        server = ctxlink.embedded.EmbeddedRedis()
        kwargs = {"max_payload_bytes": 64}
    with server:
        store = ctxlink.connect(server.client(), engine=sdk_engine, **kwargs)  # type: ignore[arg-type]
        store.register_schema("order", protos.Order)
        with pytest.raises(PayloadTooLarge, match=r"^CTXTOOBIG"):
            store.cas("big", 0, protos.Order(order_id="x" * 200), schema="order")
        assert store.cas("small", 0, protos.Order(order_id="x"), schema="order").ok


# ---------------------------------------------------------------------------------------------
# update


def test_update_creates_and_modifies(store: ctxlink.Store, protos: Protos) -> None:
    Order = protos.Order

    def bump(o: Any) -> None:
        o.base_price += 10

    with pytest.raises(NotFoundError):
        store.update("u:1", bump, message_class=Order)
    with pytest.raises(ValueError):
        store.update("u:1", bump, message_class=Order, default=lambda: Order(order_id="u"))

    up = store.update(
        "u:1",
        bump,
        message_class=Order,
        schema="order",
        by="w",
        default=lambda: Order(order_id="u"),
    )
    version, msg = up
    assert version == 1 and msg.version == 1 and msg.base_price == 10 and up.attempts == 1
    version, msg = store.update("u:1", bump, message_class=Order, by="w")
    assert version == 2 and msg.base_price == 20
    snap = store.get("u:1")
    assert snap is not None and snap.version == 2 and snap.updated_by == "w"
    assert snap.decode(Order) == msg

    # fn may return a new message instead of mutating
    version, msg = store.update("u:1", lambda o: Order(order_id="new"), message_class=Order)
    assert version == 3 and msg.order_id == "new" and msg.base_price == 0


def test_update_retries_from_conflict_state_without_extra_get(
    store: ctxlink.Store, client: redis.Redis, protos: Protos, sdk_engine: str, server: Any
) -> None:
    Order = protos.Order
    store.cas("u:2", 0, Order(order_id="u2"), schema="order")
    other = make_store(server.client(), sdk_engine)
    other.get("u:2")  # warm the other store's caches
    other.cas("u:2-warm", 0, Order(order_id="w"), schema="order")  # its plan script too
    store.update("u:2", lambda o: None, message_class=Order)  # warm caches (vfield, plan)
    calls: list[int] = []

    def fn(o: Any) -> None:
        calls.append(o.version)
        if len(calls) == 1:  # a concurrent writer slips in between our read and our CAS
            # (bytes, so the interloper's own lookups do not show in the command counts)
            theirs = Order(order_id="u2", base_price=1000, version=o.version + 1)
            assert other.cas("u:2", o.version, theirs.SerializeToString()).ok
        o.base_price += 1

    before = stats(client)
    version, msg = store.update("u:2", fn, message_class=Order)
    after = stats(client)
    assert calls == [2, 3] and version == 4 and msg.base_price == 1001
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v and k not in ("info", "config|resetstat")}
    if sdk_engine == "module":
        # one GET by update, our two CAS attempts, and the interloper's CAS
        assert delta == {"ctx.get": 1, "ctx.cas": 3}, delta
    else:
        # get.lua once (EVALSHA_RO: read-only), cas.lua twice for us and once for the
        # interloper; commandstats also counts the commands the scripts run, so only the
        # EVALSHA calls are meaningful here
        assert delta.get("evalsha_ro", 0) + delta["evalsha"] == 4, delta
        assert "eval" not in delta and "script|load" not in delta, delta


def test_update_gives_up_with_last_state(
    store: ctxlink.Store, protos: Protos, server: Any, sdk_engine: str
) -> None:
    Order = protos.Order
    store.cas("u:3", 0, Order(order_id="u3"), schema="order")
    other = make_store(server.client(), sdk_engine)

    def always_lose(o: Any) -> None:
        assert other.cas("u:3", o.version, Order(order_id="u3", discount=o.version)).ok

    with pytest.raises(ConflictError) as info:
        store.update("u:3", always_lose, message_class=Order, retries=2)
    current = info.value.current
    assert current is not None and current.version == 4  # 1 + three interloper writes
    assert current.decode(Order).discount == 3


# ---------------------------------------------------------------------------------------------
# schemas


def test_schema_admin(client: redis.Redis, sdk_engine: str, protos: Protos) -> None:
    store = make_store(client, sdk_engine)
    assert store.schemas() == []
    assert store.register_schema("order", protos.Order) == 1
    assert store.register_schema("order", protos.Order) == 1  # same definition: no new revision
    info = store.get_schema("order")
    assert info is not None and info.message_type == "ctxlink.example.Order" and info.revision == 1
    from google.protobuf import descriptor_pb2

    files = [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(info.descriptor_set).file]
    assert files == ["order.proto"]

    # a descriptor-set from protoc works too; compatible change -> revision 2
    compat = protos.fds["order_v2_compat"]
    assert store.register_schema("order", compat, message_type="ctxlink.example.Order") == 2
    incompat = protos.fds["order_v2_incompat"]
    with pytest.raises(SchemaError, match=r"^CTXSCHEMA"):
        store.register_schema("order", incompat, message_type="ctxlink.example.Order")
    assert (
        store.register_schema("order", incompat, message_type="ctxlink.example.Order", force=True)
        == 3
    )
    with pytest.raises(SchemaError):
        store.register_schema("order", protos.Order, version_field="order_id")
    with pytest.raises(SchemaError):
        store.register_schema("bad name!", protos.Order)

    assert store.register_schema("second", protos.Order) == 1
    assert store.schemas() == ["order", "second"]
    assert store.drop_schema("second") is True
    assert store.drop_schema("second") is False
    assert store.get_schema("second") is None
    assert store.schemas() == ["order"]


def test_version_field_from_registry(
    client: redis.Redis, sdk_engine: str, protos: Protos, server: Any
) -> None:
    Doc = protos.cls("versions", "ctxlink.test.v.Doc")
    admin = make_store(client, sdk_engine)
    assert admin.register_schema("doc", Doc, version_field="rev") == 1
    assert admin.cas("d:1", 0, Doc(id="d"), schema="doc").ok
    # a fresh store learns the version field from the registry (once) for updates
    agent = make_store(server.client(), sdk_engine)
    version, msg = agent.update("d:1", lambda d: setattr(d, "body", "hi"), message_class=Doc)
    assert version == 2 and msg.rev == 2
    assert agent.cas("d:1", 2, Doc(id="d"), schema="doc").version == 3


def test_transitive_imports_dependencies_first() -> None:
    from google.protobuf import (  # noqa: F401
        any_pb2,
        descriptor_pb2,
        descriptor_pool,
        message_factory,
        timestamp_pb2,
    )

    fdp = descriptor_pb2.FileDescriptorProto(
        name="t/uses.proto",
        package="t",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/any.proto"],
    )
    m = fdp.message_type.add(name="M")
    m.field.add(name="version", number=1, type=3, label=1)
    m.field.add(name="at", number=2, type=11, label=1, type_name=".google.protobuf.Timestamp")
    m.field.add(name="any", number=3, type=11, label=1, type_name=".google.protobuf.Any")
    pool = descriptor_pool.DescriptorPool()
    for mod in (timestamp_pb2, any_pb2):
        p = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(p)
        pool.Add(p)
    pool.Add(fdp)
    M = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.M"))
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        ctxlink._registry.build_descriptor_set(M.DESCRIPTOR)
    )
    names = [f.name for f in fds.file]
    assert names[-1] == "t/uses.proto" and set(names) == {
        "google/protobuf/timestamp.proto",
        "google/protobuf/any.proto",
        "t/uses.proto",
    }


# ---------------------------------------------------------------------------------------------
# asyncio twin


def test_aio_basic_flow(server: Any, sdk_engine: str, protos: Protos) -> None:
    Order = protos.Order

    async def main() -> None:
        r = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
        try:
            store = await ctxlink.aio.connect(r)
            assert store.engine == sdk_engine
            assert await store.register_schema("order", Order) == 1
            assert await store.schemas() == ["order"]
            assert await store.get("a:1") is None
            assert (await store.cas("a:1", 0, Order(order_id="a"), schema="order")).version == 1
            res = await store.cas("a:1", 0, Order(order_id="a"), schema="order")
            assert not res.ok and res.current is not None and res.current.version == 1
            version, msg = await store.update(
                "a:1", lambda o: setattr(o, "discount", 3), message_class=Order
            )
            assert version == 2 and msg.discount == 3
            with pytest.raises(ctxlink.aio.ValidationError):
                await store.cas("a:1", 2, b"\xff", schema="order")
            assert (await store.delete("a:1", 2)).ok
            assert (await store.get_schema("order")).revision == 1  # type: ignore[union-attr]
            assert await store.drop_schema("order") is True
        finally:
            await r.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# contention

WORKERS = 8
ROUNDS = 200


def _check_history(store: ctxlink.Store, key: str, Order: Any, ok: int, seen: list[int]) -> None:
    snap = store.get(key)
    assert snap is not None
    final = snap.decode(Order)
    assert final.base_price == ok  # every successful update counted exactly once
    assert snap.version == ok + 1  # the create, then one version per success
    assert sorted(seen) == list(range(2, ok + 2))  # versions contiguous, none written twice


def test_contention_threads(
    store: ctxlink.Store, protos: Protos, server: Any, sdk_engine: str
) -> None:
    Order = protos.Order
    key = "c:threads"
    store.cas(key, 0, Order(order_id="c"), schema="order")
    lock = threading.Lock()
    ok: list[int] = []
    failed: list[int] = []
    attempts: list[int] = []

    def worker() -> None:
        client = server.client()
        s = make_store(client, sdk_engine)
        for _ in range(ROUNDS):
            try:
                _up = s.update(
                    key,
                    lambda o: setattr(o, "base_price", o.base_price + 1),
                    message_class=Order,
                    retries=50,
                )
                version = _up.version
            except ConflictError:
                with lock:
                    failed.append(1)
            else:
                with lock:
                    ok.append(version)
                    attempts.append(_up.attempts)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) + len(failed) == WORKERS * ROUNDS
    _check_history(store, key, Order, len(ok), ok)
    print(f"threads: {len(ok)} ok, {len(failed)} gave up, {sum(attempts)} CAS attempts")
    assert sum(attempts) > len(ok)  # the threads did collide


def test_contention_asyncio(
    server: Any, sdk_engine: str, protos: Protos, store: ctxlink.Store
) -> None:
    Order = protos.Order
    key = "c:tasks"
    store.cas(key, 0, Order(order_id="c"), schema="order")
    ok: list[int] = []
    failed: list[int] = []
    attempts: list[int] = []

    async def main() -> None:
        r = redis.asyncio.Redis(host="127.0.0.1", port=server.port, max_connections=WORKERS)
        try:
            s = await ctxlink.aio.connect(r, engine=sdk_engine)

            async def task() -> None:
                for _ in range(ROUNDS):
                    try:
                        up = await s.update(
                            key,
                            lambda o: setattr(o, "base_price", o.base_price + 1),
                            message_class=Order,
                            retries=50,
                        )
                    except ctxlink.aio.ConflictError:
                        failed.append(1)
                    else:
                        ok.append(up.version)
                        attempts.append(up.attempts)

            await asyncio.gather(*(task() for _ in range(WORKERS)))
        finally:
            await r.aclose()

    asyncio.run(main())
    assert len(ok) + len(failed) == WORKERS * ROUNDS
    _check_history(store, key, Order, len(ok), ok)
    print(f"tasks: {len(ok)} ok, {len(failed)} gave up, {sum(attempts)} CAS attempts")
    assert sum(attempts) > len(ok)  # the tasks did collide


# ---------------------------------------------------------------------------------------------
# Lua engine specifics


def test_lua_engine_validates_on_a_module_written_entry_and_stores_no_plan(
    module_server: Any, stock_server: Any, protos: Protos
) -> None:
    if ctxlink._lua.find_lua_dir() is None:
        pytest.skip(LUA_MISSING)
    mod, stock = module_server.client(), stock_server.client()
    mod.flushall()
    stock.flushall()
    assert ctxlink.connect(mod).register_schema("order", protos.Order) == 1
    for k in ("__ctx:schema:order", "__ctx:schemas"):
        stock.restore(k, 0, mod.dump(k))
    assert stock.hget("__ctx:schema:order", "plan") is None  # the module writes no plan
    store = ctxlink.connect(stock)
    assert store.engine == "lua"
    assert store.cas("o:1", 0, protos.Order(order_id="x"), schema="order").version == 1
    assert stock.hget("__ctx:schema:order", "plan") is None  # the SDK generates it locally
    with pytest.raises(ValidationError):
        store.cas("o:1", 1, b"\x0a\x02\xff\xfe\x10\x02")  # invalid UTF-8 in order_id


def test_lua_noscript_reload(stock_server: Any, protos: Protos) -> None:
    if ctxlink._lua.find_lua_dir() is None:
        pytest.skip(LUA_MISSING)
    r = stock_server.client()
    r.flushall()
    store = ctxlink.connect(r)
    store.register_schema("order", protos.Order)
    r.script_flush()
    assert store.get("o:1") is None
    r.script_flush()
    assert store.cas("o:1", 0, protos.Order(), schema="order").ok


def test_lua_stale_key_schema_cache(stock_server: Any, protos: Protos) -> None:
    if ctxlink._lua.find_lua_dir() is None:
        pytest.skip(LUA_MISSING)
    r = stock_server.client()
    r.flushall()
    a, b = ctxlink.connect(r), ctxlink.connect(stock_server.client())
    a.register_schema("order", protos.Order)
    a.register_schema("order2", protos.Order)
    assert a.cas("k", 0, protos.Order(), schema="order").ok  # a caches k -> order
    assert b.delete("k", 1).ok
    assert b.cas("k", 0, protos.Order(), schema="order2").ok
    res = a.cas("k", 1, protos.Order(order_id="again"))
    assert res.ok and res.version == 2
    assert a.get("k").schema == "order2"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Redis Cluster (one node owning every slot)


@pytest.fixture(scope="module")
def cluster_servers() -> Any:
    """Two one-node clusters holding every slot: with the module, and stock."""
    from contextlib import ExitStack

    from ctxlink.embedded import EmbeddedCluster

    with ExitStack() as stack:
        yield [stack.enter_context(EmbeddedCluster(1, module=mod)).nodes[0]
               for mod in (ctxlink.embedded.find_module(), None)]


def test_cluster_module_engine(cluster_servers: Any, protos: Protos) -> None:
    from redis.cluster import RedisCluster

    Order = protos.Order
    rc = RedisCluster(host="127.0.0.1", port=cluster_servers[0].port)
    try:
        store = ctxlink.connect(rc)
        assert store.engine == "module"
        assert store.register_schema("order", Order) == 1
        assert store.schemas() == ["order"] and store.get_schema("order").revision == 1  # type: ignore[union-attr]
        assert store.cas("o:1", 0, Order(order_id="x"), schema="order").version == 1
        assert (
            store.update("o:1", lambda o: setattr(o, "discount", 1), message_class=Order).version
            == 2
        )
        assert store.get("o:1").decode(Order).discount == 1  # type: ignore[union-attr]
        up = store.update("o:1", lambda o: setattr(o, "base_price", 9), message_class=Order,
                          reads=["discount"])  # CTX.PATCH, sent to the key's node
        assert (up.version, up.message.discount, up.message.base_price) == (3, 1, 9)
        assert store.delete("o:1", 3).ok and store.drop_schema("order")
    finally:
        rc.close()

    async def main() -> None:
        from redis.asyncio.cluster import RedisCluster as AsyncCluster

        arc = AsyncCluster(host="127.0.0.1", port=cluster_servers[0].port)
        try:
            s = await ctxlink.aio.connect(arc)
            assert s.engine == "module"
            assert await s.register_schema("order", Order) == 1
            assert (await s.cas("o:2", 0, Order(order_id="y"), schema="order")).ok
            assert (await s.get("o:2")).version == 1  # type: ignore[union-attr]
            up = await s.update("o:2", lambda o: setattr(o, "discount", 2), message_class=Order,
                                reads=[])
            assert up.version == 2 and up.message.order_id == "y"
            assert await s.schemas() == ["order"]
        finally:
            await arc.aclose()

    asyncio.run(main())


def test_cluster_lua_engine_on_one_node(cluster_servers: Any, protos: Protos) -> None:
    """A stock cluster node (no module): the Lua engine keeps a registry copy per slot."""
    from redis.cluster import RedisCluster

    Order = protos.Order
    rc = RedisCluster(host="127.0.0.1", port=cluster_servers[1].port)
    try:
        store = ctxlink.connect(rc)
        assert store.engine == "lua"
        assert store.register_schema("order", Order) == 1
        assert store.register_schema("order", Order) == 1
        assert store.schemas() == ["order"] and store.get_schema("order").revision == 1  # type: ignore[union-attr]
        for i in range(20):
            assert store.cas(f"o:{i}", 0, Order(order_id=str(i)), schema="order").ok
        with pytest.raises(ctxlink.ValidationError):
            store.cas("o:3", 1, Order(version=2).SerializeToString() + b"\x52\x03\x0a\x01\xff")
        assert store.update("o:3", lambda o: setattr(o, "discount", 3), message_class=Order).version == 2
        up = store.update("o:3", lambda o: setattr(o, "base_price", 4), message_class=Order,
                          reads=["discount"])
        assert (up.version, up.message.discount, up.message.base_price) == (3, 3, 4)
        assert store.drop_schema("order") and store.schemas() == []
    finally:
        rc.close()


def test_stale_version_field_cache_is_refreshed(
    client: redis.Redis, sdk_engine: str, protos: Protos, server: Any
) -> None:
    Order = protos.Order
    a = make_store(client, sdk_engine)
    assert a.register_schema("order", Order) == 1
    assert a.cas("o:1", 0, Order(order_id="x"), schema="order").ok
    b = make_store(server.client(), sdk_engine)
    # re-registered elsewhere with another version field; a still has "version" cached
    assert b.register_schema("order", Order, version_field="base_price", force=True) == 2
    version, msg = a.update("o:1", lambda o: None, message_class=Order)
    assert version == 2 and msg.base_price == 2
    assert a.cas("o:1", 2, Order(order_id="y"), schema="order").version == 3


def test_one_round_trip_per_get_and_cas(
    store: ctxlink.Store, client: redis.Redis, protos: Protos, sdk_engine: str
) -> None:
    Order = protos.Order
    assert store.cas("rt:1", 0, Order(order_id="x"), schema="order").ok  # warms the caches
    for call in (
        lambda: store.get("rt:1"),
        lambda: store.cas("rt:1", 1, Order(order_id="y")),
        lambda: store.cas("rt:1", 2, Order(order_id="z"), schema="order", by="me"),
        lambda: store.cas("rt:1", 1, Order(order_id="conflict")),
    ):
        before = stats(client)
        call()
        after = stats(client)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v and k != "info"}
        if sdk_engine == "module":
            assert sum(delta.values()) == 1 and set(delta) <= {"ctx.get", "ctx.cas"}, delta
        else:
            assert delta.get("evalsha", 0) + delta.get("evalsha_ro", 0) == 1, delta
            # what the scripts ran inside is counted too, but no direct HGET / SCRIPT LOAD
            assert "script|load" not in delta, delta


# ---------------------------------------------------------------------------------------------
# found in review


def test_message_cas_without_schema_uses_the_contexts_version_field(
    server: Any, protos: Protos, sdk_engine: str
) -> None:
    """A schema registered elsewhere with VERSIONFIELD rev: a Store that never saw it still sets
    ``rev`` (not a field called ``version``) when given a message and no ``schema=``."""
    Doc = protos.cls("versions", "ctxlink.test.v.Doc")
    admin = make_store(server.client(), sdk_engine)
    admin.register_schema("doc", protos.fds["versions"], message_type="ctxlink.test.v.Doc",
                          version_field="rev")
    assert admin.cas("d:1", 0, Doc(id="d"), schema="doc").ok
    fresh = make_store(server.client(), sdk_engine)
    result = fresh.cas("d:1", 1, Doc(id="d", body="edited"))
    assert result.ok and result.version == 2
    snap = fresh.get("d:1")
    assert snap is not None and snap.decode(Doc).rev == 2 and snap.decode(Doc).body == "edited"


def test_local_check_does_not_judge_by_a_stale_key_schema(
    server: Any, protos: Protos, sdk_engine: str
) -> None:
    """The context was deleted and created again under another schema: a write without
    ``schema=`` is not refused locally by the old schema (the server decides)."""
    Order, Doc = protos.Order, protos.cls("versions", "ctxlink.test.v.Doc")
    admin = make_store(server.client(), sdk_engine)
    admin.register_schema("order", Order)
    admin.register_schema("doc", protos.fds["versions"], message_type="ctxlink.test.v.Doc",
                          version_field="rev")
    checked = ctxlink.connect(server.client(), engine=sdk_engine, local_check=True)
    assert checked.cas("k:stale", 0, Order(order_id="o"), schema="order").ok  # caches k -> order
    assert admin.delete("k:stale", 1).ok
    assert admin.cas("k:stale", 0, Doc(id="d"), schema="doc").ok
    result = checked.cas("k:stale", 1, Doc(id="d", rev=2).SerializeToString())
    assert result.ok and result.version == 2


def test_local_check_covers_writes_without_schema_once_the_context_schema_is_known(
    server: Any, protos: Protos, sdk_engine: str
) -> None:
    """After a write that named ``schema=``, a write without it is checked locally against that
    schema: an invalid payload is refused with the server's text and never sent."""
    Order = protos.Order
    make_store(server.client(), sdk_engine).register_schema("order", Order)
    checked = ctxlink.connect(server.client(), engine=sdk_engine, local_check=True)
    assert checked.cas("k:known", 0, Order(order_id="o"), schema="order").ok
    bad = b"\n\x02o\xff\x10\x02"  # order_id (field 1) is not UTF-8; version 2
    cas_calls = server.client().info("commandstats").get("cmdstat_ctx.cas", {}).get("calls", 0)
    with pytest.raises(ctxlink.ValidationError) as local:
        checked.cas("k:known", 1, bad)
    assert str(local.value) == "CTXINVALID field 'order_id' (1): invalid UTF-8"
    if sdk_engine == "module":  # no CTX.CAS reached the server
        stats = server.client().info("commandstats").get("cmdstat_ctx.cas", {})
        assert stats.get("calls", 0) == cas_calls
    snap = checked.get("k:known")
    assert snap is not None and snap.version == 1
    # the same payload through a Store without the local check: the server's verdict, same text
    with pytest.raises(ctxlink.ValidationError) as remote:
        make_store(server.client(), sdk_engine).cas("k:known", 1, bad)
    assert str(remote.value) == str(local.value)


def test_update_backoff_does_not_overflow_with_many_retries() -> None:
    from ctxlink import _client

    st = _client.make_state("module", False, {})
    assert st.backoff.ceiling(5000) == st.backoff.cap == 0.05
    assert st.backoff.ceiling(1) == st.backoff.base


def test_a_message_without_a_version_field_is_refused_with_the_fix(
    server: Any, sdk_engine: str
) -> None:
    """A newcomer's first message often has no ``version`` field: the error names both fixes
    (add the field, or register another one with ``version_field=``), on both engines."""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FileDescriptorProto(name="ticket.proto", package="newbie", syntax="proto3")
    m = f.message_type.add(name="Ticket")
    m.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    fds = descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString()
    store = make_store(server.client(), sdk_engine)
    with pytest.raises(ctxlink.SchemaError) as err:
        store.register_schema("ticket", fds, message_type="newbie.Ticket")
    assert str(err.value) == (
        "CTXSCHEMA message 'newbie.Ticket' has no top-level field 'version' to hold the context "
        "version: add an integer field 'version' or name one with VERSIONFIELD "
        "(version_field= in the SDK)"
    )
    assert store.schemas() == []
