"""Crash loop: kill -9 a redis-server every ~250 ms while 8 SDK writers update their own keys
and shared hot keys, restart it on the same AOF and check that nothing acknowledged was lost.

Server: appendonly yes, appendfsync always, a tiny auto-aof-rewrite-min-size (so rewrites run,
and get killed, all the time). Engines: ``module`` (redis-server --loadmodule build/ctxlink.so)
and ``lua`` (stock server, the SDK's Lua scripts).

Every writer counts its acknowledged writes:
- ``own:<w>`` (written by writer w only, ``Store.cas``): the version and item ``w<w>``'s quantity
  are the number of acknowledged writes;
- ``hot:<h>`` (all writers, ``Store.update``): item ``w<w>`` holds writer w's count of
  acknowledged increments; the version is at least the highest acknowledged version.

After each restart: the server must start (every AOF loads), and for each writer the stored
count must be >= its acknowledged count (0 acknowledged writes lost) and <= acknowledged + 1 (a
writer has at most one write in flight when the server dies: it may or may not have landed).
The next cycle starts from the stored counts.

History is on (the schema is registered with ``history=16`` unless ``--history 0``): after each
restart, every key's history and value must agree (``torture_common.history_problems``: the
stream's last entry is the context's version, incarnation, updated_ms and writer, nothing beyond
it, contiguous versions, MAXLEN entries).

    python tests/torture/crash_loop.py --engine module --cycles 200
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torture_common as common  # noqa: E402

import redis  # noqa: E402

import ctxlink  # noqa: E402
import servers as srv  # noqa: E402

WRITERS = 8
HOT_KEYS = 2
# update() re-sends a write whose reply was lost until its timeout (30 s by default): after a
# kill -9 that is a dead port, so keep it short. Running out of time on conflicts or re-sends
# (ConflictError, OutcomeUnknownError) ends the writer's cycle with its write in doubt.
UPDATE_TIMEOUT = 0.5
HISTORY = 16  # the schema's history setting (entries per context); small, so MAXLEN trims


def aof_config(min_size: str) -> list[tuple]:
    return [("appendfsync", "always"), ("auto-aof-rewrite-percentage", 25),
            ("auto-aof-rewrite-min-size", min_size), ("aof-load-truncated", "yes")]


def kill9(server: srv.Server) -> None:
    server.proc.kill()
    server.proc.wait()
    server.stopped = True
    srv._live_processes.discard(server.proc)
    if server._client is not None:
        server._client.connection_pool.disconnect()


class Counts:
    """Acknowledged writes, per writer: own key count, hot key counts; highest acked versions."""

    def __init__(self) -> None:
        self.own = [0] * WRITERS
        self.hot = [[0] * HOT_KEYS for _ in range(WRITERS)]
        self.hot_version = [0] * HOT_KEYS
        self.lock = threading.Lock()


def item_count(order, writer: int) -> int:
    for it in order.items:
        if it.sku == f"w{writer}":
            return it.quantity
    return 0


class Writer(threading.Thread):
    def __init__(self, w: int, store, Order, counts: Counts, stop: threading.Event, seed: int):
        super().__init__(daemon=True)
        self.w, self.store, self.Order, self.counts, self.stop = w, store, Order, counts, stop
        self.rng = random.Random(seed)
        self.acked = 0
        self.failure: str | None = None

    def run(self) -> None:
        w, c = self.w, self.counts
        try:
            while not self.stop.is_set():
                if self.rng.random() < 0.5:
                    n = c.own[w]
                    payload = self.Order(order_id=f"own:{w}", version=n + 1)
                    payload.items.add(sku=f"w{w}", quantity=n + 1)
                    res = self.store.cas(f"own:{w}", n, payload.SerializeToString(),
                                         schema="order", by=f"w{w}")
                    if not res.ok:
                        self.failure = f"own:{w}: conflict at {n} (only writer {w} writes it)"
                        return
                    c.own[w] = n + 1
                else:
                    h = self.rng.randrange(HOT_KEYS)

                    def bump(o, w=w):
                        for it in o.items:
                            if it.sku == f"w{w}":
                                it.quantity += 1
                                return
                        o.items.add(sku=f"w{w}", quantity=1)

                    up = self.store.update(f"hot:{h}", bump, message_class=self.Order,
                                           schema="order", by=f"w{w}", timeout=UPDATE_TIMEOUT,
                                           default=lambda h=h: self.Order(order_id=f"hot:{h}"))
                    expect = c.hot[w][h] + 1
                    got = item_count(up.message, w)
                    if got != expect:
                        self.failure = (f"hot:{h}: writer {w} wrote count {got}, expected "
                                        f"{expect} (an acknowledged increment went missing)")
                        return
                    c.hot[w][h] = expect
                    with c.lock:
                        c.hot_version[h] = max(c.hot_version[h], up.version)
                self.acked += 1
        except (redis.ConnectionError, redis.TimeoutError, OSError, ctxlink.OutcomeUnknownError,
                ctxlink.ConflictError):
            return  # the server was killed: the write in flight may or may not have landed
        except redis.ResponseError as e:
            if "LOADING" in str(e):
                return
            self.failure = f"writer {w}: {srv.error_text(e)}"
        except Exception as e:  # noqa: BLE001 - reported as a failure
            self.failure = f"writer {w}: {type(e).__name__}: {e}"


def check_and_resync(server: srv.Server, engine: str, Order, counts: Counts,
                     cycle: int, history: int = 0) -> list[str]:
    store = ctxlink.connect(server.client(socket_timeout=10), engine=engine)
    problems = []
    for w in range(WRITERS):
        snap = store.get(f"own:{w}")
        stored = snap.version if snap else 0
        if snap is not None and item_count(snap.decode(Order), w) != stored:
            problems.append(f"cycle {cycle}: own:{w} payload count != version {stored}")
        acked = counts.own[w]
        if not acked <= stored <= acked + 1:
            problems.append(f"cycle {cycle}: own:{w} stored version {stored}, acknowledged {acked}")
        counts.own[w] = stored
    extra = [0] * WRITERS
    for h in range(HOT_KEYS):
        snap = store.get(f"hot:{h}")
        version = snap.version if snap else 0
        if version < counts.hot_version[h]:
            problems.append(f"cycle {cycle}: hot:{h} version {version} < acknowledged "
                            f"{counts.hot_version[h]}")
        order = snap.decode(Order) if snap else Order()
        for w in range(WRITERS):
            stored, acked = item_count(order, w), counts.hot[w][h]
            if stored < acked:
                problems.append(f"cycle {cycle}: hot:{h} writer {w}: stored {stored} < "
                                f"acknowledged {acked} (LOST)")
            extra[w] += max(0, stored - acked)
            counts.hot[w][h] = stored
        counts.hot_version[h] = version
    if history:
        for key in [f"own:{w}" for w in range(WRITERS)] + [f"hot:{h}" for h in range(HOT_KEYS)]:
            problems += [f"cycle {cycle}: history: {p}"
                         for p in common.history_problems(store, key, history)]
    for w in range(WRITERS):
        if extra[w] > 1:
            problems.append(f"cycle {cycle}: writer {w}: {extra[w]} unacknowledged increments "
                            f"landed (at most 1 can be in flight)")
    store.client.close()
    return problems


def run(engine: str, cycles: int, interval: float, workdir: Path, min_size: str = "16kb",
        seed: int = 1, verbose: bool = False, appendonly: bool = True,
        history: int = HISTORY) -> dict:
    """Runs the loop; ``appendonly=False`` (no persistence at all) is the checker's self-test:
    it must report lost writes. ``history``: the schema's history setting (0: off); when on,
    every restart also checks that history and value agree."""
    rng = random.Random(seed)
    pb = common.protolib()
    Order = pb.Order
    spec = dict(module=str(srv.module_path()) if engine == "module" else None, module_args=[],
                appendonly=appendonly, config=aof_config(min_size), replicaof=None)
    server = srv.start_server(workdir, **spec)
    setup = ctxlink.connect(server.client(), engine=engine)
    if history:
        setup.register_schema("order", Order, history=history)
    else:
        setup.register_schema("order", Order)
    setup.client.close()
    counts = Counts()
    problems: list[str] = []
    acked_total, t0, restart_s = 0, time.monotonic(), []
    for cycle in range(1, cycles + 1):
        stop = threading.Event()
        store = ctxlink.connect(server.client(socket_timeout=10), engine=engine)
        writers = [Writer(w, store, Order, counts, stop, rng.randrange(2**32))
                   for w in range(WRITERS)]
        for t in writers:
            t.start()
        time.sleep(interval * rng.uniform(0.6, 1.4))
        kill9(server)
        stop.set()
        for t in writers:
            t.join(30)
        store.client.connection_pool.disconnect()
        acked_total += sum(t.acked for t in writers)
        problems += [f"cycle {cycle}: {t.failure}" for t in writers if t.failure]
        t1 = time.monotonic()
        try:
            server = srv.start_server(workdir, **spec)
        except srv.ServerStartError as e:
            problems.append(f"cycle {cycle}: the server did not start on its AOF: {e}")
            break
        restart_s.append(time.monotonic() - t1)
        problems += check_and_resync(server, engine, Order, counts, cycle, history)
        if verbose and cycle % 20 == 0:
            print(f"  [{engine}] cycle {cycle}: {acked_total} acknowledged writes so far",
                  flush=True)
        if problems:
            break
    server.stop(check=False)
    logs = "\n".join(p.read_text(errors="replace") for p in workdir.glob("redis-*.log"))
    return dict(
        engine=engine, cycles=cycle, acked_writes=acked_total, history=history,
        aof_rewrites=logs.count("Background AOF rewrite finished successfully"),
        truncated_loads=logs.count("AOF loaded anyway because aof-load-truncated"),
        max_restart_s=round(max(restart_s, default=0), 3),
        seconds=round(time.monotonic() - t0, 1), problems=problems,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=["module", "lua", "both"], default="both")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--history", type=int, default=HISTORY,
                    help="the schema's history setting; 0: off (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the server directories")
    args = ap.parse_args()
    engines = ["module", "lua"] if args.engine == "both" else [args.engine]
    failed = False
    for engine in engines:
        workdir = Path(tempfile.mkdtemp(prefix=f"ctx-crash-{engine}-"))
        res = run(engine, args.cycles, args.interval, workdir, seed=args.seed, verbose=True,
                  history=args.history)
        print(f"crash loop [{engine}]: {res['cycles']} kill -9 cycles, {res['acked_writes']} "
              f"acknowledged writes, {res['aof_rewrites']} AOF rewrites completed, "
              f"{res['truncated_loads']} truncated-tail loads, max restart "
              f"{res['max_restart_s']} s, history {res['history']}, {res['seconds']} s, "
              f"problems: {len(res['problems'])}")
        for p in res["problems"][:20]:
            print("   ", p)
        failed |= bool(res["problems"])
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
