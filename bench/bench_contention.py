#!/usr/bin/env python3
"""Contention: successful ``store.update`` calls per second vs the number of writers on ONE context.

Writers are threads of this process, each with its own redis-py client and ``ctxlink.Store``,
all updating the same key for a fixed time. Scenarios (one line each in the plot, per engine):

- ``same/whole``: every writer increments the same field with ``reads=None`` (whole-context
  ``CTX.CAS``: any other write is a conflict);
- ``same/patch``: every writer increments the same field with ``reads=[]`` (``CTX.PATCH`` of that
  field: a write of that field by another writer is a conflict);
- ``disjoint/patch``: writer ``k`` increments its own field ``f<k>`` with ``reads=[]`` (patches of
  different fields never conflict; the server merges them).

The schema is ``bench.Counters``: ``int64 version = 1`` and sixteen ``int64 f1 .. f16`` (built with
``descriptor_pb2``). Both engines: the module (``redis-server --loadmodule build/ctxlink.so``) and a
stock ``redis-server`` with the Lua scripts, each a throwaway ``EmbeddedRedis``.

Per point: updates/s (completed updates / wall time), conflicts per update (``attempts - 1``),
p50/p99/max latency of one ``update`` call (aim: max < 1 s), failures (exceptions) and lost updates
(the final counters must equal the number of updates each writer completed). The plot goes to
``docs/img/contention.png`` (matplotlib, Agg backend).

    .venv/bin/python bench/bench_contention.py [--seconds 2] [--writers 1,2,4,8,16]
        [--engines module,lua] [--plot docs/img/contention.png] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sdk"))

import redis  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

NFIELDS = 16
SCHEMA = "counters"
SCENARIOS = ("same/whole", "same/patch", "disjoint/patch")
MAX_LATENCY_AIM_S = 1.0


def counters_class() -> Any:
    """``bench.Counters``: int64 version = 1; int64 f1 .. f16 = 2 .. 17."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_counters.proto", package="bench",
                                             syntax="proto3")
    msg = fdp.message_type.add(name="Counters")
    int64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    msg.field.add(name="version", number=1, type=int64, label=optional)
    for k in range(1, NFIELDS + 1):
        msg.field.add(name=f"f{k}", number=k + 1, type=int64, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Counters"))


@dataclass
class Point:
    engine: str
    scenario: str
    writers: int
    seconds: float = 0.0
    updates: int = 0
    conflicts: int = 0
    failures: int = 0
    lost_updates: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    slowest: tuple[float, int, int] = (0.0, 0, 0)  # (ms, attempts, index of the call in its thread)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        v = sorted(self.latencies_ms)
        if not v:
            return float("nan")
        return v[min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))]

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "scenario": self.scenario, "writers": self.writers,
            "seconds": round(self.seconds, 3), "updates": self.updates,
            "updates_per_s": round(self.rate, 1),
            "conflicts_per_update": round(self.conflicts / self.updates, 3) if self.updates else None,
            "p50_ms": round(self.pct(50), 3), "p99_ms": round(self.pct(99), 3),
            "max_ms": round(max(self.latencies_ms), 3) if self.latencies_ms else None,
            "slowest_attempts": self.slowest[1], "slowest_call_index": self.slowest[2],
            "failures": self.failures, "lost_updates": self.lost_updates,
            "errors": self.errors[:3],
        }


