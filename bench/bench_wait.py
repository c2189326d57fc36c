#!/usr/bin/env python3
"""store.wait: wake-up latency on both engines, and what the wait channel's PUBLISH adds to a
Lua-engine write.

1. Wake-up latency. One redis-server 7 per engine (module loaded / stock). A waiter thread
   calls ``store.wait(key, v, 5)`` on its own Store; the main thread writes version v + 1 with
   ``store.cas`` once the waiter is blocked. Per wake-up, two figures: from the write's
   acknowledgement (cas returned) to wait's return ("from ack", clamped at 0: the server often
   answers the waiter before the writer), and from the moment the write was sent ("from send").
   --wakeups wake-ups (default 200) per engine; median and p99 of each.

2. The PUBLISH on a Lua write. The same Lua-engine CAS (an update of an existing context, with
   a write id, as the SDK sends it) with the stock scripts and with scripts whose wait_publish is
   a no-op, nobody subscribed: server time per call from INFO commandstats (usec_per_call of
   evalsha after CONFIG RESETSTAT), the sides interleaved over --rounds rounds of --writes
   writes, the best round of each side counts.

    .venv/bin/python bench/bench_wait.py
    .venv/bin/python bench/bench_wait.py --quick     # 50 wake-ups, 2 rounds of 300 writes

The exit status is 0 either way (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("CTXLINK_SDK") or str(ROOT / "sdk"))

import ctxlink  # noqa: E402
import ctxlink._scripts as scripts  # noqa: E402
from ctxlink._order_schema import file_descriptor_proto  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

TYPE = "ctxlink.example.Order"


def order_class() -> tuple[Any, bytes]:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.add().CopyFrom(file_descriptor_proto())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(TYPE)), \
        fds.SerializeToString()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p * len(s))) - 1))]


def wakeups(server: EmbeddedRedis, engine: str, n: int) -> tuple[list[float], list[float]]:
    Order, fds = order_class()
    writer = ctxlink.connect(server.client(), engine=engine)
    waiter = ctxlink.connect(server.client(), engine=engine)
    writer.register_schema("order", fds, message_type=TYPE)
    key = f"bench:wait:{engine}"
    writer.client.delete(key)
    assert writer.cas(key, 0, Order(order_id="o"), schema="order").ok
    woken: list[float] = []
    ready = threading.Event()

    def loop() -> None:
        for v in range(1, n + 1):
            ready.set()
            snap = waiter.wait(key, v, 5)
            woken.append(time.perf_counter())
            assert snap is not None and snap.version == v + 1

    t = threading.Thread(target=loop)
    t.start()
    from_ack: list[float] = []
    from_send: list[float] = []
    for v in range(1, n + 1):
        ready.wait(5)
        ready.clear()
        time.sleep(0.003)  # the waiter is blocked by now
        sent = time.perf_counter()
        assert writer.cas(key, v, Order(order_id=str(v))).ok
        acked = time.perf_counter()
        while len(woken) < v:
            time.sleep(0.0001)
        from_ack.append(max(0.0, woken[v - 1] - acked))
        from_send.append(woken[v - 1] - sent)
    t.join()
    writer.client.close()
    waiter.client.close()
    return from_ack, from_send


def _no_publish_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="ctxlink-nopublish-"))
    for f in (ROOT / "lua").glob("*.lua"):
        shutil.copy(f, d / f.name)
    (d / "wait_publish.lua").write_text("local function wait_publish(key, what) end\n")
    return d


def _use_scripts(directory: Path) -> None:
    scripts.find_lua_dir = lambda: directory  # type: ignore[assignment]
    scripts._sources.cache_clear()
    scripts._PLANS.clear()


def publish_cost(server: EmbeddedRedis, rounds: int, writes: int) -> dict[str, float]:
    Order, fds = order_class()
    sides = {"with PUBLISH": ROOT / "lua", "without": _no_publish_dir()}
    best = {name: float("inf") for name in sides}
    r = server.client()
    for _ in range(rounds):
        for name, directory in sides.items():
            _use_scripts(directory)
            store = ctxlink.connect(server.client(), engine="lua")
            store.register_schema("order", fds, message_type=TYPE)
            key = "bench:pub"
            r.delete(key)
            store.cas(key, 0, Order(order_id="o"), schema="order")
            store.cas(key, 1, Order(order_id="o"), write_id="warm-up")  # scripts loaded
            r.config_resetstat()
            for v in range(2, writes + 2):
                store.cas(key, v, Order(order_id=f"order-{v}", last_updated_by="bench"), write_id=f"w{v}")
            stat = r.info("commandstats").get("cmdstat_evalsha", {})
            best[name] = min(best[name], float(stat.get("usec_per_call", 0.0)))
            store.client.close()
    _use_scripts(ROOT / "lua")
    shutil.rmtree(sides["without"])
    r.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wakeups", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.wakeups, a.rounds, a.writes = 50, 2, 300
    print(f"wake-up latency, {a.wakeups} wake-ups per engine (ms)")
    print(f"{'engine':8} {'ack med':>8} {'ack p99':>8} {'send med':>9} {'send p99':>9}")
    for engine in ("module", "lua"):
        module = find_module() if engine == "module" else None
        with EmbeddedRedis(module=module) as server:
            ack, send = wakeups(server, engine, a.wakeups)
        print(f"{engine:8} {statistics.median(ack) * 1e3:8.3f} {pct(ack, 0.99) * 1e3:8.3f} "
              f"{statistics.median(send) * 1e3:9.3f} {pct(send, 0.99) * 1e3:9.3f}")
    with EmbeddedRedis() as server:
        cost = publish_cost(server, a.rounds, a.writes)
    w, wo = cost["with PUBLISH"], cost["without"]
    print(f"\nLua CAS, server time per call (usec, best of {a.rounds} rounds x {a.writes})")
    print(f"with PUBLISH {w:7.2f}   without {wo:7.2f}   added {w - wo:+.2f} "
          f"({(w / wo - 1) * 100 if wo else 0:+.1f} %)")


if __name__ == "__main__":
    main()
