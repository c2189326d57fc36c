#!/usr/bin/env python3
"""Server-bound benchmark of the ctxlink module (protocol 2) against plain Redis baselines.

What it does (see docs/BENCHMARKS.md for the why):

* starts a throwaway redis-server with build/ctxlink.so on a free 127.0.0.1
  port (no persistence, temp dir) and stops it at the end, also on errors and
  Ctrl-C;
* registers the order schema (proto/order.proto) and builds one valid ~200-byte
  Order payload with version=1 that holds no zero byte, so that it can travel
  in redis-benchmark's argv;
* drives pipelined load with redis-benchmark (a C client, so the server is the
  bottleneck) on many distinct keys, alternating the two sides of every
  workload in rounds (A B A B ...) and comparing the median throughputs:

    create-id  CTX.CAS key 0 <payload> SCHEMA order ID <id>  vs  HSET key raw <payload> version 1
               (every request its own write id: redis-benchmark's __rand_int__ in the argument)
    lua-cas    CTX.CAS ... ID <id>                    vs  EVALSHA <reference Lua CAS>
    create     CTX.CAS without ID                     vs  HSET (the protocol 1 workload)
    read       CTX.GET ctx:<n>                        vs  HGETALL hash:<n> (raw, version)

* updates of existing contexts (CTX.PATCH of one field, CTX.CAS with a write id)
  need each request's base version to be the current one, which redis-benchmark
  cannot do: a Python driver sends pre-built RESP pipelines over raw sockets
  (8 connections, 256 commands per send) to per-side key sets that advance in
  lockstep, so every request succeeds; it runs HSET and the reference Lua CAS
  (as updates) the same way, side by side, and the server-side usec_per_call
  (INFO commandstats) compares the commands themselves;
* measures bytes per context (used_memory delta / N): plain SET of the payload,
  the protocol 1 five-field hash, protocol 2 with 1 and with 16 window records;
* reports requests/s, the server-side usec_per_call, the ratio module/baseline
  and whether it meets its target. Missing a target is reported, not an
  error: the exit status is 0 unless the benchmark itself could not run.

Usage:
    .venv/bin/python bench/bench_module.py            # full run (about 4 minutes)
    .venv/bin/python bench/bench_module.py --quick    # one short round per side
    .venv/bin/python bench/bench_module.py --json results.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import redis
from ctxlink.embedded import EmbeddedRedis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODULE = REPO / "build" / "ctxlink.so"
PROTO_DIR = REPO / "proto"
PROTO_FILE = PROTO_DIR / "order.proto"
SCHEMA_NAME = "order"
MESSAGE_TYPE = "ctxlink.example.Order"

# redis-benchmark expands __rand_int__ to a 12-digit zero-padded number in [0, R).
KEY_PATTERN = b"order:__rand_int__"
HASH_KEY_PATTERN = b"hash:__rand_int__"
PREPOPULATED_KEY = "order:%012d"
PREPOPULATED_HASH = "hash:%012d"
# A write id per request: redis-benchmark replaces every __rand_int__, in keys and
# arguments alike, with its own random number (27 bytes here; the SDK sends 32).
WRITE_ID_PATTERN = b"bench-write-id-__rand_int__"

CREATE_KEYSPACE = 10**9

# The reference optimistic-concurrency write in Lua: what a client would run
# without the module (no validation, no schema, no metadata).
LUA_CAS = (
    "local v = redis.call('HGET', KEYS[1], 'version'); "
    "if (v or '0') ~= ARGV[1] then return redis.call('HGETALL', KEYS[1]) end; "
    "redis.call('HSET', KEYS[1], 'raw', ARGV[2], 'version', ARGV[1] + 1); "
    "return ARGV[1] + 1"
)

# A run counts as server-bound when the server's main thread was at least this
# busy (CPU time / wall time); below it, the client, the network or other
# processes on the machine limited it.
SERVER_BOUND_CPU = 0.85

# Registry keys that survive in the db next to the contexts (for key counts).
REGISTRY_KEYS = 2

# The redis-benchmark child currently running, killed if we are interrupted.
_current_child: subprocess.Popen | None = None


class BenchError(Exception):
    """The benchmark cannot run (setup failed); distinct from a missed target."""


# ---------------------------------------------------------------- utilities


def log(msg: str = "") -> None:
    print(msg, flush=True)


def find_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if not path:
        raise BenchError(f"{name} not found on PATH")
    return path


def tool_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


# ---------------------------------------------------------------- the server


# ---------------------------------------------------------------- schema and payload


def compile_schema(workdir: Path) -> bytes:
    """The serialized FileDescriptorSet of proto/order.proto (with imports)."""
    out = workdir / "order.pb"
    argv = [
        sys.executable, "-m", "grpc_tools.protoc", "--include_imports",
        f"--descriptor_set_out={out}", f"-I{PROTO_DIR}", str(PROTO_FILE),
    ]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"protoc failed:\n{res.stderr}")
    return out.read_bytes()


def order_class(fds_bytes: bytes):
    fds = descriptor_pb2.FileDescriptorSet.FromString(fds_bytes)
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:  # --include_imports lists dependencies first
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(MESSAGE_TYPE))


def build_payload(Order, target_len: int = 200) -> bytes:
    """A valid Order with version=1, about target_len bytes, without zero bytes.

    Zero bytes cannot travel in argv. In protobuf wire format they only come
    from zero values, empty strings/lengths or NUL characters, none of which
    are used here; still, any value that would produce one is changed."""
    status_new = Order.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_name[
        "ORDER_STATUS_NEW"
    ].number
    skus = ["SKU-WIDGET-BLUE-XL", "SKU-GADGET-RED-M", "SKU-GIZMO-GREEN-S",
            "SKU-DOOHICKEY-BLACK", "SKU-SPROCKET-STEEL-12", "SKU-FLANGE-BRASS-3"]
    for bump in range(1000):
        o = Order(
            order_id=f"ord-2025-11-25-bench-{4242 + bump:06d}",
            version=1,
            status=status_new,
            base_price=12999 + bump,
            discount=1500 + bump,
            final_price=11499 + bump,
            inventory_reserved=True,
            last_updated_by="router-agent-bench",
            last_updated_epoch=1764100000123 + bump,
        )
        payload = b""
        for i in range(64):
            item = o.items.add()
            item.sku = skus[i % len(skus)]
            item.quantity = 1 + (i + bump) % 9
            payload = o.SerializeToString()
            if len(payload) >= target_len - 10:
                break
        if b"\x00" not in payload:
            break
    assert b"\x00" not in payload, "could not build a payload without zero bytes"
    assert Order.FromString(payload).version == 1
    return payload


# ---------------------------------------------------------------- redis-benchmark

_CSV_TAIL = re.compile(rb'"([0-9.]+)","([0-9.]+)","([0-9.]+)","([0-9.]+)",'
                       rb'"([0-9.]+)","([0-9.]+)","([0-9.]+)"\s*$')


@dataclass
class LoadResult:
    rps: float
    avg_ms: float
    p50_ms: float
    p99_ms: float
    seconds: float
    client_cpu_s: float  # CPU time redis-benchmark used (user + sys)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_redis_benchmark(bench_bin: str, port: int, command: list[bytes], requests: int,
                        keyspace: int, clients: int, pipeline: int) -> LoadResult:
    global _current_child
    argv = [
        bench_bin.encode(), b"-h", b"127.0.0.1", b"-p", str(port).encode(),
        b"-c", str(clients).encode(), b"-P", str(pipeline).encode(),
        b"-n", str(requests).encode(), b"-r", str(keyspace).encode(),
        b"--threads", b"1", b"--csv", *command,
    ]
    cpu0 = _children_cpu()
    t0 = time.monotonic()
    _current_child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _current_child.communicate()
    rc = _current_child.returncode
    _current_child = None
    seconds = time.monotonic() - t0
    client_cpu = _children_cpu() - cpu0
    m = _CSV_TAIL.search(out)
    if rc != 0 or not m:
        raise BenchError(
            f"redis-benchmark failed (exit {rc}):\n{err.decode(errors='replace')[-2000:]}"
        )
    rps, avg, _min, p50, _p95, p99, _max = (float(x) for x in m.groups())
    return LoadResult(rps=rps, avg_ms=avg, p50_ms=p50, p99_ms=p99, seconds=seconds,
                      client_cpu_s=client_cpu)


# ---------------------------------------------------------------- workloads


@dataclass
class Side:
    label: str        # shown in the table
    cmdstat: str      # INFO commandstats entry, e.g. "ctx.cas"
    command: list[bytes]
    keyspace: int
    creates: bool     # a create workload: starts on an empty db


@dataclass
class Workload:
    name: str
    title: str
    module: Side
    baseline: Side
    target: float | None  # module rps / baseline rps must be >= target; None: info only


@dataclass
class Run:
    side: str
    round: int
    requests: int
    rps: float
    seconds: float
    p50_ms: float
    p99_ms: float
    usec_per_call: float | None
    calls: int
    failed_calls: int
    server_cpu: float  # server main-thread CPU time / wall time of the run
    client_cpu: float  # redis-benchmark CPU time / wall time of the run
    conflicts: int | None = None
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args, server: EmbeddedRedis, bench_bin: str, fds: bytes, payload: bytes):
        self.args = args
        self.server = server
        self.bench_bin = bench_bin
        self.fds = fds
        self.payload = payload
        self.r = server.client(socket_timeout=300)
        self.warnings: list[str] = []

    # -- server state

    def register_schema(self) -> None:
        self.r.execute_command("CTX.SCHEMA.SET", SCHEMA_NAME, MESSAGE_TYPE, self.fds)

    def fresh_db(self) -> None:
        """Empty db (synchronous flush, so no freeing runs during the load);
        the registry lives in keys, so the schema is registered again."""
        self.r.flushall(asynchronous=False)
        self.register_schema()

    def ctx_counters(self) -> dict[str, int]:
        info = self.r.info("ctx")
        return {k: int(v) for k, v in info.items() if k.startswith("ctx_") and str(v).isdigit()}

    def server_cpu_seconds(self) -> float:
        """CPU time of the server's main thread (where commands run)."""
        info = self.r.info("cpu")
        if "used_cpu_user_main_thread" in info:
            return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def cmdstat(self, name: str) -> dict:
        return self.r.info("commandstats").get(f"cmdstat_{name}", {})

    def check_payload(self) -> None:
        """The payload must be accepted once before anything is measured."""
        probe = "bench:probe"
        try:
            reply = self.r.execute_command("CTX.CAS", probe, 0, self.payload, "SCHEMA", SCHEMA_NAME)
        except redis.ResponseError as e:
            raise BenchError(f"CTX.CAS rejected the benchmark payload: {e}") from e
        if reply != 1:
            raise BenchError(f"CTX.CAS on a fresh key replied {reply!r}, expected 1")
        got = self.r.execute_command("CTX.GET", probe)
        if not got or got[0] != 1 or got[1] != self.payload:
            raise BenchError(f"CTX.GET did not return the payload just written: {got!r}")
        self.r.execute_command("CTX.DEL", probe, 1)

    def prepopulate(self, count: int) -> None:
        """`count` contexts named like redis-benchmark's keys (order:%012d, protocol 2
        strings) and as many plain hashes (hash:%012d: raw, version) for the baseline."""
        self.fresh_db()
        batch = 2000
        for start in range(0, count, batch):
            pipe = self.r.pipeline(transaction=False)
            for i in range(start, min(start + batch, count)):
                pipe.execute_command("CTX.CAS", PREPOPULATED_KEY % i, 0, self.payload,
                                     "SCHEMA", SCHEMA_NAME, "ID", f"populate-{i}")
                pipe.execute_command("HSET", PREPOPULATED_HASH % i, "raw", self.payload,
                                     "version", 1)
            replies = pipe.execute(raise_on_error=False)
            bad = [x for x in replies if x not in (1, 2)]
            if bad:
                raise BenchError(f"pre-populating failed: {bad[0]!r}")
        size = self.r.dbsize()
        if size != 2 * count + REGISTRY_KEYS:
            raise BenchError(f"pre-populated db holds {size} keys, "
                             f"expected {2 * count + REGISTRY_KEYS}")

    # -- one measurement

    def measure(self, side: Side, requests: int, rnd: int) -> Run:
        if side.creates:
            self.fresh_db()
        before = self.ctx_counters()
        self.r.config_resetstat()
        cpu0 = self.server_cpu_seconds()
        load = run_redis_benchmark(self.bench_bin, self.server.port, side.command, requests,
                                   side.keyspace, self.args.clients, self.args.pipeline)
        cpu1 = self.server_cpu_seconds()
        stat = self.cmdstat(side.cmdstat)
        after = self.ctx_counters()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        run = Run(
            side=side.label, round=rnd, requests=requests, rps=load.rps, seconds=load.seconds,
            p50_ms=load.p50_ms, p99_ms=load.p99_ms,
            usec_per_call=float(stat["usec_per_call"]) if "usec_per_call" in stat else None,
            calls=int(stat.get("calls", 0)), failed_calls=int(stat.get("failed_calls", 0)),
            server_cpu=(cpu1 - cpu0) / load.seconds, client_cpu=load.client_cpu_s / load.seconds,
        )
        self.check_run(side, run, delta)
        return run

    def check_run(self, side: Side, run: Run, delta: dict[str, int]) -> None:
        """Makes sure the load did what we think it did; notes conflicts."""
        # redis-benchmark issues whole pipelines, so it may send up to
        # pipeline-1 more requests than asked; `calls` is what the server ran.
        if not run.requests <= run.calls < run.requests + self.args.pipeline:
            run.notes.append(f"{run.calls} calls counted, {run.requests} requested")
        if run.failed_calls:
            run.notes.append(f"{run.failed_calls} calls replied with an error")
        rejected = sum(v for k, v in delta.items() if k.startswith("ctx_rejected_"))
        if rejected:
            run.notes.append(f"{rejected} CTX.CAS rejections")
        if side.cmdstat == "ctx.cas":
            run.conflicts = delta.get("ctx_cas_conflicts", 0)
            if delta.get("ctx_cas_ok", 0) + run.conflicts != run.calls:
                run.notes.append(f"ctx_cas_ok {delta.get('ctx_cas_ok', 0)} + conflicts "
                                 f"{run.conflicts} != {run.calls} calls")
        elif side.creates:
            # Plain HSET / Lua: a collision (same random key twice) shows as a
            # missing key. For the Lua CAS that is its conflict; HSET overwrites.
            run.conflicts = run.calls - (self.r.dbsize() - REGISTRY_KEYS)
        elif side.cmdstat == "ctx.get":
            if delta.get("ctx_get_misses", 0):
                run.notes.append(f"{delta['ctx_get_misses']} CTX.GET misses")
        else:
            misses = int(self.r.info("stats").get("keyspace_misses", 0))
            if misses:
                run.notes.append(f"{misses} keyspace misses")
        for n in run.notes:
            self.warnings.append(f"{side.label} round {run.round}: {n}")

    # -- one workload, sides alternating

    def calibrate(self, w: Workload) -> int:
        """Requests per measurement, the same for both sides so that they
        create (or read) the same number of keys: chosen so that the two runs
        of a round last 2 x --seconds together (with a 2x gap in throughput,
        about 2/3 and 4/3 of --seconds)."""
        warm = self.args.warmup_requests
        rates = []
        for side in (w.module, w.baseline):
            if side.creates:
                self.fresh_db()
            res = run_redis_benchmark(self.bench_bin, self.server.port, side.command, warm,
                                      side.keyspace, self.args.clients, self.args.pipeline)
            rates.append(res.rps)
        if self.args.requests:
            return self.args.requests
        n = self.args.seconds * statistics.harmonic_mean(rates)
        # A multiple of the pipeline depth, so redis-benchmark sends exactly n.
        step = 10_000 * self.args.pipeline // math.gcd(10_000, self.args.pipeline)
        return max(step, int(round(n / step)) * step)

    def prime(self, w: Workload, requests: int) -> None:
        """One unmeasured full-size run of each create side, so that the
        server has already taken the memory for that many keys from the
        kernel (the allocator keeps it across FLUSHALL): otherwise the first
        measured run pays the page faults and the ones after it do not."""
        for side in (w.module, w.baseline):
            if side.creates:
                self.fresh_db()
                run_redis_benchmark(self.bench_bin, self.server.port, side.command, requests,
                                    side.keyspace, self.args.clients, self.args.pipeline)

    @staticmethod
    def log_run(run: Run) -> None:
        extra = f", conflicts {run.conflicts}" if run.conflicts is not None else ""
        upc = f"{run.usec_per_call:.2f}" if run.usec_per_call is not None else "?"
        p50 = "" if math.isnan(run.p50_ms) else f"  p50 {run.p50_ms:6.3f} ms"
        client = "" if math.isnan(run.client_cpu) else f" client {run.client_cpu:4.0%}"
        log(f"   round {run.round}  {run.side:<18} {fmt_int(run.rps):>11} req/s  "
            f"{run.seconds:5.2f} s  usec_per_call {upc:>6}{p50}  "
            f"cpu server {run.server_cpu:4.0%}{client}"
            f"{extra}" + (f"  !! {'; '.join(run.notes)}" if run.notes else ""))

    def run_workload(self, w: Workload) -> dict:
        log(f"\n== {w.name}: {w.title}")
        requests = self.calibrate(w)
        if not self.args.quick:
            self.prime(w, requests)
        log(f"   {requests:,} requests per measurement, {self.args.rounds} round(s), "
            f"keyspace {w.module.keyspace:,}")
        runs: dict[str, list[Run]] = {w.module.label: [], w.baseline.label: []}
        discarded: dict[str, list[Run]] = {w.module.label: [], w.baseline.label: []}
        for rnd in range(1, self.args.rounds + 1):
            for side in (w.module, w.baseline):
                for attempt in range(self.args.retries + 1):
                    run = self.measure(side, requests, rnd)
                    self.log_run(run)
                    if run.server_cpu >= SERVER_BOUND_CPU or attempt == self.args.retries:
                        break
                    # The server had CPU to spare although clients x pipeline
                    # requests were in flight: something else took the CPU.
                    discarded[side.label].append(run)
                    log(f"            ^ discarded and repeated: the server's main thread was "
                        f"only {run.server_cpu:.0%} busy (other load on the machine?)")
                runs[side.label].append(run)

        def summary(side: Side) -> dict:
            rs = runs[side.label]
            upcs = [r.usec_per_call for r in rs if r.usec_per_call is not None]
            conflicts = [r.conflicts for r in rs if r.conflicts is not None]
            return {
                "label": side.label,
                "command": side.command[0].decode(),
                "median_rps": statistics.median(r.rps for r in rs),
                "median_usec_per_call": statistics.median(upcs) if upcs else None,
                "conflicts_total": sum(conflicts) if conflicts else None,
                "median_server_cpu": statistics.median(r.server_cpu for r in rs),
                "median_client_cpu": statistics.median(r.client_cpu for r in rs),
                "runs": [vars(r) for r in rs],
                "discarded_runs": [vars(r) for r in discarded[side.label]],
            }

        mod, base = summary(w.module), summary(w.baseline)
        ratio = mod["median_rps"] / base["median_rps"]
        mu, bu = mod["median_usec_per_call"], base["median_usec_per_call"]
        return {
            "workload": w.name,
            "title": w.title,
            "requests_per_run": requests,
            "keyspace": w.module.keyspace,
            "module": mod,
            "baseline": base,
            "ratio": ratio,
            "usec_ratio": bu / mu if mu and bu else None,
            "target": w.target,
            "passed": None if w.target is None else ratio >= w.target,
        }


