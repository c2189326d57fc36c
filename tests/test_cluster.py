"""The module on a real Redis Cluster: three primaries and a replica on loopback.

Each slot carries its own copy of the schema registry (docs/PROTOCOL.md, "Redis Cluster"), so
CTX.CAS only touches keys of its own slot, and the copies move with their slots on resharding.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Iterator

import ctxlink
import pytest
import redis
from ctxlink.embedded import EmbeddedCluster, EmbeddedRedis, find_module
from redis.cluster import RedisCluster

from helpers import ProtoLib, error_text

RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[EmbeddedRedis]]:
    yield from _cluster(module=True)


@pytest.fixture(scope="module")
def stock_cluster() -> Iterator[list[EmbeddedRedis]]:
    """The same cluster without the module: the Lua engine's ground."""
    yield from _cluster(module=False)


def _cluster(module: bool) -> Iterator[list[EmbeddedRedis]]:
    """Three primaries and a replica of the first (nodes[3])."""
    with EmbeddedCluster(3, replicas=1, module=find_module() if module else None) as cluster:
        yield cluster.nodes


@pytest.fixture
def rc(cluster: list[EmbeddedRedis]) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> ProtoLib:
    return ProtoLib(tmp_path_factory.mktemp("cluster-protos"))


def _primaries(cluster: list[EmbeddedRedis]) -> list[redis.Redis]:
    return [n.client() for n in cluster[:3]]


def _owned_slots(r: redis.Redis) -> int:
    """How many slots node ``r`` serves now, from its own CLUSTER NODES entry (``myself``)."""
    for info in r.execute_command("CLUSTER NODES").values():  # redis-py parses it by address
        if "myself" in info["flags"]:
            return sum(int(hi) - int(lo) + 1 for lo, hi in info["slots"])
    raise AssertionError("CLUSTER NODES has no 'myself' entry")


def test_schemas_reach_every_slot_of_every_primary(cluster, rc, pb) -> None:
    store = ctxlink.connect(rc)
    assert store.engine == "module"
    assert store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order") == 1
    for r, (lo, hi) in zip(_primaries(cluster), RANGES):
        assert r.execute_command("CTX.SCHEMA.LIST") == [b"order"]
        # one copy of the entry and of the name index per slot the node serves
        assert r.dbsize() >= 2 * (hi - lo + 1)
    for i in range(300):
        assert rc.execute_command("CTX.CAS", f"order:{i}", 0, pb.order(1), "SCHEMA", "order") == 1
    # every node validates: keys of each third of the slots are rejected the same way
    owners = {}
    for i in range(300):
        owners.setdefault(rc.keyslot(f"order:{i}") // 5461, i)
    assert len(owners) == 3
    for i in owners.values():
        with pytest.raises(redis.ResponseError) as exc:
            rc.execute_command("CTX.CAS", f"order:{i}", 1, pb.order(2) + b"\x52\x03\x0a\x01\xff")
        assert error_text(exc.value).startswith("CTXINVALID")
        assert rc.execute_command("CTX.GET", f"order:{i}")[0] == 1


def test_registry_copies_move_with_their_slots(cluster, rc, pb) -> None:
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to reshard (apt-get install redis-tools)")
    store = ctxlink.connect(rc)
    store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order")
    keys = [f"move:{i}" for i in range(400)]
    for k in keys:
        rc.execute_command("CTX.CAS", k, 0, pb.order(1), "SCHEMA", "order")
    src, dst = (c.client().execute_command("CLUSTER", "MYID").decode() for c in cluster[:2])
    subprocess.run(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster[0].port}",
         "--cluster-from", src, "--cluster-to", dst, "--cluster-slots", "300", "--cluster-yes"],
        check=True, capture_output=True, timeout=120,
    )
    rc.nodes_manager.initialize()
    moved = [k for k in keys if rc.keyslot(k) < 300]
    assert moved, "no test key landed in a moved slot"
    for k in keys:
        assert rc.execute_command("CTX.CAS", k, 1, pb.order(2)) == 2
    target = cluster[1].client()
    for k in moved:
        assert target.execute_command("CTX.GET", k)[0] == 2  # served by the new owner


def test_a_replica_holds_the_registry_and_refuses_writes(cluster, rc, pb) -> None:
    store = ctxlink.connect(rc)
    store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order")
    primary, replica = cluster[0].client(), cluster[3].client()
    primary.execute_command("WAIT", 1, 5000)
    assert replica.execute_command("CTX.SCHEMA.LIST") == [b"order"]
    assert replica.execute_command("CTX.SCHEMA.GET", "order")[0] == b"ctxlink.example.Order"
    _wait(lambda: primary.execute_command("DEBUG", "DIGEST") == replica.execute_command("DEBUG", "DIGEST"),
          "the replica's dataset digest to match")
    with pytest.raises(redis.ResponseError):
        replica.execute_command("CTX.SCHEMA.SET", "x", "ctxlink.example.Order", pb.fds("order"))


