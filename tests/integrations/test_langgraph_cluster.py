"""CtxlinkSaver and CtxlinkStore on a Redis Cluster (three primaries; module and Lua engines):
keys of one thread land in several slots, listing all threads scans every primary, strict mode
still refuses a stale parent, the store searches across nodes."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from redis.cluster import RedisCluster

import ctxlink
from ctxlink.embedded import EmbeddedRedis, free_port
from ctxlink.integrations.langgraph import CtxlinkSaver, CtxlinkStore

from conftest import ROOT

RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


def _until(pred: Any, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module", params=["module", "lua"])
def cluster_url(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    module = ROOT / "build" / "ctxlink.so" if request.param == "module" else None
    nodes: list[EmbeddedRedis] = []
    try:
        buses = []
        for _ in RANGES:
            bus = free_port()
            nodes.append(EmbeddedRedis(module=module, die_with_parent=True,
                                       args=["--cluster-enabled", "yes", "--cluster-port",
                                             str(bus), "--cluster-node-timeout", "5000"]).start())
            buses.append(bus)
        clients = [n.client() for n in nodes]
        for c, (lo, hi) in zip(clients, RANGES):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for n, bus in zip(nodes[1:], buses[1:]):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
        _until(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                           for c in clients), "cluster_state:ok")
        for c in clients:
            c.close()
        yield request.param, nodes[0].port
    finally:
        for n in nodes:
            n.close()


def test_saver_and_store_on_a_cluster(cluster_url: tuple[str, int]) -> None:
    engine, port = cluster_url
    rc = RedisCluster(host="127.0.0.1", port=port)
    try:
        store = ctxlink.connect(rc)
        saver = CtxlinkSaver(store=store, strict=True, key_prefix=f"cl{engine}")
        heads = {}
        for t in range(6):
            cfg = {"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}}
            for _ in range(3):
                cfg = saver.put(cfg, empty_checkpoint(), {"t": t}, {})
            saver.put_writes(cfg, [("ch", t)], "task")
            heads[f"t{t}"] = cfg
        slots = {rc.keyslot(saver._thread_key(f"t{t}")) for t in range(6)}
        assert len(slots) > 1
        everything = list(saver.list(None))
        assert len(everything) == 18
        assert {t.config["configurable"]["thread_id"] for t in everything} == set(heads)
        assert list(saver.list(None, filter={"t": 2}, limit=1))[0].metadata["t"] == 2
        stale = {"configurable": {"thread_id": "t0", "checkpoint_ns": "",
                                  "checkpoint_id": everything[-1].config["configurable"][
                                      "checkpoint_id"]}}
        with pytest.raises(ctxlink.ConflictError):
            saver.put(stale, empty_checkpoint(), {}, {})
        tup = saver.get_tuple(heads["t3"])
        assert tup is not None and tup.pending_writes == [("task", "ch", 3)]
        saver.delete_thread("t1")
        assert len(list(saver.list(None))) == 15

        mem = CtxlinkStore(store=store, key_prefix=f"mem{engine}")
        for i in range(10):
            mem.put(("users", f"u{i}"), "profile", {"i": i})
        assert len(mem.search(("users",), filter={"i": {"$gte": 5}}, limit=100)) == 5
        assert len(mem.list_namespaces(prefix=("users",))) == 10
    finally:
        rc.close()
