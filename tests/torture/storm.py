"""Payload storm: hostile schemas and hundreds of thousands of random and mutated payloads
against a module server (schemas and payloads, raw CTX.CAS pipelined) and the Lua engine
(payloads, through the shipped SDK: ``ctxlink.connect(engine="lua")``, one call after another).

Checked throughout:
- every reply is a success, a conflict or an error whose code is documented (ERR, WRONGTYPE,
  CTXSCHEMA, CTXINVALID, CTXVERSION, CTXTOOBIG);
- every rejected write leaves the stored state byte-identical: ``DEBUG DIGEST`` around each
  rejected schema; after every CTX.CAS the context's ``DUMP`` (for a hash: its fields and
  values, sorted, see SNAPSHOT_LUA) compared with the one before;
- the server answers PING throughout (a separate connection pings every 20 ms; the worst
  latency is reported);
- RSS stays bounded (sampled after every batch; growth over the run is reported and checked).

    python tests/torture/storm.py --payloads 200000 --lua-payloads 100000
"""

from __future__ import annotations

import argparse
import random
import shutil
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture_common import SCHEMAS, fill, hostile_schemas, protolib  # noqa: E402

import redis  # noqa: E402

import ctxlink  # noqa: E402
import servers as srv  # noqa: E402
from backends import LuaBackend, ModuleBackend  # noqa: E402
from helpers import CODES, ProtoLib  # noqa: E402
from test_fuzz import mutate, random_order  # noqa: E402
from wire import f_varint  # noqa: E402

MAX_SCHEMA_BYTES = 262144
MAX_PAYLOAD_BYTES = 65536
RSS_GROWTH_LIMIT = 256 << 20
SUITE = ["order", "kitchen", "node", "ed", "strict"]


