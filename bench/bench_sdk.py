"""SDK overhead: ctxlink ``get`` / ``cas`` vs bare redis-py ``HGET`` / ``HSET`` of the same bytes.

One Python thread, one connection, loopback, a throwaway redis-server (with the module, and a stock
one for the Lua engine). Per call latency, measured with ``perf_counter_ns`` around the call only.

- Sides of one workload are measured in alternating batches (A B, then B A, ...), over the
  same random sequence of many distinct keys, so drifts of the machine hit every side alike.
- ``get``: ``Store.get(key)`` (returns a Snapshot) vs ``client.hget(key, "raw")``.
- ``cas``: ``Store.cas(key, v, payload_bytes)`` on an existing context (no schema argument) vs
  ``client.hset(key, "raw", payload_bytes)``; the payloads (version field = v + 1) are encoded
  before the batch, outside the timed region, for both sides.
- Extra rows without a target separate the SDK's own cost from the server's: the same command
  sent through ``client.execute_command`` without the SDK (``CTX.GET`` / ``CTX.CAS``), and
  ``cas(message)`` where the SDK encodes a message (copy, set version, serialize) itself.
- Targets (module engine, p50): get <= 1.05x HGET, cas <= 1.05x HSET. The Lua engine is reported
  beside it, without a target. Missing a target prints FAIL; the exit code is 0 unless the run
  fails.

    .venv/bin/python bench/bench_sdk.py [--quick] [--ops N] [--keys N] [--batch N] [--module PATH]
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sdk"))

import redis  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink._order_schema import Order  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

TARGETS = {("module", "get"): 1.05, ("module", "cas"): 1.05}


def payload(i: int, version: int) -> Any:
    """A ~190-byte order, like the server benchmark's."""
    o = Order(order_id=f"o-{i:09d}", version=version, status=2, base_price=12_500 + i % 1000,
              discount=1_000, final_price=11_500 + i % 1000, inventory_reserved=True,
              last_updated_by="pricing-agent", last_updated_epoch=1764100000123)
    for k in range(5):
        o.items.add(sku=f"SKU-{k:03d}-{i % 9973:05d}", quantity=1 + k)
    return o


def pct(sorted_ns: Sequence[int], p: float) -> float:
    k = min(len(sorted_ns) - 1, max(0, int(round(p / 100.0 * (len(sorted_ns) - 1)))))
    return sorted_ns[k] / 1000.0  # microseconds


@dataclass
class Side:
    label: str
    # prepare(keys) -> argument list (outside the clock); call(arg) is what gets timed
    prepare: Callable[[Sequence[int]], list[Any]]
    call: Callable[[Any], Any]
    check: Optional[Callable[[list[Any]], None]] = None


