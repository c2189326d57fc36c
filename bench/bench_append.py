"""Server time per append against the context's length (docs/BENCHMARKS.md, "Appends").

For each engine (the module; the Lua engine on a stock server, once it takes APPEND) and each
starting length (10, 1,000 and 10,000 elements of Order.items, about 30 bytes each), builds the
context with appends, then after CONFIG RESETSTAT sends APPENDS appends of one element each, in
5 interleaved rounds (the median round reported)
(raw CTX.PATCH ... APPEND with an id and BY, as store.append sends them; the Lua engine through
store.append) and reports the server's usec_per_call from INFO commandstats. Also: the share of
appends that a window of 16 write ids serves when K appenders interleave round-robin.

    .venv/bin/python bench/bench_append.py [--appends 2000] [--engines module,lua]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sdk"))

from google.protobuf import descriptor_pb2  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink._append import append_command  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

ORDER_PB = ROOT / "sdk" / "ctxlink" / "order.pb"
ORDER = "ctxlink.example.Order"
ITEMS = 10


def order_class() -> type:
    from google.protobuf import descriptor_pool, message_factory

    fds = descriptor_pb2.FileDescriptorSet.FromString(ORDER_PB.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(ORDER))


def element(cls: type, i: int) -> bytes:
    return bytes(cls(items=[{"sku": f"SKU-{i:08d}-ABCDEFGH", "quantity": 3}]).SerializeToString())


def usec(r, cmd: str) -> float:
    stats = r.info("commandstats").get(f"cmdstat_{cmd}")
    return float(stats["usec_per_call"]) if stats else float("nan")


def run(engine: str, appends: int, cls: type, rounds: int = 5) -> list[tuple[int, float, int]]:
    """One context per length, built first; then ``rounds`` rounds, each sending ``appends``
    appends to every context in turn (interleaved, so a burst of load on the shared machine
    hits every length alike), usec_per_call read per round; the median round is reported."""
    import statistics

    sizes = (10, 1000, 10000)
    module = find_module() if engine == "module" else None
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        store = ctxlink.connect(server.client())
        store.register_schema("order", cls)
        versions = {}
        for n in sizes:
            key = f"o:{n}"
            store.cas(key, 0, cls(order_id="o-1"), schema="order")
            for i in range(0, n, 100):  # build up: 100 elements per append
                els = [{"sku": f"SKU-{j:08d}-ABCDEFGH", "quantity": 3}
                       for j in range(i, min(n, i + 100))]
                store.append(key, "items", [cls(items=[e]).items[0] for e in els],
                             message_class=cls)
            versions[n] = store.get(key).version
        cmd = "ctx.patch" if engine == "module" else "evalsha"
        per: dict[int, list[float]] = {n: [] for n in sizes}
        for rnd in range(rounds):
            for n in sizes:
                key = f"o:{n}"
                r.config_resetstat()
                for i in range(appends):
                    if engine == "module":
                        reply = r.execute_command(*append_command(
                            key, versions[n], element(cls, i), (), (ITEMS,), (), None,
                            "agent-1", f"w-{rnd}-{i}"))
                        versions[n] = int(reply)
                    else:
                        store.append(key, "items", [cls(items=[{"sku": f"x{i}"}]).items[0]],
                                     message_class=cls, by="agent-1")
                per[n].append(usec(r, cmd))
        return [(n, statistics.median(per[n]), r.strlen(f"o:{n}")) for n in sizes]


def window_measure(cls: type, appenders: int, per: int = 300) -> tuple[float, float, int]:
    """K threads append concurrently (module, raw CTX.PATCH ... APPEND with ids), each basing
    an append on the version its own previous reply returned. For every append, the lag L =
    version before it - its base. Had its reply been lost, a re-send after D more writes is
    settled (replayed, or refused unapplied as ``rebase`` and sent again) when L + D <= 15;
    we take D = K - 1 (every other appender writes once before the re-send). Returns the share
    of appends so covered, the share refused as ``rebase`` on the first send (the SDK re-sends
    them at once), and the largest lag seen."""
    import threading

    with EmbeddedRedis(module=find_module()) as server:
        store = ctxlink.connect(server.client())
        store.register_schema("order", cls)
        store.cas("o:1", 0, cls(order_id="o-1"), schema="order")
        lags: list[int] = []
        rebases = [0]
        lock = threading.Lock()

        def run(t: int) -> None:
            r = server.client()
            base = 1
            for i in range(per):
                args = append_command("o:1", base, element(cls, i), (), (ITEMS,), (), None,
                                      f"agent-{t}", f"w-{t}-{i}")
                reply = r.execute_command(*args)
                if isinstance(reply, list):
                    with lock:
                        rebases[0] += 1
                while isinstance(reply, list):  # rebase: not applied, sent again at once
                    base = int(reply[1])
                    reply = r.execute_command(*append_command(
                        "o:1", base, element(cls, i), (), (ITEMS,), (), None, f"agent-{t}",
                        f"w-{t}-{i}"))
                v = int(reply)
                with lock:
                    lags.append(v - 1 - base)
                base = v

        ts = [threading.Thread(target=run, args=(t,)) for t in range(appenders)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ok = sum(1 for lag in lags if lag + appenders - 1 <= 15)
        return ok / len(lags), rebases[0] / (appenders * per), max(lags)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--engines", default="module")
    args = ap.parse_args()
    cls = order_class()
    for engine in args.engines.split(","):
        rows = run(engine, args.appends, cls)
        base = rows[0][1]
        print(f"\n{engine}: usec_per_call of one append (median of 5 rounds of {args.appends})")
        print("| elements | usec/append | x of 10 | value bytes |")
        print("|---:|---:|---:|---:|")
        for n, us, size in rows:
            print(f"| {n:,} | {us:.2f} | {us / base:.2f} | {size:,} |")
    print("\nconcurrent appenders and the 16-record window (module, 300 appends each):")
    print("| appenders | lost replies settled | first sends refused (rebase) | largest lag |")
    print("|---:|---:|---:|---:|")
    for k in (1, 2, 4, 8, 12, 16):
        share, rebased, lag = window_measure(cls, k)
        print(f"| {k} | {100 * share:.1f}% | {100 * rebased:.1f}% | {lag} |")


if __name__ == "__main__":
    main()