def test_reregistration_updates_every_copy(cluster, rc, pb) -> None:
    store = ctxlink.connect(rc)
    first = store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order")
    second = store.register_schema("order", pb.fds("order_v2_compat"), message_type="ctxlink.example.Order")
    assert second == first + 1
    for r in _primaries(cluster):
        assert r.execute_command("CTX.SCHEMA.GET", "order")[2] == second
    with pytest.raises(ctxlink.SchemaError):
        store.register_schema("order", pb.fds("order_v2_incompat"), message_type="ctxlink.example.Order")


def test_reregistering_fills_a_missing_slot_copy(cluster, rc, pb) -> None:
    """A copy lost from one slot (hand edit, a node that missed a registration) is written again
    by registering the same definition, under the same revision."""
    from ctxlink._cluster import _slot_tag

    store = ctxlink.connect(rc)
    revision = store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order")
    key = next(f"gap:{i}" for i in range(1000) if rc.keyslot(f"gap:{i}") > 11000)
    copy = f"__ctx:{{{_slot_tag(rc.keyslot(key))}}}:schema:order"
    assert rc.delete(copy) == 1
    with pytest.raises(redis.ResponseError) as exc:
        rc.execute_command("CTX.CAS", key, 0, pb.order(1), "SCHEMA", "order")
    assert error_text(exc.value).startswith("CTXSCHEMA")
    assert store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order") == revision
    assert rc.exists(copy) == 1
    assert rc.execute_command("CTX.CAS", key, 0, pb.order(1), "SCHEMA", "order") == 1


def test_the_lua_engine_keeps_a_registry_copy_per_slot(stock_cluster, pb) -> None:
    """On a cluster without the module, the SDK's Lua engine writes the same per-slot copies;
    every script touches only keys of one slot, and the copies move with their slots."""
    rc = RedisCluster(host="127.0.0.1", port=stock_cluster[0].port)
    try:
        store = ctxlink.connect(rc)
        assert store.engine == "lua"
        assert store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order") == 1
        keys = [f"lua:{i}" for i in range(300)]
        for k in keys:
            assert store.cas(k, 0, pb.order(1), schema="order").ok
        with pytest.raises(ctxlink.ValidationError):
            store.cas(keys[7], 1, pb.order(2) + b"\x52\x03\x0a\x01\xff")
        src, dst = (n.client().execute_command("CLUSTER", "MYID").decode() for n in stock_cluster[:2])
        subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{stock_cluster[0].port}",
             "--cluster-from", src, "--cluster-to", dst, "--cluster-slots", "200", "--cluster-yes"],
            check=True, capture_output=True, timeout=120,
        )
        rc.nodes_manager.initialize()
        for k in keys:
            assert store.cas(k, 1, pb.order(2)).ok
        assert store.schemas() == ["order"]
    finally:
        rc.close()


def test_registering_on_primaries_whose_revisions_differ_is_not_an_error(cluster, rc, pb) -> None:
    """A primary that took one more registration than the others (sent to it alone, or the
    others missed one) keeps a revision of its own: every later registration lands everywhere
    and the SDK returns the highest revision, instead of 'cluster primaries answered
    differently' on every attempt (the definitions agree; revisions are per node)."""
    order = "ctxlink.example.Order"
    store = ctxlink.connect(rc)
    assert store.register_schema("apart", pb.fds("order"), message_type=order) == 1
    one = _primaries(cluster)[0]
    assert one.execute_command("CTX.SCHEMA.SET", "apart", order, pb.fds("order_v2_compat")) == 2
    assert store.register_schema("apart", pb.fds("order_v2_compat"), message_type=order,
                                 compat="WIRE") == 3
    assert store.register_schema("apart", pb.fds("order_v2_compat"), message_type=order) == 3
    for r in _primaries(cluster):
        assert r.execute_command("CTX.SCHEMA.GET", "apart")[1] == pb.fds("order_v2_compat")
        assert r.hget(f"__ctx:{{{_slot_tag_of(r)}}}:schema:apart", "compat") == b"WIRE"


def _slot_tag_of(r: redis.Redis) -> str:
    """The slot tag of the first slot node ``r`` serves."""
    from ctxlink._cluster import _slot_tag

    for info in r.execute_command("CLUSTER NODES").values():
        if "myself" in info["flags"]:
            return _slot_tag(int(info["slots"][0][0]))
    raise AssertionError("CLUSTER NODES has no 'myself' entry")


