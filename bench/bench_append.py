"""Server time per append against the context's length (docs/BENCHMARKS.md, "Appends").

For each engine (the module; the Lua engine on a stock server, once it takes APPEND) and each
starting length (10, 1,000 and 10,000 elements of Order.items, about 30 bytes each), builds the
context with appends, then after CONFIG RESETSTAT sends APPENDS appends of one element each, in
5 interleaved rounds (the median round reported)
(raw CTX.PATCH ... APPEND with an id and BY, as store.append sends them; the Lua engine through
store.append) and reports the server's usec_per_call from INFO commandstats. Also: the share of
appends that a window of W write ids (the schema's WINDOW, 16 by default) serves when K appenders
interleave, and (--window-cost) the cost per write and the bytes per context with a full window.

    .venv/bin/python bench/bench_append.py [--appends 2000] [--engines module,lua]
    .venv/bin/python bench/bench_append.py --appenders-only --window 64 --window-engines module,lua
    .venv/bin/python bench/bench_append.py --window-cost --window-engines module,lua
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


def send_append(engine: str, store: ctxlink.Store, base: int, el: bytes, by: str,
                wid: str) -> object:
    """One send of an append with an id (no retry): raw CTX.PATCH ... APPEND on the module, the
    SDK's one cas.lua call of it on the Lua engine. The reply: the new version, or
    [b"rebase", version]."""
    if engine == "module":
        return store.client.execute_command(*append_command(
            "o:1", base, el, (), (ITEMS,), (), None, by, wid))
    from ctxlink._lua import _write_lua
    from ctxlink._sync import _run

    return _run(store.client, _write_lua(store._st, "o:1", base, el, None, by, wid, (), (),
                                         None, None, (ITEMS,)))


def window_measure(cls: type, appenders: int, per: int = 300, window: int = 16,
                   engine: str = "module") -> tuple[float, float, int]:
    """K threads append concurrently (raw appends with ids, :func:`send_append`), each basing
    an append on the version its own previous reply returned, to a schema with WINDOW
    ``window``. For every append, the lag L = version before it - its base. Had its reply been
    lost, a re-send after D more writes is settled (replayed, or refused unapplied as
    ``rebase`` and sent again) when L + D <= window - 1; we take D = K - 1 (every other
    appender writes once before the re-send). Returns the share of appends so covered, the
    share refused as ``rebase`` on the first send (the SDK re-sends them at once), and the
    largest lag seen."""
    import threading

    with EmbeddedRedis(module=find_module() if engine == "module" else None) as server:
        store = ctxlink.connect(server.client(), engine=engine)
        store.register_schema("order", cls, window=window)
        store.cas("o:1", 0, cls(order_id="o-1"), schema="order")
        lags: list[int] = []
        rebases = [0]
        lock = threading.Lock()

        def run(t: int) -> None:
            mine = ctxlink.connect(server.client(), engine=engine)
            base = 1
            for i in range(per):
                reply = send_append(engine, mine, base, element(cls, i), f"agent-{t}",
                                    f"w-{t}-{i}")
                if isinstance(reply, list):
                    with lock:
                        rebases[0] += 1
                while isinstance(reply, list):  # rebase: not applied, sent again at once
                    base = int(reply[1])
                    reply = send_append(engine, mine, base, element(cls, i), f"agent-{t}",
                                        f"w-{t}-{i}")
                v = int(reply)  # type: ignore[call-overload]
                with lock:
                    lags.append(v - 1 - base)
                base = v

        ts = [threading.Thread(target=run, args=(t,)) for t in range(appenders)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ok = sum(1 for lag in lags if lag + appenders - 1 <= window - 1)
        return ok / len(lags), rebases[0] / (appenders * per), max(lags)


def window_cost(cls: type, engine: str, window: int, writes: int, rounds: int = 5
                ) -> tuple[float, float, int, int]:
    """The cost of a full window: one context of schema WINDOW ``window`` written window + 10
    times (the window full), then ``rounds`` rounds of ``writes`` whole-context writes with ids
    (CTX.CAS / cas.lua) and of ``writes`` one-element appends; the median round's server
    usec_per_call of each, the value's bytes (STRLEN) and MEMORY USAGE of the key."""
    import statistics

    module = find_module() if engine == "module" else None
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        store = ctxlink.connect(server.client(), engine=engine)
        store.register_schema("order", cls, window=window)
        payload = cls(order_id="o-1", items=[{"sku": "SKU-00000001-ABCDEFGH", "quantity": 3}])
        v = 0
        for _ in range(window + 10):
            payload.version = v + 1
            v = store.cas("o:1", v, payload, schema="order").version
        cas_us: list[float] = []
        app_us: list[float] = []
        cas_cmd = "ctx.cas" if engine == "module" else "evalsha"
        app_cmd = "ctx.patch" if engine == "module" else "evalsha"
        for rnd in range(rounds):
            r.config_resetstat()
            for i in range(writes):
                payload.version = v + 1
                v = store.cas("o:1", v, payload, write_id=f"c-{rnd}-{i}").version
            cas_us.append(usec(r, cas_cmd))
            r.config_resetstat()
            for i in range(writes):
                reply = send_append(engine, store, v, element(cls, i), "agent-1",
                                    f"a-{rnd}-{i}")
                v = int(reply)  # type: ignore[call-overload]
            app_us.append(usec(r, app_cmd))
            # back to one element, so the rounds measure the same value
            payload.version = v + 1
            v = store.cas("o:1", v, payload).version
        return (statistics.median(cas_us), statistics.median(app_us), int(r.strlen("o:1")),
                int(r.memory_usage("o:1")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--engines", default="module")
    ap.add_argument("--window", type=int, default=16,
                    help="the schema's WINDOW for the appenders part (default 16)")
    ap.add_argument("--window-engines", default="module",
                    help="engines of the appenders / window-cost parts (module,lua)")
    ap.add_argument("--appenders", default="1,2,4,8,12,16")
    ap.add_argument("--appenders-only", action="store_true",
                    help="only the concurrent-appenders part")
    ap.add_argument("--window-cost", action="store_true",
                    help="only the cost per write and bytes per context of a full window "
                    "(windows 16, 64, 255)")
    args = ap.parse_args()
    cls = order_class()
    if args.window_cost:
        print("per-write cost with a full window (median of 5 rounds of "
              f"{args.appends} writes each)")
        print("| engine | WINDOW | usec/cas | usec/append | value bytes | MEMORY USAGE |")
        print("|---|---:|---:|---:|---:|---:|")
        for engine in args.window_engines.split(","):
            for w in (16, 64, 255):
                c, a, size, mem = window_cost(cls, engine, w, args.appends)
                print(f"| {engine} | {w} | {c:.2f} | {a:.2f} | {size:,} | {mem:,} |")
        return
    for engine in ([] if args.appenders_only else args.engines.split(",")):
        rows = run(engine, args.appends, cls)
        base = rows[0][1]
        print(f"\n{engine}: usec_per_call of one append (median of 5 rounds of {args.appends})")
        print("| elements | usec/append | x of 10 | value bytes |")
        print("|---:|---:|---:|---:|")
        for n, us, size in rows:
            print(f"| {n:,} | {us:.2f} | {us / base:.2f} | {size:,} |")
    for engine in args.window_engines.split(","):
        print(f"\nconcurrent appenders and the {args.window}-record window ({engine}, 300 appends "
              "each):")
        print("| appenders | lost replies settled | first sends refused (rebase) | largest lag |")
        print("|---:|---:|---:|---:|")
        for k in (int(x) for x in args.appenders.split(",")):
            share, rebased, lag = window_measure(cls, k, window=args.window, engine=engine)
            print(f"| {k} | {100 * share:.1f}% | {100 * rebased:.1f}% | {lag} |")


if __name__ == "__main__":
    main()