def make_workloads(payload: bytes, sha: str, read_keys: int) -> list[Workload]:
    cas_id = Side("CTX.CAS ID create", "ctx.cas",
                  [b"CTX.CAS", KEY_PATTERN, b"0", payload, b"SCHEMA", SCHEMA_NAME.encode(),
                   b"ID", WRITE_ID_PATTERN],
                  CREATE_KEYSPACE, creates=True)
    cas = Side("CTX.CAS create", "ctx.cas",
               [b"CTX.CAS", KEY_PATTERN, b"0", payload, b"SCHEMA", SCHEMA_NAME.encode()],
               CREATE_KEYSPACE, creates=True)
    hset = Side("HSET", "hset", [b"HSET", KEY_PATTERN, b"raw", payload, b"version", b"1"],
                CREATE_KEYSPACE, creates=True)
    lua = Side("EVALSHA Lua CAS", "evalsha",
               [b"EVALSHA", sha.encode(), b"1", KEY_PATTERN, b"0", payload],
               CREATE_KEYSPACE, creates=True)
    get = Side("CTX.GET", "ctx.get", [b"CTX.GET", KEY_PATTERN], read_keys, creates=False)
    hgetall = Side("HGETALL", "hgetall", [b"HGETALL", HASH_KEY_PATTERN], read_keys,
                   creates=False)
    return [
        Workload("create-id", "create a context with a write id: CTX.CAS ... ID vs a plain HSET",
                 cas_id, hset, 0.7),
        Workload("lua-cas", "create via CAS: CTX.CAS ... ID vs the reference Lua CAS (EVALSHA); "
                 "floor: protocol 1's 1.25x", cas_id, lua, 1.25),
        Workload("create", "protocol 1's workload: CTX.CAS without ID vs HSET "
                 "(protocol 1's target 0.8x)", cas, hset, 0.8),
        Workload("read", f"read one of {read_keys:,} contexts: CTX.GET vs HGETALL of a "
                 "(raw, version) hash", get, hgetall, 0.9),
    ]


