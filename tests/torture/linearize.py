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

Field patches (protocol 2) get their own workload and checker: :func:`run_patches` has clients
increment counter fields of shared contexts with ``Store.update(..., reads=...)`` (``CTX.PATCH``):
each its own field with ``reads=[]`` (disjoint fields: the server merges them), some also a
``shared`` field with ``reads=["shared"]``. :func:`check_patches` takes the history of
:class:`PatchOp` and the final state of every key and reports:

- ``lost-increment``: a field's final value is below its number of acknowledged increments, or
  below a value an acknowledged increment or a read reported;
- ``doubled-increment``: a field's final value exceeds its acknowledged increments plus its
  in-doubt ones (``OutcomeUnknownError``; a transport error out of ``update`` counts as not
  applied: the SDK raises one only when no write of that call reached the server);
- ``duplicate-value``: two acknowledged increments of one field reported the same value (one
  increment acknowledged twice: the other is lost);
- ``duplicate-version``: two acknowledged updates of one key reported the same version;
- ``inconsistent-read``: a read at version v disagrees with the acknowledged update that wrote
  v, or with another read of v, or its counters do not add up to v - 1; the final version is
  below one acknowledged or seen;
- ``version-count``: the final version is not 1 + the sum of the final counters (every key
  starts at version 1 with all counters 0, and every write adds one to one counter);
- ``non-monotonic``: a client saw a key's version, or a field's value, go back (its own
  acknowledged updates must strictly increase both);
- ``stale``: an operation saw a version or a field value older than one an operation completed
  before it started had seen or written (real-time order).

The same clients also delete and recreate keys of their own (``Store.delete``, ``Store.cas``
with expected 0); :func:`check_lifecycle` reports ``lifecycle`` when a read saw a state that
neither the last acknowledged create/delete nor an in-doubt one left.

Both workloads run with history on (the schemas are registered with ``history=16`` unless
``--history 0``): after the run every key's history must agree with its value
(``torture_common.history_problems``; a disagreement is reported as an error).

    python tests/torture/linearize.py --engine both --seconds 60 [--workload register|patch|both]
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
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torture_common as common  # noqa: E402

HISTORY = 16  # the schemas' history setting (entries per context); small, so MAXLEN trims


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