def measure(sides: Sequence[Side], nkeys: int, ops: int, batch: int, rng: random.Random
            ) -> dict[str, list[int]]:
    """Runs every side ``ops`` times in alternating batches; returns sorted ns samples per side."""
    samples: dict[str, list[int]] = {s.label: [] for s in sides}
    clock = time.perf_counter_ns
    nbatches = max(1, ops // batch)
    for b in range(nbatches):
        keys = [rng.randrange(nkeys) for _ in range(batch)]
        order = list(sides) if b % 2 == 0 else list(reversed(sides))
        for side in order:
            args = side.prepare(keys)
            out = samples[side.label]
            results = []
            gc.collect()
            gc.disable()
            try:
                for arg in args:
                    t0 = clock()
                    r = side.call(arg)
                    t1 = clock()
                    out.append(t1 - t0)
                    results.append(r)
            finally:
                gc.enable()
            if side.check is not None:
                side.check(results)
    for v in samples.values():
        v.sort()
    return samples


def bench_engine(engine: str, server: EmbeddedRedis, nkeys: int, ops: int, batch: int,
                 seed: int) -> list[dict[str, Any]]:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    store = ctxlink.connect(client, engine=engine)  # type: ignore[arg-type]
    assert store.engine == engine
    store.register_schema("order", Order)
    client.flushall()
    store.register_schema("order", Order)

    ctx_key = [f"ctx:{i:09d}" for i in range(nkeys)]
    bare_key = [f"bare:{i:09d}" for i in range(nkeys)]
    version = [1] * nkeys
    msgs = [payload(i, 1) for i in range(nkeys)]
    pipe = client.pipeline(transaction=False)
    for i in range(nkeys):
        pipe.hset(bare_key[i], "raw", msgs[i].SerializeToString())
    pipe.execute()
    for i in range(nkeys):
        assert store.cas(ctx_key[i], 0, msgs[i], schema="order").ok
    # the Lua scripts are loaded by the first calls above; warm up every path once more
    store.get(ctx_key[0])

    def encoded(keys: Sequence[int]) -> list[tuple[int, bytes]]:
        out = []
        for i in keys:
            m = msgs[i]
            m.version = version[i] + 1
            out.append((i, m.SerializeToString()))
        return out

    def with_version(keys: Sequence[int]) -> list[tuple[int, int, bytes]]:
        # the SDK/raw CAS sides: expected version per call, payload encoded for expected + 1;
        # versions advance as if every call succeeds (checked after the batch)
        out = []
        for i in keys:
            m = msgs[i]
            m.version = version[i] + 1
            out.append((i, version[i], m.SerializeToString()))
            version[i] += 1
        return out

    def with_message(keys: Sequence[int]) -> list[tuple[int, int, Any]]:
        out = []
        for i in keys:
            out.append((i, version[i], msgs[i]))
            version[i] += 1
        return out

    def all_ok(results: list[Any]) -> None:
        bad = [r for r in results if not (r.ok if hasattr(r, "ok") else isinstance(r, int))]
        if bad:
            raise RuntimeError(f"{len(bad)} CAS calls did not succeed: {bad[0]!r}")

    hget, hset, execute = client.hget, client.hset, client.execute_command
    get, cas = store.get, store.cas
    keyed = lambda keys: list(keys)  # noqa: E731
    cmd_get = "CTX.GET" if engine == "module" else None

    workloads: list[tuple[str, str, list[Side]]] = []
    get_sides = [
        Side("sdk", keyed, lambda i: get(ctx_key[i])),
        Side("bare", keyed, lambda i: hget(bare_key[i], "raw")),
    ]
    cas_sides = [
        Side("sdk", with_version, lambda a: cas(ctx_key[a[0]], a[1], a[2]), all_ok),
        Side("bare", encoded, lambda a: hset(bare_key[a[0]], "raw", a[1])),
    ]
    if engine == "module":
        get_sides.append(Side("raw cmd", keyed, lambda i: execute(cmd_get, ctx_key[i])))
        cas_sides.append(Side("raw cmd", with_version,
                              lambda a: execute("CTX.CAS", ctx_key[a[0]], a[1], a[2]), all_ok))
    workloads.append(("get", "HGET", get_sides))
    workloads.append(("cas", "HSET", cas_sides))
    workloads.append(("cas(message)", "HSET", [
        Side("sdk", with_message, lambda a: cas(ctx_key[a[0]], a[1], a[2]), all_ok),
        Side("bare", encoded, lambda a: hset(bare_key[a[0]], "raw", a[1])),
    ]))

    rows = []
    rng = random.Random(seed)
    for op, bare_name, sides in workloads:
        # a short unmeasured pass so that every side has run before the clock starts
        measure(sides, nkeys, batch, batch, rng)
        s = measure(sides, nkeys, ops, batch, rng)
        row = {"engine": engine, "op": op, "bare_cmd": bare_name, "n": len(s["sdk"])}
        for label, values in s.items():
            row[label] = (pct(values, 50), pct(values, 99))
        rows.append(row)
    # consistency: the SDK side's stored versions are the ones counted
    snap = store.get(ctx_key[0])
    assert snap is not None and snap.version == version[0], (snap, version[0])
    client.close()
    return rows


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x"


def report(rows: list[dict[str, Any]]) -> list[str]:
    head = ("engine", "op", "SDK p50", "bare p50", "p50 ratio", "SDK p99", "bare p99",
            "p99 ratio", "target (p50)", "result", "raw cmd p50 / p99")
    table = [head]
    missed = []
    for r in rows:
        sdk, bare = r["sdk"], r["bare"]
        target = TARGETS.get((r["engine"], r["op"]))
        ratio = sdk[0] / bare[0]
        if target is None:
            verdict, tgt = "info", "-"
        else:
            verdict = "PASS" if ratio <= target else "FAIL"
            tgt = f"<= {target:.2f}x {r['bare_cmd']}"
            if verdict == "FAIL":
                missed.append(
                    f"{r['engine']} {r['op']}: {ratio:.3f}x {r['bare_cmd']} (target {target}x)"
                )
        raw = r.get("raw cmd")
        table.append((
            r["engine"], r["op"], f"{sdk[0]:.1f} us", f"{bare[0]:.1f} us",
            fmt_ratio(sdk[0], bare[0]),
            f"{sdk[1]:.1f} us", f"{bare[1]:.1f} us", fmt_ratio(sdk[1], bare[1]), tgt, verdict,
            f"{raw[0]:.1f} / {raw[1]:.1f} us" if raw else "-",
        ))
    widths = [max(len(str(row[k])) for row in table) for k in range(len(head))]
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) if k < 2 else str(c).rjust(w)
                               for k, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("missed targets: " + ("; ".join(missed) if missed else "none"))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--ops", type=int, default=None, help="timed calls per side (default 30000)")
    ap.add_argument("--keys", type=int, default=None, help="distinct contexts (default 20000)")
    ap.add_argument("--batch", type=int, default=250, help="calls per batch before switching side")
    ap.add_argument("--module", default=None, help="module path (default build/ctxlink.so)")
    ap.add_argument("--engines", default="module,lua", help="comma-separated: module,lua")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    ops = args.ops or (3000 if args.quick else 30000)
    nkeys = args.keys or (2000 if args.quick else 20000)
    module = Path(args.module) if args.module else find_module()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    print(f"ctxlink SDK benchmark: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"python {platform.python_version()}, redis-py {redis.__version__}, "
          f"protobuf {__import__('google.protobuf').protobuf.__version__}, {version.strip()}")
    print(f"one thread, loopback; {ops} timed calls per side and op, {nkeys} keys, batches of "
          f"{args.batch} alternating between sides; latencies per call in microseconds\n")

    rows: list[dict[str, Any]] = []
    for engine in engines:
        if engine == "module" and not module.exists():
            print(f"module {module} missing: run `make` (or --engines lua)", file=sys.stderr)
            return 2
        with EmbeddedRedis(module=module if engine == "module" else None) as server:
            t0 = time.monotonic()
            rows += bench_engine(engine, server, nkeys, ops, args.batch, args.seed)
            print(f"  {engine}: done in {time.monotonic() - t0:.1f} s")
    print()
    for line in report(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