# ---------------------------------------------------------------- updates (Python driver)
#
# An update must name the current version, so each request depends on the one
# before it on the same key, which redis-benchmark cannot express. The driver
# keeps one key set per side whose keys all sit at the same version; a pass
# writes every key once, so the commands of a pass differ only in the key and
# are built with one bytes.join (a shared tail after a per-key head). Replies
# have a known length per pass: the driver reads exactly that many bytes,
# checks the first and last reply and, after the run, the server's counters.

UPDATE_CONNS = 8
UPDATE_CHUNK = 256
WINDOW = 16


def resp_args(*args: bytes) -> bytes:
    return b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def write_id(pass_no: int) -> bytes:
    """32 hex characters, as the SDK sends; one per pass (each key is written once a pass)."""
    return b"%032x" % (0x5EED0000000000000000000000000000 + pass_no)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class UpdSide:
    label: str
    cmdstat: str
    prefix: bytes                         # key names: prefix + %08d
    head: list[bytes]                     # arguments before the key (command name first)
    tail: Callable[[int, int], list[bytes]]  # (stored version, pass) -> arguments after the key
    reply: Callable[[int], bytes]         # stored version -> the expected reply
    counter: str | None = None            # INFO ctx counter that must grow by the calls
    version: int = 1                      # the stored version of every key of this side
    passes: int = 0                       # passes run so far (write ids)


