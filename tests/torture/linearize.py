"""Linearizability of the versioned register (one context key = one register whose writes are
compare-and-set on the version), checked on recorded histories.

A history is a list of :class:`Op`: per client, ``read`` (CTX.GET) and ``cas`` (CTX.CAS) with the
invocation and response times, the outcome (``ok``, ``conflict``, ``unknown`` when the client
timed out or lost its connection: the write may or may not have happened) and what it saw.
:func:`check` returns the violations found (empty = the history passes):

- ``chain``: an acknowledged CAS wrote a version other than expected + 1, or found a version
  current that nobody wrote (versions must form a chain 1, 2, 3 ...);
- ``duplicate-version``: two acknowledged writes produced the same version;
- ``unwritten-read``: a read (or a conflict reply) returned a version/payload pair that no write
  (acknowledged or in doubt) produced, or produced only after the read had completed;
- ``spurious-conflict``: a conflict reply whose current version is the expected one;
- ``non-monotonic``: a client saw a version older than one it had already seen or written;
- ``stale``: an operation saw a version older than one that an operation completed before it
  started had already seen or written (real-time order).

For a register whose every write increments the version by one these conditions are what
linearizability requires; the checker is linear in the history size (plus a sort).

:func:`run` records such histories against a live server through the SDK with a small client
``socket_timeout`` while a thread SIGSTOPs and SIGCONTs the server.

    python tests/torture/linearize.py --engine both --seconds 60
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torture_common as common  # noqa: E402


@dataclass
class Op:
    client: int
    kind: str                      # "read" | "cas"
    key: str
    invoke: float
    complete: Optional[float]      # None: no response (timeout, connection lost)
    outcome: str                   # "ok" | "conflict" | "unknown" | "error" (read: "ok"/"unknown")
    expected: Optional[int] = None  # cas: the expected version
    payload: Optional[bytes] = None  # cas: the payload written
    version: int = 0               # ok cas: new version; read/conflict: version seen (0 = absent)
    seen: Optional[bytes] = None   # read/conflict: the payload seen (None = absent)


def check(history: list[Op]) -> list[tuple[str, str]]:
    """Violations as (kind, description); see the module docstring."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    out: list[tuple[str, str]] = []
    for key, ops in by_key.items():
        out += _check_key(key, ops)
    return out


def _observed(op: Op) -> Optional[int]:
    """The version an operation with a response saw or produced (None: it tells nothing)."""
    if op.complete is None or op.outcome in ("unknown", "error"):
        return None
    return op.version


