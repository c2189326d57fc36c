"""Cost per write of per-context history (docs/BENCHMARKS.md, "History: cost per write").

For each engine (the module; the Lua engine on a stock server) and each setting (history off,
HISTORY 50, HISTORY 50 + HISTORYPAYLOADS yes), writes WRITES whole-context updates (CTX.CAS /
cas.lua through the SDK, bytes payloads of about 190 bytes, 10 contexts round-robin) after
CONFIG RESETSTAT, and reports the server's usec_per_call of the write command from INFO
commandstats, and the stream's MEMORY USAGE once it holds 50 entries.

    .venv/bin/python bench/bench_history.py [--writes 3000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sdk"))

from google.protobuf import descriptor_pb2  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

ORDER_PB = ROOT / "sdk" / "ctxlink" / "order.pb"
ORDER = "ctxlink.example.Order"


def order_class() -> type:
    from google.protobuf import descriptor_pool, message_factory

    fds = descriptor_pb2.FileDescriptorSet.FromString(ORDER_PB.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(ORDER))


def payload(cls: type, version: int) -> bytes:
    msg = cls(order_id="o-123456", version=version, status=2, base_price=12000, discount=300,
              final_price=11700, inventory_reserved=True, last_updated_by="pricing-agent-7",
              last_updated_epoch=1796424143597)
    for i in range(4):
        item = msg.items.add()
        item.sku = f"SKU-{i:05d}-ABCDEFGHIJ"
        item.quantity = i + 1
    return bytes(msg.SerializeToString())


def timed_writes(r: Any, store: ctxlink.Store, cls: type, cmd: str, writes: int,
                 warmup: int) -> tuple[list[str], float]:
    """Creates 10 contexts of schema "order", updates each ``warmup`` times, then CONFIG
    RESETSTAT and ``writes`` updates round-robin; returns the keys and the server's usec_per_call
    of ``cmd`` (INFO commandstats)."""
    keys = [f"ctx:{i}" for i in range(10)]
    versions = dict.fromkeys(keys, 0)
    for k in keys:
        versions[k] = store.cas(k, 0, payload(cls, 1), schema="order").version
    for _ in range(warmup):
        for k in keys:
            versions[k] = store.cas(k, versions[k], payload(cls, versions[k] + 1)).version
    r.config_resetstat()
    for i in range(writes):
        k = keys[i % len(keys)]
        versions[k] = store.cas(k, versions[k], payload(cls, versions[k] + 1)).version
    return keys, float(r.info("commandstats")[f"cmdstat_{cmd}"]["usec_per_call"])


def run(engine: str, writes: int, cls: type) -> list[tuple[str, float, int]]:
    rows = []
    module = find_module() if engine == "module" else None
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        store = ctxlink.connect(server.client())
        assert store.engine == engine
        cmd = "ctx.cas" if engine == "module" else "evalsha"
        for label, hist, hpay in (("off", 0, False), ("HISTORY 50", 50, False),
                                  ("HISTORY 50 + payloads", 50, True)):
            r.flushall()
            store = ctxlink.connect(server.client())
            store.register_schema("order", ORDER_PB.read_bytes(), message_type=ORDER,
                                  history=hist, history_payloads=hpay)
            # warm up: streams full (MAXLEN trims from here on)
            keys, usec = timed_writes(r, store, cls, cmd, writes, warmup=60)
            mem = r.memory_usage(f"__ctxh:{keys[0]}") or 0
            rows.append((label, usec, int(mem)))
        r.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=3000)
    args = ap.parse_args()
    cls = order_class()
    print(f"payload bytes: {len(payload(cls, 100))}; {args.writes} writes per row")
    print(f"{'engine':8} {'setting':24} {'usec_per_call':>14} {'stream bytes (50 entries)':>26}")
    for engine in ("module", "lua"):
        for label, usec, mem in run(engine, args.writes, cls):
            print(f"{engine:8} {label:24} {usec:14.2f} {mem:26d}")


if __name__ == "__main__":
    main()