class UpdateDriver:
    def __init__(self, port: int, nkeys: int, conns: int = UPDATE_CONNS,
                 chunk: int = UPDATE_CHUNK) -> None:
        self.port = port
        self.nkeys = nkeys
        self.conns = conns
        self.chunk = chunk

    def heads(self, side: UpdSide, argc: int) -> list[list[bytes]]:
        """Per connection, the per-key heads of its keys (key i goes to connection i % conns)."""
        pre = b"*%d\r\n" % argc + resp_args(*side.head)
        out: list[list[bytes]] = [[] for _ in range(self.conns)]
        for i in range(self.nkeys):
            key = side.prefix + b"%08d" % i
            out[i % self.conns].append(pre + resp_args(key))
        return out

    def run(self, side: UpdSide, passes: int) -> float:
        """Writes every key of `side` `passes` times; returns the wall time in seconds."""
        tails = [(side.tail(side.version + k, side.passes + k), side.reply(side.version + k))
                 for k in range(passes)]
        argc = len(side.head) + 1 + len(tails[0][0])
        heads = self.heads(side, argc)
        errors: list[BaseException] = []
        socks = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(self.conns)]
        for sk in socks:
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sk.settimeout(60)
        start = threading.Barrier(self.conns + 1)

        def worker(c: int) -> None:
            sk, mine = socks[c], heads[c]
            try:
                start.wait()
                for args, reply in tails:
                    tail = resp_args(*args)
                    for j in range(0, len(mine), self.chunk):
                        part = mine[j:j + self.chunk]
                        sk.sendall(tail.join(part) + tail)
                        n = len(reply) * len(part)
                        buf = bytearray(n)
                        view = memoryview(buf)
                        got = 0
                        while got < n:
                            k = sk.recv_into(view[got:], n - got)
                            if not k:
                                raise BenchError("the server closed a driver connection")
                            got += k
                        if buf[:len(reply)] != reply or buf[n - len(reply):] != reply:
                            raise BenchError(f"{side.label}: unexpected reply "
                                             f"{bytes(buf[:120])!r}, expected {reply[:120]!r}")
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(c,), daemon=True)
                   for c in range(self.conns)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        for sk in socks:
            sk.close()
        if errors:
            if isinstance(errors[0], socket.timeout):
                raise BenchError(f"{side.label}: a reply did not come (an error or conflict "
                                 f"reply is shorter than expected)")
            raise errors[0] if isinstance(errors[0], BenchError) else BenchError(
                f"{side.label}: driver failed: {errors[0]!r}")
        side.version += passes
        side.passes += passes
        return seconds


