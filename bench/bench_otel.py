"""Cost of the SDK's OpenTelemetry instrumentation (ctxlink/_telemetry.py) on ``cas`` and ``get``.

One Python thread, one connection, loopback, a throwaway redis-server with the module (the module
engine: the one with a fast path to lose). Sides, measured in alternating batches over the same
keys:

- ``off``: opentelemetry-api installed, no provider configured (what every user of the extra
  gets until they configure one: the module engine's fast path);
- ``on``: an SDK TracerProvider (SimpleSpanProcessor into an InMemorySpanExporter, emptied after
  each batch) and MeterProvider (InMemoryMetricReader) set as the global providers: every call
  makes its span and records its metrics.

p50 / p90 per call (``perf_counter_ns`` around the call only).

    .venv/bin/python bench/bench_otel.py [--ops N] [--batch N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sdk"))

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.util._once import Once  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink.demo import Order  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402


def unset_providers() -> None:
    """Back to no provider (the API sets each global provider once per process)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER = None  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=20000, help="calls per side and operation")
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def side(on: bool) -> None:
        unset_providers()
        if on:
            trace.set_tracer_provider(tp)
            metrics.set_meter_provider(mp)

    with EmbeddedRedis(module=find_module()) as server:
        store = ctxlink.connect(server.client())
        store.register_schema("order", Order)
        keys = [f"o:{i}" for i in range(args.batch)]
        version = {k: 0 for k in keys}
        payload = {k: Order(order_id=k, base_price=12_500) for k in keys}
        raw: dict[tuple[str, int], bytes] = {}

        def cas_batch() -> list[int]:
            out = []
            for k in keys:
                v = version[k]
                p = raw.get((k, v))
                if p is None:
                    msg = payload[k]
                    msg.version = v + 1
                    p = raw[(k, v)] = msg.SerializeToString()
                t = time.perf_counter_ns()
                res = store.cas(k, v, p, schema="order" if v == 0 else None)
                out.append(time.perf_counter_ns() - t)
                assert res.ok, res
                version[k] = v + 1
                raw.pop((k, v), None)
            return out

        def get_batch() -> list[int]:
            out = []
            for k in keys:
                t = time.perf_counter_ns()
                store.get(k)
                out.append(time.perf_counter_ns() - t)
            return out

        cas_batch()  # create every key (and warm up) outside the measurement
        results: dict[tuple[str, bool], list[int]] = {}
        batches: list[tuple[str, Callable[[], list[int]]]] = [("cas", cas_batch),
                                                              ("get", get_batch)]
        for i in range(max(1, args.ops // args.batch)):
            for name, batch in batches:
                for on in ((False, True) if i % 2 == 0 else (True, False)):
                    side(on)
                    results.setdefault((name, on), []).extend(batch())
                    spans.clear()
        unset_providers()
        store.close()

    def us(values: list[int], q: int) -> float:
        return statistics.quantiles(values, n=10)[q - 1] / 1000 if q != 5 else \
            statistics.median(values) / 1000

    print("| op | provider | p50 | p90 | p50 ratio |")
    print("|---|---|---:|---:|---:|")
    for name, _ in batches:
        off = results[(name, False)]
        on = results[(name, True)]
        for label, vals in (("none (fast path)", off), ("SDK, spans + metrics", on)):
            print(f"| `{name}` | {label} | {us(vals, 5):.1f} us | {us(vals, 9):.1f} us | "
                  f"{statistics.median(vals) / statistics.median(off):.2f}x |")
    print(f"\n{len(next(iter(results.values())))} calls per side and operation; "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