def _check_key(key: str, ops: list[Op]) -> list[tuple[str, str]]:
    out = []
    writes = [o for o in ops if o.kind == "cas" and o.outcome in ("ok", "unknown")]
    acked = [o for o in writes if o.outcome == "ok"]
    # versions -> possible writes (acknowledged or in doubt) of that version
    produced: dict[int, list[Op]] = defaultdict(list)
    for w in writes:
        produced[w.expected + 1].append(w)
    seen_versions: dict[int, Op] = {}
    acked_at = {w.version: w for w in acked}
    for w in acked:
        if w.version != w.expected + 1:
            out.append(("chain", f"{key}: client {w.client} CAS expected {w.expected} "
                                 f"acknowledged version {w.version}"))
        if w.version in seen_versions:
            o = seen_versions[w.version]
            out.append(("duplicate-version", f"{key}: version {w.version} acknowledged to client "
                                             f"{o.client} and client {w.client}"))
        seen_versions[w.version] = w
        if w.expected > 0 and w.expected not in produced:
            out.append(("chain", f"{key}: client {w.client} CAS found version {w.expected} "
                                 f"current, which no write produced"))
    # reads and conflict replies see only what was written, by a write invoked before they ended
    for o in ops:
        if o.complete is None or not (o.kind == "read" and o.outcome == "ok" or
                                      o.kind == "cas" and o.outcome == "conflict"):
            continue
        if o.kind == "cas" and o.version == o.expected:
            out.append(("spurious-conflict", f"{key}: client {o.client} CAS expected "
                                             f"{o.expected} got a conflict at that version"))
        if o.version == 0:
            if o.seen is not None:
                out.append(("unwritten-read", f"{key}: client {o.client} saw a payload at "
                                              f"version 0"))
            continue
        cands = [w for w in produced.get(o.version, ()) if w.payload == o.seen]
        if not cands:
            out.append(("unwritten-read", f"{key}: client {o.client} saw version {o.version} "
                                          f"with a payload no write of that version carried"))
        elif all(w.invoke > o.complete for w in cands):
            out.append(("unwritten-read", f"{key}: client {o.client} saw version {o.version} "
                                          f"before its write was sent"))
        else:
            ack = acked_at.get(o.version)
            if ack is not None and ack.payload != o.seen:
                out.append(("unwritten-read", f"{key}: client {o.client} saw version "
                                              f"{o.version} with another payload than the "
                                              f"acknowledged one"))
    # per-client monotonic reads and writes (clients are sequential: invocation order)
    per_client: dict[int, list[Op]] = defaultdict(list)
    for o in ops:
        per_client[o.client].append(o)
    for c, cops in per_client.items():
        cops.sort(key=lambda o: o.invoke)
        last = 0
        for o in cops:
            v = _observed(o)
            if v is None:
                continue
            if v < last or (o.kind == "cas" and o.outcome == "ok" and v <= last):
                out.append(("non-monotonic", f"{key}: client {c} saw version {v} after {last}"))
            last = max(last, v)
    # real-time order: an operation starting after another completed sees at least its version
    done = sorted((o for o in ops if _observed(o) is not None), key=lambda o: o.complete)
    starts = sorted((o for o in ops if _observed(o) is not None), key=lambda o: o.invoke)
    i, best, best_op = 0, 0, None
    for o in starts:
        while i < len(done) and done[i].complete < o.invoke:
            if done[i].version > best:
                best, best_op = done[i].version, done[i]
            i += 1
        v = o.version
        if v < best or (o.kind == "cas" and o.outcome == "ok" and v <= best):
            out.append(("stale", f"{key}: client {o.client} {o.kind} saw version {v} although "
                                 f"client {best_op.client} had seen {best} before it started"))
    return out


# --------------------------------------------------------------------------- recording