def payload_with_version(Order, payload: bytes, version: int) -> bytes:
    m = Order.FromString(payload)
    m.version = version
    return m.SerializeToString()


class UpdateBench:
    """CTX.PATCH and CTX.CAS ... ID updates vs HSET and the reference Lua CAS, as updates of
    existing keys, alternating in rounds like the redis-benchmark workloads."""

    def __init__(self, bench: "Bench", Order, sha: str, nkeys: int) -> None:
        self.b = bench
        self.args = bench.args
        self.Order = Order
        self.sha = sha.encode()
        self.nkeys = nkeys
        self.driver = UpdateDriver(bench.server.port, nkeys)
        self.payloads: dict[int, bytes] = {}

    def payload_v(self, version: int) -> bytes:
        if version not in self.payloads:
            self.payloads[version] = payload_with_version(self.Order, self.b.payload, version)
        return self.payloads[version]

    def setup(self) -> list[UpdSide]:
        r, p = self.b.r, self.b.payload
        self.b.fresh_db()
        # the patch: field 4 (base_price) only, READS 0
        q = self.Order(base_price=13999).SerializeToString()
        r.execute_command("CTX.CAS", "patch:calibrate", 0, p, "SCHEMA", SCHEMA_NAME)
        got = r.execute_command("CTX.PATCH", "patch:calibrate", 1, q, "FIELDS", 1, 4,
                                "READS", 0)
        if not isinstance(got, list) or got[0] != 2 or not got[1].endswith(b"\x10\x02"):
            raise BenchError(f"CTX.PATCH calibration replied {got!r}")
        merged_head = got[1][:-1]  # everything but the version's varint (the version is last)
        r.delete("patch:calibrate")

        def patch_reply(v: int) -> bytes:
            merged = merged_head + varint(v + 1)
            return b"*2\r\n:%d\r\n$%d\r\n%s\r\n" % (v + 1, len(merged), merged)

        sides = [
            UpdSide("CTX.PATCH 1 field", "ctx.patch", b"patch:", [b"CTX.PATCH"],
                    lambda v, k: [b"%d" % v, q, b"FIELDS", b"1", b"4", b"READS", b"0",
                                  b"ID", write_id(k)],
                    patch_reply, counter="ctx_patch_ok"),
            UpdSide("CTX.CAS ID update", "ctx.cas", b"cas:", [b"CTX.CAS"],
                    lambda v, k: [b"%d" % v, self.payload_v(v + 1), b"ID", write_id(k)],
                    lambda v: b":%d\r\n" % (v + 1), counter="ctx_cas_ok"),
            UpdSide("HSET", "hset", b"hash:", [b"HSET"],
                    lambda v, k: [b"raw", p, b"version", b"1"], lambda v: b":0\r\n"),
            UpdSide("EVALSHA Lua CAS upd", "evalsha", b"lua:", [b"EVALSHA", self.sha, b"1"],
                    lambda v, k: [b"%d" % v, p], lambda v: b":%d\r\n" % (v + 1)),
        ]
        # create every key at version 1 (contexts with a write id, as the SDK does)
        creates = [
            UpdSide("create", "", b"patch:", [b"CTX.CAS"],
                    lambda v, k: [b"0", p, b"SCHEMA", SCHEMA_NAME.encode(), b"ID", write_id(k)],
                    lambda v: b":1\r\n", version=0),
            UpdSide("create", "", b"cas:", [b"CTX.CAS"],
                    lambda v, k: [b"0", p, b"SCHEMA", SCHEMA_NAME.encode(), b"ID", write_id(k)],
                    lambda v: b":1\r\n", version=0),
            UpdSide("create", "", b"hash:", [b"HSET"],
                    lambda v, k: [b"raw", p, b"version", b"1"], lambda v: b":2\r\n", version=0),
            UpdSide("create", "", b"lua:", [b"EVALSHA", self.sha, b"1"],
                    lambda v, k: [b"0", p], lambda v: b":1\r\n", version=0),
        ]
        for c in creates:
            self.driver.run(c, 1)
        for s in sides:
            s.passes = 1  # write id of pass 0 used by the create
        return sides

    def measure(self, side: UpdSide, passes: int, rnd: int) -> Run:
        before = self.b.ctx_counters()
        self.b.r.config_resetstat()
        cpu0 = self.b.server_cpu_seconds()
        seconds = self.driver.run(side, passes)
        cpu1 = self.b.server_cpu_seconds()
        stat = self.b.cmdstat(side.cmdstat)
        after = self.b.ctx_counters()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        requests = passes * self.nkeys
        run = Run(side=side.label, round=rnd, requests=requests, rps=requests / seconds,
                  seconds=seconds, p50_ms=math.nan, p99_ms=math.nan,
                  usec_per_call=float(stat["usec_per_call"]) if "usec_per_call" in stat else None,
                  calls=int(stat.get("calls", 0)), failed_calls=int(stat.get("failed_calls", 0)),
                  server_cpu=(cpu1 - cpu0) / seconds, client_cpu=math.nan, conflicts=0)
        if run.calls != requests:
            run.notes.append(f"{run.calls} calls counted, {requests} sent")
        if run.failed_calls:
            run.notes.append(f"{run.failed_calls} calls replied with an error")
        if side.counter and delta.get(side.counter, 0) != requests:
            run.notes.append(f"{side.counter} grew by {delta.get(side.counter, 0)}, "
                             f"{requests} sent")
        for k in ("ctx_cas_conflicts", "ctx_replays"):
            if delta.get(k, 0):
                run.notes.append(f"{k} {delta[k]}")
        for n in run.notes:
            self.b.warnings.append(f"{side.label} round {rnd}: {n}")
        return run

    def run(self) -> list[dict]:
        log(f"\n== updates: {self.nkeys:,} existing keys per side, each written once per pass, "
            f"Python driver ({UPDATE_CONNS} connections x {UPDATE_CHUNK} commands per send)")
        t0 = time.monotonic()
        sides = self.setup()
        # warm-up: fill the contexts' windows (16 records, the steady state) and time a pass
        rates = []
        for s in sides:
            n = WINDOW if s.cmdstat.startswith("ctx.") else 2
            secs = self.driver.run(s, n)
            rates.append(n * self.nkeys / secs)
        if self.args.requests:
            passes = max(1, round(self.args.requests / self.nkeys))
        else:
            passes = max(1, round(self.args.seconds * statistics.harmonic_mean(rates)
                                  / self.nkeys))
        log(f"   set up and warmed up in {time.monotonic() - t0:.1f} s; {passes} pass(es) = "
            f"{passes * self.nkeys:,} requests per measurement, {self.args.rounds} round(s)")
        runs: dict[str, list[Run]] = {s.label: [] for s in sides}
        discarded: dict[str, list[Run]] = {s.label: [] for s in sides}
        for rnd in range(1, self.args.rounds + 1):
            order = sides if rnd % 2 else list(reversed(sides))
            for s in order:
                for attempt in range(self.args.retries + 1):
                    run = self.measure(s, passes, rnd)
                    Bench.log_run(run)
                    if run.server_cpu >= SERVER_BOUND_CPU or attempt == self.args.retries:
                        break
                    discarded[s.label].append(run)
                    log(f"            ^ discarded and repeated: the server's main thread was "
                        f"only {run.server_cpu:.0%} busy")
                runs[s.label].append(run)
        # every key of every side must now be at the version the driver counted
        for s in sides[:2]:
            got = self.b.r.execute_command("CTX.GET", s.prefix + b"%08d" % (self.nkeys - 1))
            if not got or got[0] != s.version:
                raise BenchError(f"{s.label}: stored version {got and got[0]}, "
                                 f"expected {s.version}")
        lua_v = self.b.r.hget(b"lua:%08d" % 0, "version")
        if int(lua_v) != sides[3].version:
            raise BenchError(f"Lua CAS: stored version {lua_v!r}, expected {sides[3].version}")

        def summary(s: UpdSide) -> dict:
            rs = runs[s.label]
            upcs = [r.usec_per_call for r in rs if r.usec_per_call is not None]
            return {
                "label": s.label,
                "command": s.head[0].decode(),
                "median_rps": statistics.median(r.rps for r in rs),
                "median_usec_per_call": statistics.median(upcs) if upcs else None,
                "conflicts_total": None,
                "median_server_cpu": statistics.median(r.server_cpu for r in rs),
                "median_client_cpu": math.nan,
                "runs": [vars(r) for r in rs],
                "discarded_runs": [vars(r) for r in discarded[s.label]],
            }

        sums = {s.label: summary(s) for s in sides}
        patch, cas, hset, lua = (sums[s.label] for s in sides)
        out = []
        for name, title, mod, base in (
            ("patch", "CTX.PATCH of one field vs HSET raw+version", patch, hset),
            ("patch-lua", "CTX.PATCH of one field vs the reference Lua CAS update", patch, lua),
            ("update-id", "CTX.CAS ... ID update vs HSET raw+version", cas, hset),
            ("upd-lua", "CTX.CAS ... ID update vs the reference Lua CAS update", cas, lua),
        ):
            mu, bu = mod["median_usec_per_call"], base["median_usec_per_call"]
            out.append({
                "workload": name, "title": title, "requests_per_run": passes * self.nkeys,
                "keyspace": self.nkeys, "module": mod, "baseline": base,
                "ratio": mod["median_rps"] / base["median_rps"],
                "usec_ratio": bu / mu if mu and bu else None, "target": None, "passed": None,
            })
        return out