def test_the_lua_engine_repairs_a_copy_that_missed_a_registration(stock_cluster, pb) -> None:
    """A slot's copy left at an older revision (a node that missed a registration, then took the
    slot over) is written again by registering the current definition, under the current
    revision, as the module does. Before, schema_set.lua refused that copy as a concurrent registration, after writing the others, on
    every attempt."""
    from ctxlink._cluster import _slot_tag

    rc = RedisCluster(host="127.0.0.1", port=stock_cluster[0].port)
    try:
        store = ctxlink.connect(rc)
        order = "ctxlink.example.Order"
        assert store.register_schema("stale", pb.fds("order"), message_type=order) == 1
        old = {k.decode(): v for k, v in rc.hgetall(f"__ctx:{{{_slot_tag(0)}}}:schema:stale").items()}
        assert store.register_schema("stale", pb.fds("order_v2_compat"), message_type=order) == 2
        copy = f"__ctx:{{{_slot_tag(9000)}}}:schema:stale"
        rc.hset(copy, mapping=old)  # the copy as it was before the second registration
        assert store.register_schema("stale", pb.fds("order_v2_compat"), message_type=order) == 2
        assert rc.hget(copy, "fds") == pb.fds("order_v2_compat")
        assert rc.hget(copy, "revision") == b"2"
    finally:
        rc.close()


def _lose_first_copy_then_register_incompatible(rc: RedisCluster, name: str, pb: ProtoLib,
                                                engine_nodes: list[redis.Redis]) -> None:
    """Deletes the first registry copy of ``name`` each primary serves (a hand DEL, or a write
    lost in a failover); an incompatible change must still be refused, checked against a copy
    that is there, and the compatible one is written into every copy, the lost ones too."""
    order = "ctxlink.example.Order"
    store = ctxlink.connect(rc)
    assert store.register_schema(name, pb.fds("order"), message_type=order) == 1
    from ctxlink._cluster import _slot_tag

    # each primary's first copy, and slot 0's (the one the Lua engine's SDK reads first)
    lost = {f"__ctx:{{{_slot_tag_of(r)}}}:schema:{name}" for r in engine_nodes}
    lost.add(f"__ctx:{{{_slot_tag(0)}}}:schema:{name}")
    for key in lost:
        assert rc.delete(key) == 1
    with pytest.raises(ctxlink.SchemaError, match="incompatible schema"):
        store.register_schema(name, pb.fds("order_v2_incompat"), message_type=order)
    assert not any(rc.exists(key) for key in lost)
    assert store.register_schema(name, pb.fds("order_v2_compat"), message_type=order,
                                 compat="WIRE") == 2
    for key in lost:
        assert rc.hget(key, "revision") == b"2" and rc.hget(key, "compat") == b"WIRE"


def test_the_module_checks_a_change_against_a_copy_that_is_there(cluster, rc, pb) -> None:
    _lose_first_copy_then_register_incompatible(rc, "lost", pb, _primaries(cluster))


def test_the_lua_engine_checks_a_change_against_a_copy_that_is_there(stock_cluster, pb) -> None:
    rc = RedisCluster(host="127.0.0.1", port=stock_cluster[0].port)
    try:
        _lose_first_copy_then_register_incompatible(rc, "lost", pb, _primaries(stock_cluster))
    finally:
        rc.close()


def test_every_registry_copy_gets_the_compat_setting(cluster, pb) -> None:
    """CTX.SCHEMA.SET ... COMPAT WIRE writes `compat` into every slot's copy of the entry."""
    fds = pb.fds("order")
    for r in _primaries(cluster):
        assert r.execute_command("CTX.SCHEMA.SET", "cmp", "ctxlink.example.Order", fds,
                                 "COMPAT", "WIRE") == 1
    total = 0
    for r in _primaries(cluster):
        # the slots this node serves now (an earlier test in this module reshards)
        owned = _owned_slots(r)
        copies = list(r.scan_iter(match="__ctx:{*}:schema:cmp", count=5000))
        assert len(copies) == owned
        assert {r.hget(k, "compat") for k in copies} == {b"WIRE"}
        total += owned
    assert total == 16384


def test_px_and_touch_reach_every_primary_and_its_replica(cluster, rc, pb) -> None:
    """CTX.TOUCH is routed by its key like the other data commands; the absolute expiry of PX and
    CTX.TOUCH is what the replica holds."""
    store = ctxlink.connect(rc)
    store.register_schema("order", pb.fds("order"), message_type="ctxlink.example.Order")
    keys = {}
    for i in range(300):
        keys.setdefault(rc.keyslot(f"ttl:{i}") // 5461, f"ttl:{i}")
    assert len(keys) == 3
    for key in keys.values():
        assert rc.execute_command("CTX.CAS", key, 0, pb.order(1), "SCHEMA", "order",
                                  "PX", 600_000) == 1
        assert rc.execute_command("CTX.TOUCH", key, 700_000) == 1
        assert 690_000 < rc.pttl(key) <= 700_000
        assert rc.execute_command("CTX.TOUCH", key + ":absent", 1000) == 0
    primary, replica = cluster[0].client(), cluster[3].client()
    primary.execute_command("WAIT", 1, 5000)
    replica.execute_command("READONLY")
    key = keys[0]  # a key of the first third of the slots: the first primary's
    _wait(lambda: replica.execute_command("PEXPIRETIME", key) ==
          primary.execute_command("PEXPIRETIME", key) > 0, "the replica's expiry")
