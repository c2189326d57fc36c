"""Cost per write of the change feed (docs/BENCHMARKS.md, "Change feed: cost per write").

For each engine (the module; the Lua engine on a stock server) and each setting (off, FEED 1000,
HISTORY 50, HISTORY 50 + FEED 1000), writes WRITES whole-context updates (CTX.CAS / cas.lua
through the SDK, the ~190-byte Order payload of bench_history.py, 10 contexts round-robin) after
warming up until the feed is full (so MAXLEN trims on every write) and CONFIG RESETSTAT, and
reports the server's usec_per_call of the write command from INFO commandstats and the feed
stream's MEMORY USAGE per entry.

    .venv/bin/python bench/bench_feed.py [--writes 3000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sdk"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_history import ORDER, ORDER_PB, order_class, payload, timed_writes  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

SETTINGS = (("off", 0, 0), ("FEED 1000", 0, 1000), ("HISTORY 50", 50, 0),
            ("HISTORY 50 + FEED 1000", 50, 1000))


def run(engine: str, writes: int, cls: type) -> list[tuple[str, float, float]]:
    rows = []
    module = find_module() if engine == "module" else None
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        cmd = "ctx.cas" if engine == "module" else "evalsha"
        for label, hist, feed in SETTINGS:
            r.flushall()
            store = ctxlink.connect(server.client())
            assert store.engine == engine
            store.register_schema("order", ORDER_PB.read_bytes(), message_type=ORDER,
                                  history=hist, feed=feed)
            # warm up: the feed (1000) and the streams (50) full
            _, usec = timed_writes(r, store, cls, cmd, writes, warmup=105)
            n = r.xlen("__ctxf:order") if feed else 0
            per_entry = (r.memory_usage("__ctxf:order") or 0) / n if n else 0.0
            rows.append((label, usec, per_entry))
        r.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=3000)
    args = ap.parse_args()
    cls = order_class()
    print(f"payload bytes: {len(payload(cls, 100))}; {args.writes} writes per row")
    print(f"{'engine':8} {'setting':24} {'usec_per_call':>14} {'feed bytes/entry':>17}")
    for engine in ("module", "lua"):
        for label, usec, per in run(engine, args.writes, cls):
            print(f"{engine:8} {label:24} {usec:14.2f} {per:17.1f}")


if __name__ == "__main__":
    main()
