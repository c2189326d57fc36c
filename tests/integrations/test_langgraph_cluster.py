"""CtxlinkSaver and CtxlinkStore on a Redis Cluster (three primaries; module and Lua engines):
keys of one thread land in several slots, listing all threads scans every primary, strict mode
still refuses a stale parent, the store searches across nodes."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from redis.cluster import RedisCluster

import ctxlink
from ctxlink.embedded import EmbeddedCluster
from ctxlink.integrations.langgraph import CtxlinkSaver, CtxlinkStore


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedCluster) -> tuple[str, int]:
    return redis_cluster.engine, redis_cluster.port  # type: ignore[attr-defined]


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
