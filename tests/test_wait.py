"""store.wait / CTX.WAIT on both engines (docs/PROTOCOL.md, "CTX.WAIT"): at once when already
newer, woken by writes within milliseconds, None at the timeout, NotFoundError on deletion
(CTX.DEL, raw DEL, expiry, FLUSHALL), bad arguments refused with nothing sent, the asyncio twin,
Redis 6.2, and the Lua engine's channel names in the key's slot."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

import ctxlink
import ctxlink.aio
import pytest
from ctxlink._wait import wait_channel
from ctxlink.embedded import EmbeddedRedis, find_module
from redis.crc import key_slot

REPO = Path(__file__).resolve().parents[1]
REDIS62 = Path(os.environ.get("CTXLINK_REDIS62", REPO / "build/_deps/redis-6.2/src/redis-server"))
TYPE = "ctxlink.example.Order"


@pytest.fixture
def Order(pb):
    return pb.cls("order", TYPE)


@pytest.fixture
def store(engine, shared_server, pb):
    shared_server.assert_alive()
    r = shared_server.r
    r.flushall()
    s = ctxlink.connect(shared_server.client(), engine=engine)
    s.register_schema("order", pb.fds("order"), message_type=TYPE)
    yield s
    s.client.close()
    shared_server.assert_alive()


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


def create(store, Order, key="w:1"):
    assert store.cas(key, 0, Order(order_id="a"), schema="order").ok


def calls(r, *names):
    stats = r.info("commandstats")
    return {n: stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in names}


# ---- returns, wakes up, times out ----------------------------------------------------------

def test_wait_returns_at_once_when_the_version_is_already_above(store, Order):
    create(store, Order)
    store.cas("w:1", 1, Order(order_id="b"))
    t0 = time.monotonic()
    snap = store.wait("w:1", 1, 5)
    assert snap is not None and snap.version == 2 and time.monotonic() - t0 < 0.5
    assert store.wait("w:1", 0, None).version == 2


def test_a_write_wakes_the_waiter_with_the_new_snapshot(store, Order):
    create(store, Order)
    later(0.1, store.cas, "w:1", 1, Order(order_id="b"), )
    t0 = time.monotonic()
    snap = store.wait("w:1", 1, 5)
    assert snap is not None and snap.version == 2
    assert snap.decode(Order).order_id == "b"
    assert time.monotonic() - t0 < 2


def test_a_field_patch_wakes_the_waiter(store, Order):
    create(store, Order)

    def patch():
        store.update("w:1", lambda m: setattr(m, "last_updated_by", "c"), message_class=Order,
                     reads=[])
    later(0.1, patch)
    snap = store.wait("w:1", 1, 5)
    assert snap is not None and snap.version == 2 and snap.decode(Order).last_updated_by == "c"


def test_a_version_further_ahead_keeps_the_waiter_blocked_until_reached(store, Order):
    create(store, Order)

    def writes():
        for v in (1, 2):
            store.cas("w:1", v, Order(order_id=str(v)))
            time.sleep(0.05)
    later(0.05, writes)
    snap = store.wait("w:1", 2, 5)
    assert snap is not None and snap.version == 3


def test_the_timeout_returns_none(store, Order):
    create(store, Order)
    t0 = time.monotonic()
    assert store.wait("w:1", 1, 0.3) is None
    took = time.monotonic() - t0
    assert 0.29 <= took < 1.5, took
    t0 = time.monotonic()
    assert store.wait("w:1", 1, 0) is None  # one read, no blocking
    assert time.monotonic() - t0 < 0.5


# ---- deletion ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["ctx.del", "raw DEL", "UNLINK", "FLUSHALL"])
def test_a_deletion_meanwhile_raises_not_found(store, Order, shared_server, how):
    create(store, Order)
    r = shared_server.client()
    do = {"ctx.del": lambda: store.delete("w:1", 1), "raw DEL": lambda: r.delete("w:1"),
          "UNLINK": lambda: r.unlink("w:1"), "FLUSHALL": r.flushall}[how]
    later(0.1, do)
    t0 = time.monotonic()
    with pytest.raises(ctxlink.NotFoundError):
        store.wait("w:1", 1, 5)
    # the module wakes at once; the Lua engine at its next once-a-second check for raw deletions
    assert time.monotonic() - t0 < (0.8 if store.engine == "module" or how == "ctx.del" else 1.6)
    r.close()


def test_a_deleted_and_recreated_context_raises_not_found(store, Order):
    create(store, Order)
    store.cas("w:1", 1, Order(order_id="b"))

    def recreate():
        store.delete("w:1", 2)
        store.cas("w:1", 0, Order(order_id="new"), schema="order")
    later(0.1, recreate)
    with pytest.raises(ctxlink.NotFoundError):
        store.wait("w:1", 2, 5)


def test_expiry_raises_not_found(store, Order, shared_server):
    create(store, Order)
    shared_server.r.pexpire("w:1", 200)
    t0 = time.monotonic()
    with pytest.raises(ctxlink.NotFoundError):
        store.wait("w:1", 1, 5)
    took = time.monotonic() - t0
    # module: woken by the expiry (active expiry runs 10 times a second); Lua: within ~1.5 s
    assert took < (1.0 if store.engine == "module" else 1.6), took


def test_eviction_raises_not_found(engine, pb, Order):
    module = find_module() if engine == "module" else None
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        s = ctxlink.connect(server.client(), engine=engine)
        s.register_schema("order", pb.fds("order"), message_type=TYPE)
        create(s, Order, "w:ev")
        r.expire("w:ev", 3600)  # the only key volatile-ttl may evict
        r.config_set("maxmemory-policy", "volatile-ttl")
        r.config_set("maxmemory", r.info("memory")["used_memory"] + 200_000)

        def fill():
            for i in range(400):
                try:
                    r.set(f"fill:{i}", b"x" * 1000)
                except Exception:  # OOM once nothing is left to evict
                    return
        later(0.1, fill)
        t0 = time.monotonic()
        with pytest.raises(ctxlink.NotFoundError):
            s.wait("w:ev", 1, 5)
        assert time.monotonic() - t0 < (0.8 if engine == "module" else 1.6)
        assert r.exists("w:ev") == 0 and r.info("stats")["evicted_keys"] >= 1
        s.client.close()
        r.close()


def test_an_absent_context_raises_at_once_unless_waiting_for_its_creation(store, Order):
    with pytest.raises(ctxlink.NotFoundError):
        store.wait("w:none", 1, 5)
    later(0.1, create, store, Order, "w:new")
    snap = store.wait("w:new", 0, 5)
    assert snap is not None and snap.version == 1
    assert store.wait("w:absent", 0, 0.2) is None


# ---- arguments -------------------------------------------------------------------------

BAD = [
    ("after_version", -1), ("after_version", 1.5), ("after_version", "1"),
    ("after_version", True), ("after_version", 1 << 63),
    ("timeout", -1), ("timeout", -0.001), ("timeout", float("nan")), ("timeout", "1"),
    ("timeout", True),
]


@pytest.mark.parametrize("arg,value", BAD, ids=[f"{a}={v!r}" for a, v in BAD])
def test_bad_arguments_are_refused_with_nothing_sent(store, Order, shared_server, arg, value):
    create(store, Order)
    r = shared_server.client()
    before = calls(r, "ctx.wait", "evalsha", "subscribe", "ssubscribe", "ctx.get")
    kwargs = {"after_version": 0, "timeout": 1}
    kwargs[arg] = value
    with pytest.raises(ValueError):
        store.wait("w:1", kwargs["after_version"], kwargs["timeout"])
    assert calls(r, "ctx.wait", "evalsha", "subscribe", "ssubscribe", "ctx.get") == before
    with pytest.raises(TypeError):
        store.wait(1, 0, 1)  # type: ignore[arg-type]
    r.close()


def test_the_wrong_type_raises_wrongtype(store, shared_server):
    shared_server.r.set("w:str", "x")
    with pytest.raises(ctxlink.WrongTypeError):
        store.wait("w:str", 0, 1)


# ---- the module's command --------------------------------------------------------------

@pytest.mark.module_only("raw CTX.WAIT command syntax, MULTI and scripts")
def test_ctx_wait_command_arguments_and_no_blocking_in_multi_or_scripts(store, Order,
                                                                        shared_server):
    r = shared_server.client()
    create(store, Order)
    for args, text in [
        (("w:1", "-1", "10"), "after_version must be an integer"),
        (("w:1", "x", "10"), "after_version must be an integer"),
        (("w:1", "0", "-1"), "timeout_ms must be an integer"),
        (("w:1", "0", "1.5"), "timeout_ms must be an integer"),
        (("w:1", "0", str(1 << 41)), "timeout_ms must be an integer"),
        (("w:none", "1", "10"), "CTXDELETED no context"),
    ]:
        with pytest.raises(Exception, match=text):
            r.execute_command("CTX.WAIT", *args)
    with pytest.raises(Exception, match="wrong number of arguments"):
        r.execute_command("CTX.WAIT", "w:1", "0")
    assert r.execute_command("CTX.WAIT", "w:1", "0", "0")[0] == 1  # CTX.GET's shape
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("CTX.WAIT", "w:1", "1", "0")  # would block forever outside MULTI
    assert pipe.execute() == [None]
    assert r.eval("return redis.call('CTX.WAIT', KEYS[1], '1', '0')", 1, "w:1") is None
    assert r.execute_command("CTX.WAIT", "w:1", "1", "50") is None
    r.close()


@pytest.mark.module_only("raw CTX.WAIT clients: disconnects, CLIENT UNBLOCK")
def test_ctx_wait_survives_disconnects_unblock_and_many_waiters(store, Order, shared_server):
    create(store, Order)
    raws = [shared_server.raw() for _ in range(12)]
    for c in raws:
        c.send("CTX.WAIT", "w:1", "1", "0")
    r = shared_server.client()
    deadline = time.monotonic() + 5
    while r.info("clients")["blocked_clients"] < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.info("clients")["blocked_clients"] == 12
    for c in raws[:4]:  # they go away while blocked
        c.close()
    while r.info("clients")["blocked_clients"] > 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    # blocked waiters only (a client that went away may linger in CLIENT LIST for a moment)
    clients = [dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
               for line in r.execute_command("CLIENT", "LIST").decode().splitlines()]
    ids = [int(c["id"]) for c in clients if c.get("cmd") == "ctx.wait"
           and "b" in c.get("flags", "") and "c" not in c.get("flags", "")]
    assert r.execute_command("CLIENT", "UNBLOCK", ids[0]) == 1  # as a timeout: nil
    time.sleep(0.05)
    assert store.cas("w:1", 1, Order(order_id="b")).ok
    replies = [c.read() for c in raws[4:]]
    assert sum(1 for x in replies if x is None) == 1
    assert all(x[0] == 2 for x in replies if x is not None)
    for c in raws[4:]:
        c.close()
    # waiters on other keys and databases, then a deletion of one key only
    w2 = [shared_server.raw() for _ in range(3)]
    w2[0].send("CTX.WAIT", "w:1", "2", "0")
    w2[1].send("SELECT", "1")
    assert "OK" in str(w2[1].read())
    w2[1].send("CTX.WAIT", "w:1", "0", "300")
    w2[2].send("CTX.WAIT", "w:other", "0", "300")
    time.sleep(0.05)
    assert store.delete("w:1", 2).ok
    assert "CTXDELETED" in str(w2[0].read())
    assert w2[1].read() is None and w2[2].read() is None  # timeouts, not deletions
    for c in w2:
        c.close()
    assert r.info("clients")["blocked_clients"] == 0
    r.close()


# ---- wake-up latency -------------------------------------------------------------------

@pytest.mark.timing
def test_wake_up_latency_median_within_10ms(store, Order, shared_server, engine):
    """~100 wake-ups, measured from the write's acknowledgement to the waiter's return. Only the
    median is asserted (p99 is printed: a loaded CI machine stretches the tail)."""
    create(store, Order)
    waiter = ctxlink.connect(shared_server.client(), engine=engine)
    lat: list[float] = []
    woken: list[float] = []
    errors: list[BaseException] = []
    ready = threading.Event()

    def wait_loop(n):
        try:
            for v in range(1, n + 1):
                ready.set()
                snap = waiter.wait("w:1", v, 5)
                woken.append(time.perf_counter())
                assert snap is not None and snap.version == v + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    n = 100
    t = threading.Thread(target=wait_loop, args=(n,))
    t.start()
    for v in range(1, n + 1):
        ready.wait(5)
        ready.clear()
        time.sleep(0.005)  # the waiter is blocked by now
        assert store.cas("w:1", v, Order(order_id=str(v))).ok
        acked = time.perf_counter()
        while len(woken) < v and t.is_alive():
            time.sleep(0.0002)
        if errors:
            break
        lat.append(max(0.0, woken[v - 1] - acked))
    t.join(10)
    waiter.client.close()
    assert not errors, errors
    lat.sort()
    median, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    print(f"\n{engine}: wake-up median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms "
          f"over {len(lat)}")
    assert median <= 0.010, (median, p99)


# ---- asyncio -----------------------------------------------------------------------------

def test_asyncio_wait_wakes_times_out_and_sees_deletion(engine, shared_server, pb, Order):
    shared_server.r.flushall()

    async def main():
        import redis.asyncio as aioredis
        client = aioredis.Redis(host="127.0.0.1", port=shared_server.port)
        s = await ctxlink.aio.connect(client, engine=engine)
        await s.register_schema("order", pb.fds("order"), message_type=TYPE)
        assert (await s.cas("a:1", 0, Order(order_id="a"), schema="order")).ok
        assert (await s.wait("a:1", 0, 1)).version == 1

        async def write():
            await asyncio.sleep(0.1)
            await s.cas("a:1", 1, Order(order_id="b"))
        task = asyncio.create_task(write())
        snap = await s.wait("a:1", 1, 5)
        await task
        assert snap is not None and snap.version == 2
        t0 = time.monotonic()
        assert await s.wait("a:1", 2, 0.2) is None
        assert time.monotonic() - t0 >= 0.19

        async def delete():
            await asyncio.sleep(0.1)
            await s.delete("a:1", 2)
        task = asyncio.create_task(delete())
        with pytest.raises(ctxlink.NotFoundError):
            await s.wait("a:1", 2, 5)
        await task
        with pytest.raises(ValueError):
            await s.wait("a:1", -1, 1)
        await client.aclose()

    asyncio.run(main())


# ---- Redis 6.2 ----------------------------------------------------------------------------

@pytest.mark.skipif(not REDIS62.exists(), reason=f"{REDIS62} is missing: `make redis62`")
@pytest.mark.parametrize("engine62", ["module", "lua"])
def test_wait_on_redis_6_2(engine62, pb, Order):
    module = find_module() if engine62 == "module" else None
    with EmbeddedRedis(module=module, binary=str(REDIS62)) as server:
        s = ctxlink.connect(server.client(), engine=engine62)
        s.register_schema("order", pb.fds("order"), message_type=TYPE)
        create(s, Order)
        later(0.1, s.cas, "w:1", 1, Order(order_id="b"))
        snap = s.wait("w:1", 1, 5)
        assert snap is not None and snap.version == 2
        later(0.1, s.delete, "w:1", 2)
        with pytest.raises(ctxlink.NotFoundError):
            s.wait("w:1", 2, 5)
        s.client.close()


# ---- the Lua engine's channel ------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "ctx:1", "order:{42}:state", "{a}", "a{b", "a{}b", "a}b", "{}", "é:ключ", "x{y}z{w}",
])
def test_the_wait_channel_hashes_to_the_keys_slot(key):
    channel, sharded = wait_channel(key)
    assert channel.startswith(b"__ctx:wait:")
    if sharded:
        assert key_slot(channel) == key_slot(key.encode())
    else:
        assert "}" in key  # only keys without a hash tag that hold a '}'


# ---- Redis Cluster: three primaries and a replica -----------------------------------------

@pytest.fixture(scope="module")
def wait_cluster():
    """The suite's 3-primary cluster (+ one replica of the first), the module loaded: both
    engines run on it (``engine="lua"`` uses the scripts even where the module is loaded)."""
    from test_cluster import _cluster

    yield from _cluster(module=True)


@pytest.fixture(scope="module")
def cluster_schema(wait_cluster, engine, pb):
    """"order" registered once per engine (16384 slot copies: seconds on the Lua engine)."""
    from redis.cluster import RedisCluster

    rc = RedisCluster(host="127.0.0.1", port=wait_cluster[0].port)
    ctxlink.connect(rc, engine=engine).register_schema("order", pb.fds("order"),
                                                       message_type=TYPE)
    rc.close()
    return wait_cluster


def test_wait_on_a_cluster_wakes_on_every_primary(cluster_schema, engine, Order):
    from redis.cluster import RedisCluster

    rc = RedisCluster(host="127.0.0.1", port=cluster_schema[0].port)
    try:
        s = ctxlink.connect(rc, engine=engine)
        keys = ["c:{a}", "c:{b}", "c:{c}", "c:plain", "c:a}b"]  # three slots' ranges at least
        for key in keys:
            rc.delete(key)
            create(s, Order, key)
            later(0.1, s.cas, key, 1, Order(order_id="b"))
            t0 = time.monotonic()
            snap = s.wait(key, 1, 5)
            assert snap is not None and snap.version == 2, key
            assert time.monotonic() - t0 < 0.9, key
            later(0.1, s.delete, key, 2)
            with pytest.raises(ctxlink.NotFoundError):
                s.wait(key, 2, 5)
    finally:
        rc.close()


@pytest.mark.module_only("CTX.WAIT on a replica")
def test_ctx_wait_on_a_replica_wakes_when_the_write_is_replicated(cluster_schema, engine,
                                                                  Order):
    from redis.cluster import RedisCluster

    wait_cluster = cluster_schema
    rc = RedisCluster(host="127.0.0.1", port=wait_cluster[0].port)
    try:
        s = ctxlink.connect(rc, engine=engine)
        primary = wait_cluster[0].client()
        key = next(f"rep:{i}" for i in range(1000)
                   if key_slot(f"rep:{i}".encode()) <= 5460)  # node 0's slots: the replica's
        rc.delete(key)
        create(s, Order, key)
        replica = wait_cluster[3].client()
        replica.execute_command("READONLY")
        _deadline = time.monotonic() + 5
        while replica.execute_command("CTX.GET", key) is None and time.monotonic() < _deadline:
            time.sleep(0.01)
        later(0.1, s.cas, key, 1, Order(order_id="b"))
        reply = replica.execute_command("CTX.WAIT", key, 1, 5000)
        assert reply is not None and reply[0] == 2
        later(0.1, s.delete, key, 2)
        with pytest.raises(Exception, match="CTXDELETED"):
            replica.execute_command("CTX.WAIT", key, 2, 5000)
        primary.close()
        replica.close()
    finally:
        rc.close()


# ---- ACL: the documented lines -----------------------------------------------------------

ACL_LUA = "ACL SETUSER agent on >pw ~ctx:* %R~__ctx:* +@all -@admin -@dangerous"
ACL_WAIT = "ACL SETUSER agent &__ctx:wait:*"
ACL_NARROW = ("ACL SETUSER agent on >pw ~ctx:* %R~__ctx:* +evalsha +script|load +get +set "
              "+type +exists +time +hget +hmget +del")
ACL_NARROW_WAIT = "ACL SETUSER agent &__ctx:wait:* +spublish +ssubscribe +publish +subscribe"


def test_the_wait_acl_lines_are_the_documented_ones():
    text = (REPO / "docs" / "PROTOCOL.md").read_text()
    for line in (ACL_LUA, ACL_WAIT, ACL_NARROW, ACL_NARROW_WAIT):
        assert line in text, line


@pytest.mark.parametrize("lines", [(ACL_LUA, ACL_WAIT), (ACL_NARROW, ACL_NARROW_WAIT),
                                   (ACL_LUA,)], ids=["agent", "narrow", "without-channel"])
def test_a_lua_agent_waits_with_the_documented_acl(engine, shared_server, pb, Order, lines):
    if engine != "lua":
        pytest.skip("the channel lines are the Lua engine's")
    r = shared_server.r
    r.flushall()
    r.execute_command("ACL", "DELUSER", "agent")
    admin = ctxlink.connect(shared_server.client(), engine="lua")
    admin.register_schema("order", pb.fds("order"), message_type=TYPE)
    for line in lines:
        assert r.execute_command(*line.split()) in (b"OK", "OK", True)
    r.execute_command("SCRIPT", "FLUSH")
    client = __import__("redis").Redis(host="127.0.0.1", port=shared_server.port,
                                       username="agent", password="pw")
    agent = ctxlink.connect(client, engine="lua")
    create(agent, Order, "ctx:w")
    later(0.1, agent.cas, "ctx:w", 1, Order(order_id="b"))
    if len(lines) == 1:  # no channel: writes still work, wait is refused
        with pytest.raises(Exception, match="NOPERM|permission"):
            agent.wait("ctx:w", 1, 5)
        time.sleep(0.2)
        assert agent.get("ctx:w").version == 2
    else:
        t0 = time.monotonic()
        snap = agent.wait("ctx:w", 1, 5)
        assert snap is not None and snap.version == 2
        assert time.monotonic() - t0 < 0.9  # woken by the publish, not the 1 s check
    client.close()
    admin.client.close()
    r.execute_command("ACL", "DELUSER", "agent")


def test_asyncio_wait_on_a_cluster(cluster_schema, engine, Order):
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    async def main():
        rc = AsyncCluster(host="127.0.0.1", port=cluster_schema[0].port)
        s = await ctxlink.aio.connect(rc, engine=engine)
        for key in ("ac:{x}", "ac:plain"):
            await rc.delete(key)
            assert (await s.cas(key, 0, Order(order_id="a"), schema="order")).ok

            async def write(key=key):
                await asyncio.sleep(0.1)
                await s.cas(key, 1, Order(order_id="b"))
            task = asyncio.create_task(write())
            t0 = time.monotonic()
            snap = await s.wait(key, 1, 5)
            await task
            assert snap is not None and snap.version == 2
            assert time.monotonic() - t0 < 0.9
        await rc.aclose()

    asyncio.run(main())