def _pauser(pid: int, stop: threading.Event, seed: int, pauses: list) -> None:
    """SIGSTOP the server for 50 to 500 ms every 50 to 400 ms until ``stop``."""
    prng = random.Random(seed + 7)
    while not stop.is_set():
        time.sleep(prng.uniform(0.05, 0.4))
        d = prng.uniform(0.05, 0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(d)
        finally:
            os.kill(pid, signal.SIGCONT)
        pauses[0] += 1
        pauses[1] += d


def _drive(server: Any, client: Any, clients: int, rng: random.Random, stop: threading.Event,
           seed: int, pauses: list, seconds: float, join_timeout: float) -> float:
    """Runs ``client(cid, rng)`` in ``clients`` threads next to the pauser for ``seconds``, then
    stops them, resumes the server and lets writes sent before a timeout land. Returns the
    start time (monotonic)."""
    threads = [threading.Thread(target=client, args=(c, random.Random(rng.randrange(2**32))))
               for c in range(clients)]
    threads.append(threading.Thread(target=_pauser, args=(server.proc.pid, stop, seed, pauses)))
    t_start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(join_timeout)
    os.kill(server.proc.pid, signal.SIGCONT)
    time.sleep(0.3)  # writes sent before a timeout may still be applied: let them land
    return t_start


def run(engine: str, seconds: float, workdir: Path, clients: int = 6, keys: int = 3,
        timeout: float = 0.15, seed: int = 1, history: int = HISTORY) -> dict:
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
    setup.register_schema("order", Order, **({"history": history} if history else {}))
    hist_n = history
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

    t_start = _drive(server, client, clients, rng, stop, seed, pauses, seconds, 30)
    final = ctxlink.connect(server.client(), engine=engine)
    for k in range(keys):
        t0 = time.monotonic()
        snap = final.get(f"reg:{k}")
        history.append(Op(-1, "read", f"reg:{k}", t0, time.monotonic(), "ok",
                          version=snap.version if snap else 0, seen=snap.raw if snap else None))
    if hist_n:  # history and value agree at the end
        for k in range(keys):
            errors += [f"history: {p}" for p in common.history_problems(final, f"reg:{k}",
                                                                          hist_n)]
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


# --------------------------------------------------------------------------- field patches


@dataclass
class PatchOp:
    client: int
    kind: str                      # "inc" | "read"
    key: str
    invoke: float
    complete: Optional[float]      # None: no response
    outcome: str                   # inc: "ok" | "unknown" (may have landed) | "failed" (did not)
    field: str = ""                # inc: the field incremented
    value: int = 0                 # ok inc: the field's value in the state it wrote
    version: int = 0               # ok inc: the version it wrote; read: the version seen
    values: Optional[dict[str, int]] = None  # ok read: every counter field seen


#: final state per key: (version, {field: value})
Final = dict[str, tuple[int, dict[str, int]]]


def check_patches(history: list[PatchOp], final: Final) -> list[tuple[str, str]]:
    """Violations as (kind, description) of a field-patch counter history; see the module
    docstring. ``final`` is every key's state read after the run (every write has landed)."""
    by_key: dict[str, list[PatchOp]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    out: list[tuple[str, str]] = []
    for key in sorted(set(by_key) | set(final)):
        out += _check_patch_key(key, by_key.get(key, []), final.get(key, (0, {})))
    return out


def _realtime(items: list[tuple[float, float, int, bool, int]], what: str
              ) -> list[tuple[str, str]]:
    """``stale`` violations of (invoke, complete, n, wrote, client) observations of one growing
    number: an observation starting after another completed sees at least its n (more if it
    wrote n itself)."""
    out = []
    done = sorted(items, key=lambda t: t[1])
    i, best, best_client = 0, 0, -1
    for inv, _, n, wrote, c in sorted(items, key=lambda t: t[0]):
        while i < len(done) and done[i][1] < inv:
            if done[i][2] > best:
                best, best_client = done[i][2], done[i][4]
            i += 1
        if n < best or (wrote and n <= best):
            out.append(("stale", f"{what}: client {c} {'wrote' if wrote else 'saw'} {n} although "
                                 f"client {best_client} had seen {best} before it started"))
    return out


def _check_patch_key(key: str, ops: list[PatchOp], final: tuple[int, dict[str, int]]
                     ) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    fversion, fvalues = final
    incs = [o for o in ops if o.kind == "inc"]
    acked = [o for o in incs if o.outcome == "ok"]
    reads = [o for o in ops if o.kind == "read" and o.outcome == "ok" and o.complete is not None]
    fields = {o.field for o in incs} | set(fvalues)
    for r in reads:
        fields |= set(r.values or {})
    # exactly once: acknowledged <= final <= acknowledged + in doubt, one value per increment
    for f in sorted(fields):
        fin = fvalues.get(f, 0)
        ack = [o for o in acked if o.field == f]
        doubt = sum(1 for o in incs if o.field == f and o.outcome == "unknown")
        if fin < len(ack):
            out.append(("lost-increment", f"{key}.{f}: final value {fin} < {len(ack)} "
                                          f"acknowledged increments"))
        if fin > len(ack) + doubt:
            out.append(("doubled-increment", f"{key}.{f}: final value {fin} > {len(ack)} "
                                             f"acknowledged + {doubt} in-doubt increments"))
        by_value: dict[int, PatchOp] = {}
        for o in ack:
            if o.value in by_value:
                out.append(("duplicate-value", f"{key}.{f}: value {o.value} acknowledged to "
                                               f"client {by_value[o.value].client} and client "
                                               f"{o.client}"))
            by_value[o.value] = o
            if o.value > fin:
                out.append(("lost-increment", f"{key}.{f}: client {o.client} acknowledged "
                                              f"value {o.value}, final value {fin}"))
        for r in reads:
            if (r.values or {}).get(f, 0) > fin:
                out.append(("lost-increment", f"{key}.{f}: client {r.client} read "
                                              f"{r.values[f]}, final value {fin}"))
    # versions: one per acknowledged write, consistent reads, none beyond the final one
    at_version: dict[int, PatchOp] = {}
    for o in acked:
        if o.version in at_version:
            out.append(("duplicate-version", f"{key}: version {o.version} acknowledged to client "
                                             f"{at_version[o.version].client} and client "
                                             f"{o.client}"))
        at_version[o.version] = o
    read_at: dict[int, PatchOp] = {}
    for r in reads:
        vals = r.values or {}
        w = at_version.get(r.version)
        if w is not None and vals.get(w.field, 0) != w.value:
            out.append(("inconsistent-read", f"{key}: client {r.client} read {w.field}="
                                             f"{vals.get(w.field, 0)} at version {r.version}, "
                                             f"whose update wrote {w.value}"))
        if r.version and r.version - 1 != sum(vals.values()):
            out.append(("inconsistent-read", f"{key}: client {r.client} read version "
                                             f"{r.version} with {sum(vals.values())} increments"))
        o = read_at.setdefault(r.version, r)
        if o is not r and o.values != r.values:
            out.append(("inconsistent-read", f"{key}: clients {o.client} and {r.client} read "
                                             f"different states at version {r.version}"))
    # every write adds one to one counter, from version 1 with all counters 0
    if fversion and fversion - 1 != sum(fvalues.values()):
        out.append(("version-count", f"{key}: final version {fversion} after "
                                     f"{sum(fvalues.values())} increments from version 1"))
    top = max([o.version for o in acked] + [r.version for r in reads] + [0])
    if fversion < top:
        out.append(("inconsistent-read", f"{key}: final version {fversion} < {top} "
                                         f"acknowledged or seen"))
    # per client (sequential: invocation order) and real time: versions and values only grow
    known = [o for o in acked + reads if o.complete is not None]
    per_client: dict[int, list[PatchOp]] = defaultdict(list)
    for o in known:
        per_client[o.client].append(o)
    for c, cops in per_client.items():
        cops.sort(key=lambda o: o.invoke)
        last_v, last_f = 0, defaultdict(int)
        for o in cops:
            wrote = o.kind == "inc"
            if o.version < last_v or (wrote and o.version <= last_v):
                out.append(("non-monotonic", f"{key}: client {c} saw version {o.version} after "
                                             f"{last_v}"))
            last_v = max(last_v, o.version)
            for f, n in ({o.field: o.value} if wrote else (o.values or {})).items():
                if n < last_f[f] or (wrote and n <= last_f[f]):
                    out.append(("non-monotonic", f"{key}.{f}: client {c} saw {n} after "
                                                 f"{last_f[f]}"))
                last_f[f] = max(last_f[f], n)
    out += _realtime([(o.invoke, o.complete, o.version, o.kind == "inc", o.client)
                      for o in known], f"{key} version")
    for f in sorted(fields):
        obs = [(o.invoke, o.complete, o.value, True, o.client) for o in known
               if o.kind == "inc" and o.field == f]
        obs += [(o.invoke, o.complete, (o.values or {}).get(f, 0), False, o.client)
                for o in known if o.kind == "read"]
        out += _realtime(obs, f"{key}.{f}")
    return out


@dataclass
class LifeOp:
    """Delete and recreate of a key only one client writes (``Store.cas`` with expected 0,
    ``Store.delete``). ``tag``: create, the tag it wrote; read or conflict reply, the tag seen
    (None: absent)."""

    client: int
    kind: str                      # "create" | "delete" | "read"
    key: str
    invoke: float
    outcome: str                   # "ok" | "conflict" | "unknown" | "failed"
    tag: Optional[int] = None
    version: int = 0               # ok create: the version it wrote (must be 1)


def check_lifecycle(history: list[LifeOp]) -> list[tuple[str, str]]:
    """``lifecycle`` violations on single-writer keys: a read (or a conflict reply) must see
    what the last acknowledged create/delete left, or what one of the writer's earlier in-doubt
    ones would leave (it may land late); an acknowledged create writes version 1."""
    by_key: dict[str, list[LifeOp]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    out = []
    for key, ops in by_key.items():
        ops.sort(key=lambda o: o.invoke)
        state: Optional[int] = None   # the tag the writer's acknowledged writes left
        maybe: set[Optional[int]] = set()   # what in-doubt writes may leave
        for o in ops:
            if o.kind == "create" and o.outcome == "ok":
                state = o.tag
                if o.version != 1:
                    out.append(("lifecycle", f"{key}: create acknowledged version {o.version}"))
            elif o.kind == "delete" and o.outcome == "ok":
                state = None
            elif o.outcome == "unknown":
                maybe.add(o.tag if o.kind == "create" else None)
            elif o.kind == "read" or o.outcome == "conflict":
                if o.tag != state and o.tag not in maybe:
                    out.append(("lifecycle", f"{key}: client {o.client} saw "
                                             f"{'nothing' if o.tag is None else o.tag} where "
                                             f"{'nothing' if state is None else state} was left"))
                state = o.tag
    return out


def counters_class(fields: int) -> type:
    """A proto3 message ``torture.Counters``: ``version`` (1), ``shared`` (2), ``c0`` ... (10+)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="torture_counters.proto", package="torture",
                                           syntax="proto3")
    m = f.message_type.add(name="Counters")
    m.field.add(name="version", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    m.field.add(name="shared", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    for i in range(fields):
        m.field.add(name=f"c{i}", number=10 + i, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("torture.Counters"))


def run_patches(engine: str, seconds: float, workdir: Path, clients: int = 6, keys: int = 2,
                shared_clients: int = 3, timeout: float = 0.15, update_timeout: float = 5.0,
                life: float = 0.05, seed: int = 1, history: int = HISTORY) -> dict:
    """Field-patch counters under SIGSTOP pauses: client c increments ``c<c>`` of a random key
    (``reads=[]``); clients below ``shared_clients`` also increment ``shared``
    (``reads=["shared"]``); 20 % of the operations are reads. A fraction ``life`` of the
    operations delete or recreate the client's own key ``life:<c>`` (checked by
    :func:`check_lifecycle`; the created payload's ``shared`` field holds a tag). 30 % of the updates get a
    ``timeout`` of 0.05 to 0.3 s (shorter than most pauses: their re-sends run out and raise
    OutcomeUnknownError, and the write may land after SIGCONT), the rest ``update_timeout``."""
    import redis

    import ctxlink
    import servers as srv
    from ctxlink._send import WriteNotSent

    rng = random.Random(seed)
    Counters = counters_class(clients)
    names = ["shared"] + [f"c{i}" for i in range(clients)]
    spec = dict(module=str(srv.module_path()) if engine == "module" else None, module_args=[],
                appendonly=False, config=[], replicaof=None)
    server = srv.start_server(workdir, **spec)
    setup = ctxlink.connect(server.client(), engine=engine)
    setup.register_schema("counters", Counters, **({"history": history} if history else {}))
    hist_n = history  # the name history is the recorded operations' below
    key_names = [f"ctr:{k}" for k in range(keys)]
    for k in key_names:
        assert setup.cas(k, 0, Counters(version=1).SerializeToString(), schema="counters").ok
    history: list[PatchOp] = []
    lives: list[LifeOp] = []   # list.append is atomic
    hlock = threading.Lock()
    stop = threading.Event()
    pauses = [0, 0.0]
    stats = defaultdict(int)
    errors: list[str] = []

    def values_of(raw: bytes) -> dict[str, int]:
        m = Counters.FromString(raw)
        return {n: getattr(m, n) for n in names if getattr(m, n)}

    def client(cid: int, crng: random.Random) -> None:
        store = ctxlink.connect(server.client(socket_timeout=timeout, socket_connect_timeout=1),
                                engine=engine)
        mine: list[PatchOp] = []
        own = f"c{cid}"
        life_key, tag, life_version = f"life:{cid}", 0, 0
        while not stop.is_set():
            key = crng.choice(key_names)
            r = crng.random()
            t0 = time.monotonic()
            if r < life:
                # delete / recreate of this client's own key: create when it last saw it absent
                tag += 1
                kind = "create" if life_version == 0 else "delete"
                try:
                    if kind == "create":
                        res = store.cas(life_key, 0, Counters(version=1, shared=tag)
                                        .SerializeToString(), schema="counters")
                    else:
                        res = store.delete(life_key, life_version)
                except ctxlink.OutcomeUnknownError:
                    stats["life_unknown"] += 1
                    lives.append(LifeOp(cid, kind, life_key, t0, "unknown", tag))
                    life_version = -1  # read it before the next create/delete
                    continue
                except (redis.TimeoutError, redis.ConnectionError):  # nothing reached it
                    lives.append(LifeOp(cid, kind, life_key, t0, "failed", tag))
                    continue
                if res.ok:
                    stats["life_" + kind] += 1
                    lives.append(LifeOp(cid, kind, life_key, t0, "ok", tag, res.version))
                    life_version = res.version if kind == "create" else 0
                else:
                    cur = res.current
                    lives.append(LifeOp(cid, kind, life_key, t0, "conflict",
                                        Counters.FromString(cur.raw).shared if cur else None))
                    life_version = cur.version if cur else 0
                continue
            if life_version < 0:
                try:
                    snap = store.get(life_key)
                except (redis.TimeoutError, redis.ConnectionError):
                    continue
                lives.append(LifeOp(cid, "read", life_key, t0, "ok",
                                    Counters.FromString(snap.raw).shared if snap else None))
                life_version = snap.version if snap else 0
                continue
            if r < 0.2:
                try:
                    snap = store.get(key)
                except (redis.TimeoutError, redis.ConnectionError):
                    continue
                mine.append(PatchOp(cid, "read", key, t0, time.monotonic(), "ok",
                                    version=snap.version if snap else 0,
                                    values=values_of(snap.raw) if snap else {}))
                continue
            field = "shared" if cid < shared_clients and r < 0.55 else own

            def bump(m, field=field) -> None:
                setattr(m, field, getattr(m, field) + 1)

            try:
                up = store.update(key, bump, message_class=Counters, schema="counters",
                                  by=f"c{cid}", reads=["shared"] if field == "shared" else [],
                                  timeout=update_timeout if crng.random() < 0.7
                                  else crng.uniform(0.05, 0.3))
            except ctxlink.OutcomeUnknownError:
                stats["unknown"] += 1
                mine.append(PatchOp(cid, "inc", key, t0, None, "unknown", field))
                continue
            except WriteNotSent:  # nothing went out: not applied
                stats["not_sent"] += 1
                mine.append(PatchOp(cid, "inc", key, t0, time.monotonic(), "failed", field))
                continue
            except (redis.TimeoutError, redis.ConnectionError):
                # the SDK's contract: a transport error (not OutcomeUnknownError) out of update
                # means no write of it reached the server (a GET failed, or nothing was sent);
                # recorded as not applied, so the checker holds the SDK to it
                stats["transport"] += 1
                mine.append(PatchOp(cid, "inc", key, t0, time.monotonic(), "failed", field))
                continue
            except ctxlink.ConflictError:  # gave up: none of its attempts landed
                stats["gave_up"] += 1
                mine.append(PatchOp(cid, "inc", key, t0, time.monotonic(), "failed", field))
                continue
            except Exception as e:  # noqa: BLE001
                errors.append(f"client {cid}: {type(e).__name__}: {e}")
                mine.append(PatchOp(cid, "inc", key, t0, None, "unknown", field))
                continue
            stats["attempts"] += up.attempts
            mine.append(PatchOp(cid, "inc", key, t0, time.monotonic(), "ok", field,
                                value=getattr(up.message, field), version=up.version))
        with hlock:
            history.extend(mine)

    t_start = _drive(server, client, clients, rng, stop, seed, pauses, seconds,
                     update_timeout + 30)
    final_store = ctxlink.connect(server.client(), engine=engine)
    final: Final = {}
    for k in key_names:
        snap = final_store.get(k)
        final[k] = (snap.version, values_of(snap.raw)) if snap else (0, {})
    for c in range(clients):  # the final state of the delete/recreate keys
        snap = final_store.get(f"life:{c}")
        lives.append(LifeOp(c, "read", f"life:{c}", time.monotonic(), "ok",
                            Counters.FromString(snap.raw).shared if snap else None))
    if hist_n:  # history and value agree at the end, the delete/recreate keys included
        for k in key_names + [f"life:{c}" for c in range(clients)]:
            errors += [f"history: {p}" for p in common.history_problems(final_store, k, hist_n)]
    alive = server.alive()
    server.stop(check=False)
    t_check = time.monotonic()
    violations = check_patches(history, final) + check_lifecycle(lives)
    check_s = time.monotonic() - t_check
    incs = [o for o in history if o.kind == "inc"]
    return dict(
        check_s=round(check_s, 2), engine=engine, ops=len(history),
        acked=sum(1 for o in incs if o.outcome == "ok"),
        acked_shared=sum(1 for o in incs if o.outcome == "ok" and o.field == "shared"),
        reads=sum(1 for o in history if o.kind == "read"),
        unknown=stats["unknown"], transport=stats["transport"], not_sent=stats["not_sent"],
        gave_up=stats["gave_up"], attempts=stats["attempts"],
        landed_in_doubt=sum(sum(v.values()) for _, v in final.values())
        - sum(1 for o in incs if o.outcome == "ok"),
        final={k: v[0] for k, v in final.items()},
        creates=stats["life_create"], deletes=stats["life_delete"],
        life_unknown=stats["life_unknown"],
        pauses=pauses[0], paused_s=round(pauses[1], 1),
        seconds=round(time.monotonic() - t_start, 1),
        violations=violations, errors=errors, alive=alive,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=["module", "lua", "both"], default="both")
    ap.add_argument("--workload", choices=["register", "patch", "both"], default="both",
                    help="register: get/cas; patch: field-patch counters (update with reads=)")
    ap.add_argument("--seconds", type=float, default=60, help="per engine and workload")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=0.15, help="client socket_timeout")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--history", type=int, default=HISTORY,
                    help="the schemas' history setting; 0: off (default %(default)s)")
    args = ap.parse_args()
    failed = False
    workloads = ["register", "patch"] if args.workload == "both" else [args.workload]
    for engine in (["module", "lua"] if args.engine == "both" else [args.engine]):
        for workload in workloads:
            workdir = Path(tempfile.mkdtemp(prefix=f"ctx-lin-{engine}-"))
            try:
                fn = run if workload == "register" else run_patches
                res = fn(engine, args.seconds, workdir, clients=args.clients,
                         timeout=args.timeout, seed=args.seed, history=args.history)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            if workload == "register":
                print(f"linearizability [{engine}]: {res['ops']} ops ({res['acked_writes']} "
                      f"acknowledged writes, {res['conflicts']} conflicts, {res['unknown']} timed "
                      f"out, {res['replayed']} settled by a re-send), "
                      f"{res['pauses']} SIGSTOP pauses ({res['paused_s']} s), {res['seconds']} s, "
                      f"check {res['check_s']} s, "
                      f"violations: {len(res['violations'])}, errors: {len(res['errors'])}",
                      flush=True)
            else:
                print(f"field patches [{engine}]: {res['ops']} ops ({res['acked']} acknowledged "
                      f"increments, {res['acked_shared']} of them of the shared field, "
                      f"{res['attempts']} attempts, {res['reads']} reads, {res['unknown']} "
                      f"OutcomeUnknownError, {res['transport']} transport errors, "
                      f"{res['not_sent']} not sent, {res['gave_up']} gave up; "
                      f"{res['landed_in_doubt']} in-doubt increments landed; {res['creates']} creates "
                      f"and {res['deletes']} deletes acknowledged, {res['life_unknown']} in "
                      f"doubt), final versions "
                      f"{res['final']}, {res['pauses']} SIGSTOP pauses ({res['paused_s']} s), "
                      f"{res['seconds']} s, check {res['check_s']} s, "
                      f"violations: {len(res['violations'])}, errors: {len(res['errors'])}",
                      flush=True)
            for v in res["violations"][:20] + [("error", e) for e in res["errors"][:5]]:
                print("   ", *v)
            failed |= bool(res["violations"] or res["errors"] or not res["alive"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