# ---------------------------------------------------------------- bytes per context


def measure_memory(bench: "Bench", Order, n: int) -> list[dict]:
    """used_memory delta / n after writing n contexts (same key names for every variant)."""
    r, p = bench.r, bench.payload
    driver = UpdateDriver(bench.server.port, n)
    schema = SCHEMA_NAME.encode()
    payloads: dict[int, bytes] = {}

    def pv(v: int) -> bytes:
        if v not in payloads:
            payloads[v] = payload_with_version(Order, p, v)
        return payloads[v]

    variants = [
        ("SET key <payload>", [UpdSide("set", "", b"mem:", [b"SET"], lambda v, k: [p],
                                       lambda v: b"+OK\r\n")], 1),
        ("protocol 1 hash (5 fields)",
         [UpdSide("v1", "", b"mem:", [b"HSET"],
                  lambda v, k: [b"raw", p, b"version", b"1", b"schema", schema,
                                b"updated_ms", b"1764100000123", b"updated_by", b""],
                  lambda v: b":5\r\n")], 1),
        ("protocol 2, 1 record", [UpdSide("v2", "", b"mem:", [b"CTX.CAS"],
                                          lambda v, k: [b"0", p, b"SCHEMA", schema,
                                                        b"ID", write_id(k)],
                                          lambda v: b":1\r\n", version=0)], 1),
        ("protocol 2, 16 records", [
            UpdSide("v2", "", b"mem:", [b"CTX.CAS"],
                    lambda v, k: [b"0", p, b"SCHEMA", schema, b"ID", write_id(k)],
                    lambda v: b":1\r\n", version=0),
            UpdSide("v2 upd", "", b"mem:", [b"CTX.CAS"],
                    lambda v, k: [b"%d" % v, pv(v + 1), b"ID", write_id(k)],
                    lambda v: b":%d\r\n" % (v + 1), version=1, passes=1)], WINDOW - 1),
    ]
    out = []
    for label, steps, upd_passes in variants:
        bench.fresh_db()
        before = int(r.info("memory")["used_memory"])
        driver.run(steps[0], 1)
        if len(steps) > 1:
            driver.run(steps[1], upd_passes)
        after = int(r.info("memory")["used_memory"])
        key = b"mem:%08d" % 0
        out.append({"variant": label, "bytes_per_context": (after - before) / n,
                    "memory_usage_key": r.memory_usage(key),
                    "value_bytes": r.strlen(key) if r.type(key) == b"string" else None})
    bench.fresh_db()
    base = out[0]["bytes_per_context"]
    for row in out:
        row["ratio_to_set"] = row["bytes_per_context"] / base
    return out