class Pinger(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.c = srv.make_client(port, socket_timeout=30)
        self.stop = threading.Event()
        self.count, self.worst, self.failures = 0, 0.0, []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.c.ping()
            except redis.RedisError as e:
                self.failures.append(repr(e))
            self.worst = max(self.worst, time.monotonic() - t0)
            self.count += 1
            time.sleep(0.02)


# The stored state of a key, comparable byte for byte: DUMP, except for a hash, whose DUMP lists
# the fields in dict order (which an incremental rehash step during a mere lookup can change):
# its fields and values sorted instead.
SNAPSHOT_LUA = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return redis.call('DUMP', KEYS[1]) end
local h = redis.call('HGETALL', KEYS[1])
local pairs_ = {}
for i = 1, #h, 2 do pairs_[#pairs_ + 1] = {h[i], h[i + 1]} end
table.sort(pairs_, function(a, b) return a[1] < b[1] end)
local out = {}
for _, p in ipairs(pairs_) do out[#out + 1] = p[1]; out[#out + 1] = p[2] end
return out
"""


def code_ok(exc: BaseException) -> bool:
    return srv.error_code(exc) in CODES


class Storm:
    def __init__(self, engine: str, workdir: Path, seed: int):
        self.engine = engine
        self.rng = random.Random(seed)
        limits = {"max-payload-bytes": MAX_PAYLOAD_BYTES, "max-schema-bytes": MAX_SCHEMA_BYTES}
        args = [x for k, v in limits.items() for x in (k, v)]
        self.server = srv.start_server(
            workdir, module=str(srv.module_path()) if engine == "module" else None,
            module_args=args if engine == "module" else [], appendonly=False, config=[],
            replicaof=None)
        self.server.ctx_limits = limits
        self.r = self.server.client(socket_timeout=120)
        self.b = (ModuleBackend if engine == "module" else LuaBackend)(self.server, self.r)
        self.snap_sha = self.r.script_load(SNAPSHOT_LUA)
        self.problems: list[str] = []
        self.replies = {"ok": 0, "conflict": 0}
        self.samples: dict[str, str] = {}  # code -> first error text seen
        self.rss: list[int] = []
        self.pinger = Pinger(self.server.port)

    def sample_rss(self) -> None:
        self.rss.append(int(self.r.info("memory")["used_memory_rss"]))

    # ---- schemas
    def schema_storm(self, mutations: int) -> list[tuple[str, str, bytes]]:
        """Registers the hostile schemas and ``mutations`` bit-mangled descriptor sets; returns the
        accepted (label, type, fds)."""
        pb = protolib()
        cases = hostile_schemas(MAX_SCHEMA_BYTES)
        for name in SUITE:
            proto, full, _ = SCHEMAS[name]
            cases.append((name, full, pb.fds(proto)))
        accepted = []
        for i, (label, full, fds) in enumerate(cases):
            name = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"s{i}-{label}")
            if self._schema_set(name, full, fds):
                accepted.append((label, full, fds, name))
        sources = [c for c in cases if len(c[2]) < 20000] or cases
        for k in range(mutations):
            label, full, fds = self.rng.choice(sources)
            bad = fds
            for _ in range(self.rng.randint(1, 4)):
                bad = mutate(self.rng, bad, self.rng.choice(sources)[2])
            self._schema_set(f"m{k % 50}", full, bad)
        self.accepted_labels = [a[0] for a in accepted]
        return accepted

    def _schema_set(self, name: str, full: str, fds: bytes) -> bool:
        before = self.r.execute_command("DEBUG", "DIGEST")
        try:
            self.b.schema_set(name, full, fds, force=True)
            self.replies["ok"] += 1
            return True
        except redis.ResponseError as e:
            if not code_ok(e):
                self.problems.append(f"schema {name}: undocumented error {srv.error_text(e)!r}")
            after = self.r.execute_command("DEBUG", "DIGEST")
            if after != before:
                self.problems.append(f"schema {name}: rejected ({srv.error_code(e)}) but the "
                                     f"dataset changed")
            self.replies[srv.error_code(e)] = self.replies.get(srv.error_code(e), 0) + 1
            return False

    # ---- payloads
    def payload_storm(self, targets: list[tuple[str, str, bytes, str]], total: int,
                      pool: int = 250) -> None:
        """``pool`` contexts per schema, each batch sends one payload to every context of one
        schema (so a success on one does not turn the rest of the batch into conflicts). Most
        payloads end with the version field set to the context's version + 1 (the last
        occurrence of a scalar field wins), so mutations get past the version check."""
        schemas = []
        for label, full, fds, name in targets:
            cls = ProtoLib.classes_from_fds(fds, full)
            vnum = cls.DESCRIPTOR.fields_by_name["version"].number
            msgs = []
            for _ in range(24):
                m = cls()
                fill(m, self.rng, version=1)
                msgs.append(m)
            keys = [f"ctx:{name}:{i}" for i in range(pool)]
            first = msgs[0].SerializeToString()
            got = self._writes([(k, 0, first, {"schema": name}) for k in keys])
            if got != [1] * pool:
                self.problems.append(f"{label}: cannot create the contexts: {got[:2]!r}")
                continue
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.execute_command("EVALSHA", self.snap_sha, 1, k)
            dumps = dict(zip(keys, pipe.execute()))
            schemas.append((label, msgs, vnum, keys, {k: 1 for k in keys}, dumps))
        if not schemas:
            return
        order_pb = protolib()
        sent = 0
        self.sample_rss()
        while sent < total and len(self.problems) <= 20:
            label, msgs, vnum, keys, versions, dumps = self.rng.choice(schemas)
            bases = [m.SerializeToString() for m in self.rng.sample(msgs, 8)]
            if label == "order":
                bases += [random_order(order_pb, self.rng, 1) for _ in range(4)]
            n = min(len(keys), total - sent)
            sent_payloads, calls = [], []
            for k in keys[:n]:
                p = self._payload(bases)
                if self.rng.random() < 0.75:
                    p += f_varint(vnum, versions[k] + 1)
                exp = versions[k] if self.rng.random() < 0.95 else self.rng.choice(
                    [0, versions[k] + 1, 2**63 - 1])
                sent_payloads.append(p)
                calls.append((k, exp, p, {}))
            replies = self._writes(calls)
            pipe = self.r.pipeline(transaction=False)
            for k in keys[:n]:  # each key is written once per batch: its state after the write
                pipe.execute_command("EVALSHA", self.snap_sha, 1, k)
            snapshots = pipe.execute()
            for i, k in enumerate(keys[:n]):
                reply, dump = replies[i], snapshots[i]
                prev = dumps[k]
                if isinstance(reply, int):
                    self.replies["ok"] += 1
                    versions[k] = reply
                    if dump == prev:
                        self.problems.append(f"{k}: CTX.CAS succeeded but the stored state is unchanged")
                elif isinstance(reply, list):
                    self.replies["conflict"] += 1
                    if dump != prev:
                        self.problems.append(f"{k}: conflict reply but the context changed")
                elif isinstance(reply, redis.ResponseError):
                    code = srv.error_code(reply)
                    self.replies[code] = self.replies.get(code, 0) + 1
                    self.samples.setdefault(code, srv.error_text(reply)[:120])
                    if code not in CODES:
                        self.problems.append(f"{k}: undocumented error {srv.error_text(reply)!r}")
                    if dump != prev:
                        self.problems.append(f"{k}: rejected ({code}) but the context changed: "
                                             f"payload {sent_payloads[i][:64].hex()}")
                elif isinstance(reply, ctxlink.ArgumentError):  # the SDK, before sending
                    self.replies["ArgumentError"] = self.replies.get("ArgumentError", 0) + 1
                    if dump != prev:
                        self.problems.append(f"{k}: refused by the SDK but the context changed")
                else:
                    self.problems.append(f"{k}: unexpected reply {reply!r}")
                dumps[k] = dump
            sent += n
            self.sample_rss()
        self.sent = sent

    def _writes(self, calls: list) -> list:
        """``cas(key, expected, payload, **kw)`` for each call: one pipeline of raw CTX.CAS on the
        module, the SDK's Store.cas one after another on the Lua engine. Each reply, or its
        error (an error reply, or the SDK's ArgumentError for an argument it refuses)."""
        if self.engine == "module":
            pipe = self.r.pipeline(transaction=False)
            for key, expected, payload, kw in calls:
                pipe.execute_command(*self.b.cas_args(key, expected, payload, **kw))
            return pipe.execute(raise_on_error=False)
        out: list = []
        for key, expected, payload, kw in calls:
            try:
                out.append(self.b.cas(key, expected, payload, **kw))
            except (redis.ResponseError, ctxlink.ArgumentError) as exc:
                out.append(exc)
        return out

    def _payload(self, bases: list[bytes]) -> bytes:
        rng = self.rng
        x = rng.random()
        if x < 0.05:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 256)))
        if x < 0.06:  # over max-payload-bytes
            return rng.choice(bases) * (MAX_PAYLOAD_BYTES // max(1, len(bases[0])) + 2)
        data = rng.choice(bases)
        if x < 0.15:
            return data
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            data = mutate(rng, data, rng.choice(bases))
        return data


def run(engine: str, payloads: int, schema_mutations: int, workdir: Path, seed: int = 1) -> dict:
    t0 = time.monotonic()
    st = Storm(engine, workdir, seed)
    st.pinger.start()
    try:
        st.sample_rss()
        if engine == "module":
            targets = st.schema_storm(schema_mutations)
        else:
            pb = protolib()
            targets = []
            for name in ("order", "kitchen", "node", "ed"):
                proto, full, _ = SCHEMAS[name]
                st.b.schema_set(name, full, pb.fds(proto))
                targets.append((name, full, pb.fds(proto), name))
        t_schemas = time.monotonic() - t0
        st.sent = 0
        st.payload_storm(targets, payloads)
        alive = st.server.alive()
    finally:
        st.pinger.stop.set()
        st.pinger.join(60)
    rss0, rss_max = st.rss[0], max(st.rss)
    if rss_max - rss0 > RSS_GROWTH_LIMIT:
        st.problems.append(f"RSS grew by {(rss_max - rss0) >> 20} MiB")
    if st.pinger.failures:
        st.problems.append(f"PING failed {len(st.pinger.failures)} times: "
                           f"{st.pinger.failures[:3]}")
    if not alive:
        st.problems.append("server not answering PING at the end")
    crash = st.server.crash_report()
    st.server.stop(check=False)
    if crash:
        st.problems.append(crash)
    return dict(
        engine=engine, payloads=st.sent, replies=st.replies,
        accepted_schemas=getattr(st, "accepted_labels", []),
        rss_start_mib=round(rss0 / 2**20, 1), rss_max_mib=round(rss_max / 2**20, 1),
        pings=st.pinger.count, worst_ping_s=round(st.pinger.worst, 3),
        schema_seconds=round(t_schemas, 1), seconds=round(time.monotonic() - t0, 1),
        samples=st.samples, problems=st.problems,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--payloads", type=int, default=200_000, help="module engine")
    ap.add_argument("--lua-payloads", type=int, default=100_000)
    ap.add_argument("--schema-mutations", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    failed = False
    for engine, n in (("module", args.payloads), ("lua", args.lua_payloads)):
        if n <= 0:
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"ctx-storm-{engine}-"))
        try:
            res = run(engine, n, args.schema_mutations, workdir, seed=args.seed)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"payload storm [{engine}]: {res['payloads']} payloads in {res['seconds']} s "
              f"(schemas {res['schema_seconds']} s), replies {res['replies']}, RSS "
              f"{res['rss_start_mib']} -> max {res['rss_max_mib']} MiB, {res['pings']} PINGs "
              f"(worst {res['worst_ping_s']} s), problems: {len(res['problems'])}")
        if res["accepted_schemas"]:
            print(f"    accepted hostile/suite schemas: {', '.join(res['accepted_schemas'])}")
        for code, text in sorted(res["samples"].items()):
            print(f"    e.g. {text}")
        for p in res["problems"][:20]:
            print("   ", p[:2000])
        failed |= bool(res["problems"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