def run(engine: str, seconds: float, workdir: Path, clients: int = 6, keys: int = 3,
        timeout: float = 0.15, seed: int = 1) -> dict:
    import redis

    import ctxlink
    import servers as srv

    # a reply that never came: the SDK re-sends a write with its write id and raises
    # OutcomeUnknownError when that cannot settle whether it landed
    lost = (redis.TimeoutError, redis.ConnectionError, ctxlink.OutcomeUnknownError)
    rng = random.Random(seed)
    Order = common.protolib().Order
    spec = dict(module=str(srv.module_path()) if engine == "module" else None, module_args=[],
                appendonly=False, config=[], replicaof=None)
    server = srv.start_server(workdir, **spec)
    setup = ctxlink.connect(server.client(), engine=engine)
    setup.register_schema("order", Order)
    history: list[Op] = []
    hlock = threading.Lock()
    stop = threading.Event()
    pauses = [0, 0.0]
    replayed = [0]
    errors: list[str] = []

    def client(cid: int, crng: random.Random) -> None:
        store = ctxlink.connect(server.client(socket_timeout=timeout, socket_connect_timeout=1),
                                engine=engine)
        known = defaultdict(int)
        seq = 0
        mine = []
        while not stop.is_set():
            key = f"reg:{crng.randrange(keys)}"
            if crng.random() < 0.4:
                t0 = time.monotonic()
                try:
                    snap = store.get(key)
                except lost:
                    mine.append(Op(cid, "read", key, t0, None, "unknown"))
                    continue
                op = Op(cid, "read", key, t0, time.monotonic(), "ok",
                        version=snap.version if snap else 0, seen=snap.raw if snap else None)
                known[key] = op.version
                mine.append(op)
                continue
            seq += 1
            exp = known[key] if crng.random() < 0.85 else max(0, known[key] - crng.randint(0, 2))
            payload = Order(order_id=f"c{cid}-{seq}", version=exp + 1).SerializeToString()
            t0 = time.monotonic()
            try:
                res = store.cas(key, exp, payload, schema="order", by=f"c{cid}")
            except lost:
                mine.append(Op(cid, "cas", key, t0, None, "unknown", exp, payload))
                continue
            except Exception as e:  # noqa: BLE001
                errors.append(f"client {cid}: {type(e).__name__}: {e}")
                mine.append(Op(cid, "cas", key, t0, time.monotonic(), "error", exp, payload))
                continue
            t1 = time.monotonic()
            if getattr(res, "replayed", False):
                replayed[0] += 1  # a lost reply, settled by the SDK's re-send (same write id)
            if res.ok:
                mine.append(Op(cid, "cas", key, t0, t1, "ok", exp, payload, version=res.version))
                known[key] = res.version
            else:
                cur = res.current
                mine.append(Op(cid, "cas", key, t0, t1, "conflict", exp, payload,
                               version=cur.version if cur else 0, seen=cur.raw if cur else None))
                known[key] = cur.version if cur else 0
        with hlock:
            history.extend(mine)

    def pauser() -> None:
        prng = random.Random(seed + 7)
        while not stop.is_set():
            time.sleep(prng.uniform(0.05, 0.4))
            d = prng.uniform(0.05, 0.5)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(d)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            pauses[0] += 1
            pauses[1] += d

    threads = [threading.Thread(target=client, args=(c, random.Random(rng.randrange(2**32))))
               for c in range(clients)]
    threads.append(threading.Thread(target=pauser))
    t_start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    os.kill(server.proc.pid, signal.SIGCONT)
    time.sleep(0.3)  # writes sent before a timeout may still be applied: let them land
    final = ctxlink.connect(server.client(), engine=engine)
    for k in range(keys):
        t0 = time.monotonic()
        snap = final.get(f"reg:{k}")
        history.append(Op(-1, "read", f"reg:{k}", t0, time.monotonic(), "ok",
                          version=snap.version if snap else 0, seen=snap.raw if snap else None))
    alive = server.alive()
    server.stop(check=False)
    t_check = time.monotonic()
    violations = check(history)
    check_s = time.monotonic() - t_check
    return dict(
        check_s=round(check_s, 2),
        engine=engine, ops=len(history),
        acked_writes=sum(1 for o in history if o.kind == "cas" and o.outcome == "ok"),
        conflicts=sum(1 for o in history if o.outcome == "conflict"),
        unknown=sum(1 for o in history if o.outcome == "unknown"), replayed=replayed[0],
        pauses=pauses[0], paused_s=round(pauses[1], 1),
        seconds=round(time.monotonic() - t_start, 1),
        violations=violations, errors=errors, alive=alive,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=["module", "lua", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=0.15, help="client socket_timeout")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    failed = False
    for engine in (["module", "lua"] if args.engine == "both" else [args.engine]):
        workdir = Path(tempfile.mkdtemp(prefix=f"ctx-lin-{engine}-"))
        try:
            res = run(engine, args.seconds, workdir, clients=args.clients, timeout=args.timeout,
                      seed=args.seed)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"linearizability [{engine}]: {res['ops']} ops ({res['acked_writes']} acknowledged "
              f"writes, {res['conflicts']} conflicts, {res['unknown']} timed out, {res['replayed']} "
              f"settled by a re-send), "
              f"{res['pauses']} SIGSTOP pauses ({res['paused_s']} s), {res['seconds']} s, "
              f"check {res['check_s']} s, "
              f"violations: {len(res['violations'])}, errors: {len(res['errors'])}", flush=True)
        for v in res["violations"][:20] + [("error", e) for e in res["errors"][:5]]:
            print("   ", *v)
        failed |= bool(res["violations"] or res["errors"] or not res["alive"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