# ---------------------------------------------------------------- report


def machine_facts(server_bin: str, bench_bin: str, module: Path, server_info: dict) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    data = module.read_bytes()
    git = tool_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "redis_server": tool_output([server_bin, "--version"]),
        "redis_version": server_info.get("redis_version"),
        "redis_benchmark": tool_output([bench_bin, "--version"]),
        "module": str(module),
        "module_bytes": len(data),
        "module_sha256": hashlib.sha256(data).hexdigest()[:16],
        "git_head": git,
    }


def target_text(target: float | None) -> str:
    return "-" if target is None else f">={target:.1f}x"


def verdict_text(passed: bool | None) -> str:
    return "info" if passed is None else ("PASS" if passed else "FAIL")


def print_table(results: list[dict]) -> None:
    header = (f"{'workload':<9} {'module side':<19} {'req/s':>9} {'us/call':>7}  "
              f"{'baseline side':<19} {'req/s':>9} {'us/call':>7}  "
              f"{'ratio':>6} {'target':>7} {'result':<6} {'us ratio':>8}")
    log(header)
    log("-" * len(header))
    for res in results:
        m, b = res["module"], res["baseline"]

        def upc(x):
            return f"{x:.2f}" if x is not None else "?"

        ur = res["usec_ratio"]
        log(f"{res['workload']:<9} {m['label']:<19} {fmt_int(m['median_rps']):>9} "
            f"{upc(m['median_usec_per_call']):>7}  "
            f"{b['label']:<19} {fmt_int(b['median_rps']):>9} {upc(b['median_usec_per_call']):>7}  "
            f"{res['ratio']:>5.2f}x {target_text(res['target']):>7} "
            f"{verdict_text(res['passed']):<6} {'?' if ur is None else format(ur, '.2f') + 'x':>8}")
    log("ratio = module req/s / baseline req/s (the verdict); us ratio = baseline us/call / "
        "module us/call,\nthe same comparison from the server's own per-command timing "
        "(excludes network and protocol work).")


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="short runs, one round (a fast check, not a measurement)")
    p.add_argument("--rounds", type=int, help="rounds per workload (default 3, --quick 1)")
    p.add_argument("--seconds", type=float,
                   help="target seconds per measurement (default 3, --quick 0.5)")
    p.add_argument("--requests", type=int,
                   help="fixed requests per measurement instead of calibrating")
    p.add_argument("--retries", type=int,
                   help="times a run is repeated when the server was not saturated "
                        "(other load on the machine); default 2, --quick 0")
    p.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (default 50)")
    p.add_argument("--pipeline", type=int, default=32, help="redis-benchmark -P (default 32)")
    p.add_argument("--read-keys", type=int, default=100_000,
                   help="contexts pre-populated for the read workload (default 100000)")
    p.add_argument("--update-keys", type=int, default=20_000,
                   help="keys per side of the update workloads (default 20000)")
    p.add_argument("--memory-keys", type=int, default=50_000,
                   help="contexts written per variant for bytes per context (default 50000)")
    p.add_argument("--module", type=Path, default=DEFAULT_MODULE,
                   help=f"module to load (default {DEFAULT_MODULE.relative_to(REPO)})")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 3.0
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    args.warmup_requests = 20_000 if args.quick else 50_000
    if args.rounds < 1 or args.seconds <= 0 or (args.requests is not None and args.requests < 1):
        p.error("--rounds, --seconds and --requests must be positive")
    if args.retries < 0:
        p.error("--retries must be >= 0")
    args.module = args.module.resolve()
    return args


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # same cleanup as Ctrl-C


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not args.module.is_file():
        log(f"error: {args.module} not found; build it with `make`")
        return 2
    try:
        server_bin = find_tool("redis-server")
        bench_bin = find_tool("redis-benchmark")
    except BenchError as e:
        log(f"error: {e}")
        return 2

    # its own session, so that a Ctrl-C reaches this script (which stops it), not the server
    server = EmbeddedRedis(module=args.module, binary=server_bin, new_session=True)
    try:
        server.start()
        r = server.client(socket_timeout=300)
        facts = machine_facts(server_bin, bench_bin, args.module, r.info("server"))
        log("ctxlink module benchmark" + (" (--quick: a smoke check, not a measurement)"
                                          if args.quick else ""))
        log(f"  date            {facts['date_utc']}")
        log(f"  machine         nproc={facts['nproc']}  {facts['cpu']}  "
            f"{facts['mem_gib']} GiB  Linux {facts['kernel']}  "
            f"(load average {facts['loadavg_1m_at_start']} at start)")
        log(f"  redis-server    {facts['redis_server']}")
        log(f"  redis-benchmark {facts['redis_benchmark']}")
        log(f"  module          {facts['module']} ({facts['module_bytes']:,} bytes, "
            f"sha256 {facts['module_sha256']}, git {facts['git_head'] or '?'})")
        log(f"  server          127.0.0.1:{server.port}, save \"\", appendonly no")
        log(f"  load            redis-benchmark -c {args.clients} -P {args.pipeline} "
            f"--threads 1; {args.rounds} round(s) per side, ~{args.seconds:g} s per run")

        fds = compile_schema(server.dir)
        Order = order_class(fds)
        payload = build_payload(Order)
        assert b"\x00" not in payload
        sha = r.script_load(LUA_CAS)
        bench = Bench(args, server, bench_bin, fds, payload)
        bench.fresh_db()
        bench.check_payload()
        log(f"  payload         {len(payload)} bytes Order (version=1, no zero byte), "
            f"accepted by CTX.CAS")

        results = []
        workloads = make_workloads(payload, sha, args.read_keys)
        for w in workloads:
            if w.name == "read":
                t0 = time.monotonic()
                bench.prepopulate(args.read_keys)
                log(f"\n   pre-populated {args.read_keys:,} contexts "
                    f"({time.monotonic() - t0:.1f} s)")
            results.append(bench.run_workload(w))
        results += UpdateBench(bench, Order, sha, args.update_keys).run()
        t0 = time.monotonic()
        memory = measure_memory(bench, Order, args.memory_keys)
        log(f"\n== bytes per context: used_memory delta / {args.memory_keys:,} contexts "
            f"({time.monotonic() - t0:.1f} s)")

        log("\nResults (median of the rounds; us/call = server-side usec_per_call "
            "from INFO commandstats)")
        print_table(results)
        v2_full = memory[-1]["ratio_to_set"]
        if v2_full > 1.5:
            bench.warnings.append(f"bytes per context: protocol 2 with a full window is "
                                  f"{v2_full:.2f}x a plain SET (aim <= 1.5x)")
        for res in results:
            for side in ("module", "baseline"):
                c = res[side]["conflicts_total"]
                if c is not None and res["workload"] != "read":
                    total = res["requests_per_run"] * len(res[side]["runs"])
                    log(f"  {res['workload']}: {res[side]['label']} key collisions "
                        f"(conflicts / overwrites) {c} of {total:,} requests")
        log(f"\nBytes per context ({len(payload)}-byte payload, used_memory delta / "
            f"{args.memory_keys:,}; MEMORY USAGE and STRLEN of one key)")
        for m in memory:
            vb = "-" if m["value_bytes"] is None else str(m["value_bytes"])
            log(f"  {m['variant']:<28} {m['bytes_per_context']:7.1f} B  "
                f"{m['ratio_to_set']:5.2f}x SET   MEMORY USAGE {m['memory_usage_key']:>4}  "
                f"STRLEN {vb:>4}")
        for res in results:
            for side in ("module", "baseline"):
                sd = res[side]
                if sd["median_server_cpu"] < SERVER_BOUND_CPU:
                    bench.warnings.append(
                        f"{res['workload']}: {sd['label']} was not server-bound (server main "
                        f"thread {sd['median_server_cpu']:.0%} busy"
                        + ("" if math.isnan(sd["median_client_cpu"]) else
                           f", redis-benchmark {sd['median_client_cpu']:.0%}")
                        + "); its req/s understates the server")
        failed = [r_ for r_ in results if r_["passed"] is False]
        if bench.warnings:
            log("\nWarnings (the load did not do exactly what was intended):")
            for wmsg in bench.warnings:
                log(f"  - {wmsg}")
        if failed:
            log("\nTARGETS MISSED: " + "; ".join(
                f"{f['workload']} ({f['module']['label']} {f['ratio']:.2f}x "
                f"{f['baseline']['label']}, target >= {f['target']:.1f}x)" for f in failed))
        else:
            log("\nAll targets met.")

        if args.json:
            doc = {
                "machine": facts,
                "settings": {
                    "quick": args.quick, "rounds": args.rounds, "seconds": args.seconds,
                    "clients": args.clients, "pipeline": args.pipeline, "threads": 1,
                    "read_keys": args.read_keys, "payload_bytes": len(payload),
                    "payload_hex": payload.hex(),
                },
                "results": results,
                "memory": memory,
                "warnings": bench.warnings,
            }
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            log(f"results written to {args.json}")
        return 0
    except BenchError as e:
        log(f"\nerror: {e}")
        return 2
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 130
    finally:
        if _current_child is not None and _current_child.poll() is None:
            _current_child.kill()
            _current_child.wait()
        server.close()


if __name__ == "__main__":
    sys.exit(main())