def run_point(server: EmbeddedRedis, engine: str, Counters: Any, scenario: str, writers: int,
              seconds: float, backoff: Optional[ctxlink.Backoff] = None) -> Point:
    point = Point(engine, scenario, writers)
    key = f"cnt:{engine}:{scenario}:{writers}"
    clients = [redis.Redis(host="127.0.0.1", port=server.port) for _ in range(writers + 1)]
    setup = ctxlink.connect(clients[-1], engine=engine)
    assert setup.cas(key, 0, Counters(version=1), schema=SCHEMA).ok
    reads: Optional[list[str]] = None if scenario == "same/whole" else []

    stores = [ctxlink.connect(c, engine=engine) for c in clients[:writers]]
    for s in stores:  # connections opened and the key's schema known before the clock starts
        s.get(key)
    done = [0] * writers
    lat: list[list[float]] = [[] for _ in range(writers)]
    conflicts = [0] * writers
    slowest = [(0.0, 0, 0)] * writers
    failures = [0] * writers
    errors: list[str] = []
    barrier = threading.Barrier(writers + 1)

    def writer(w: int) -> None:
        store = stores[w]
        name = "f1" if scenario.startswith("same") else f"f{w + 1}"

        def bump(m: Any) -> None:
            setattr(m, name, getattr(m, name) + 1)

        mine = lat[w]
        clock = time.perf_counter
        barrier.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = clock()
            try:
                u = store.update(key, bump, message_class=Counters, reads=reads, backoff=backoff)
            except Exception as e:  # noqa: BLE001 - counted and reported
                failures[w] += 1
                if len(errors) < 3:
                    errors.append(repr(e)[:200])
                continue
            ms = (clock() - t0) * 1000.0
            mine.append(ms)
            if ms > slowest[w][0]:
                slowest[w] = (ms, u.attempts, done[w])
            done[w] += 1
            conflicts[w] += u.attempts - 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    point.seconds = time.monotonic() - t0
    point.updates = sum(done)
    point.conflicts = sum(conflicts)
    point.failures = sum(failures)
    point.errors = errors
    point.slowest = max(slowest)
    for v in lat:
        point.latencies_ms.extend(v)

    # no update may be lost: the counters hold exactly the completed updates
    snap = setup.get(key)
    assert snap is not None
    final = Counters.FromString(snap.raw)
    if scenario.startswith("same"):
        point.lost_updates = point.updates - final.f1
    else:
        point.lost_updates = sum(done[w] - getattr(final, f"f{w + 1}") for w in range(writers))
    if snap.version != 1 + point.updates:
        point.errors.append(f"version {snap.version}, expected {1 + point.updates}")
    for c in clients:
        c.close()
    return point


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"module": "-", "lua": "--"}
    markers = {"same/whole": "o", "same/patch": "s", "disjoint/patch": "^"}
    colors = {"same/whole": "tab:red", "same/patch": "tab:orange", "disjoint/patch": "tab:green"}
    for engine in sorted({p.engine for p in points}, key=lambda e: e != "module"):
        for sc in SCENARIOS:
            ps = sorted((p for p in points if p.engine == engine and p.scenario == sc),
                        key=lambda p: p.writers)
            if not ps:
                continue
            xs = [p.writers for p in ps]
            label = f"{sc} ({engine})"
            kw = dict(linestyle=styles.get(engine, "-"), marker=markers[sc], color=colors[sc],
                      label=label)
            ax1.plot(xs, [p.rate for p in ps], **kw)
            ax2.plot(xs, [p.pct(99) for p in ps], **kw)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("writers on one context (threads, one client each)")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("successful updates / s")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("p99 latency of one update (ms)")
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(points: list[Point]) -> list[str]:
    head = ("engine", "scenario", "writers", "updates/s", "conflicts/update", "p50 ms",
            "p99 ms", "max ms", "slowest: attempts (call #)", "failures", "lost")
    rows = [head]
    for p in points:
        s = p.summary()
        rows.append((p.engine, p.scenario, str(p.writers), f"{p.rate:,.0f}",
                     "-" if s["conflicts_per_update"] is None else f"{s['conflicts_per_update']:.2f}",
                     f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                     "-" if s["max_ms"] is None else f"{s['max_ms']:.1f}",
                     f"{p.slowest[1]} (#{p.slowest[2]})",
                     str(p.failures), str(p.lost_updates)))
    widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if k < 2 else c.rjust(w)
                             for k, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="seconds per point (default 2)")
    ap.add_argument("--writers", default="1,2,4,8,16", help="writer counts (default 1,2,4,8,16)")
    ap.add_argument("--engines", default="module,lua", help="comma-separated: module,lua")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--module", default=None, help="module path (default build/ctxlink.so)")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "contention.png"),
                    help="PNG to write (default docs/img/contention.png); '' for none")
    ap.add_argument("--json", type=Path, default=None, help="also write the points as JSON")
    ap.add_argument("--backoff", default=None, metavar="BASE,CAP",
                    help="update(backoff=Backoff(BASE, CAP)) in seconds (default: the SDK's)")
    ap.add_argument("--quick", action="store_true", help="0.3 s per point, writers 1,4,16, no plot")
    args = ap.parse_args(argv)
    seconds = args.seconds or (0.3 if args.quick else 2.0)
    spec = "1,4,16" if args.quick and args.writers == "1,2,4,8,16" else args.writers
    writers = [int(x) for x in spec.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in scenarios) or max(writers) > NFIELDS or min(writers) < 1:
        ap.error(f"scenarios are {', '.join(SCENARIOS)}; writers from 1 to {NFIELDS}")
    module = Path(args.module) if args.module else find_module()
    Counters = counters_class()
    backoff = (ctxlink.Backoff(*(float(x) for x in args.backoff.split(",")))
               if args.backoff else None)

    server_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                    text=True).stdout.strip()
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"ctxlink contention benchmark: {when}, git {git or '?'}")
    print(f"nproc={nproc}, python {platform.python_version()}, redis-py {redis.__version__}, "
          f"{server_version}")
    print(f"{seconds:g} s per point; writers {writers}; scenarios {scenarios}; engines {engines}; "
          f"update(): {backoff or 'default Backoff(base=0.001, cap=0.05)'}, timeout 30 s (the default)\n",
          flush=True)

    points: list[Point] = []
    t_all = time.monotonic()
    for engine in engines:
        if engine == "module" and not module.exists():
            print(f"module {module} missing: run `make` (or --engines lua)", file=sys.stderr)
            return 2
        with EmbeddedRedis(module=module if engine == "module" else None,
                           new_session=True) as server:
            admin = ctxlink.connect(redis.Redis(host="127.0.0.1", port=server.port),
                                    engine=engine)
            admin.register_schema(SCHEMA, Counters)
            # load the scripts / warm every path once
            admin.cas("warm", 0, Counters(version=1), schema=SCHEMA)
            admin.update("warm", lambda m: setattr(m, "f1", 1), message_class=Counters, reads=[])
            admin.update("warm", lambda m: setattr(m, "f2", 1), message_class=Counters)
            for sc in scenarios:
                for n in writers:
                    p = run_point(server, engine, Counters, sc, n, seconds, backoff)
                    points.append(p)
                    s = p.summary()
                    print(f"  {engine:<6} {sc:<14} {n:>2} writers: {p.rate:8,.0f} updates/s  "
                          f"conflicts/update {s['conflicts_per_update']}  p50 {s['p50_ms']:.2f} "
                          f"p99 {s['p99_ms']:.2f} max {s['max_ms']} ms  failures {p.failures}  "
                          f"lost {p.lost_updates}  slowest: {p.slowest[1]} attempts, call "
                          f"#{p.slowest[2]} of its writer"
                          + (f"  !! {p.errors}" if p.errors else ""),
                          flush=True)
    print(f"\nall points in {time.monotonic() - t_all:.0f} s\n")
    for line in table(points):
        print(line)
    misses = [p for p in points if p.latencies_ms and max(p.latencies_ms) >= 1000 * MAX_LATENCY_AIM_S]
    bad = [p for p in points if p.lost_updates or p.failures or p.errors]
    print()
    print("max latency >= 1 s (aim: < 1 s): " + (", ".join(
        f"{p.engine} {p.scenario} x{p.writers} ({max(p.latencies_ms):.0f} ms)" for p in misses)
        or "none"))
    print("failures, lost updates or version errors: " + (", ".join(
        f"{p.engine} {p.scenario} x{p.writers}" for p in bad) or "none"))
    if args.plot and not args.quick:
        plot(points, Path(args.plot), f"ctxlink: update() on one context, {seconds:g} s per point, "
             f"{nproc} CPUs, {when}, git {git or '?'}")
        print(f"plot written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"date": when, "git": git, "nproc": nproc,
                                         "seconds": seconds,
                                         "points": [p.summary() for p in points]}, indent=2) + "\n")
        print(f"points written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
