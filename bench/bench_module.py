#!/usr/bin/env python3
"""Server-bound benchmark of the ctxlink module against plain Redis baselines.

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

    create     CTX.CAS key 0 <payload> SCHEMA order  vs  HSET key raw <payload> version 1
    create-5f  CTX.CAS key 0 <payload> SCHEMA order  vs  HSET of the five fields CTX.CAS
               stores (information only, no target: the storage format's own cost)
    lua-cas    CTX.CAS key 0 <payload> SCHEMA order  vs  EVALSHA <reference Lua CAS>
    read       CTX.GET key                           vs  HGETALL key

* reports requests/s, the server-side usec_per_call (INFO commandstats), the
  ratio module/baseline and whether it meets its target. Missing a target is
  reported, not an error: the exit status is 0 unless the benchmark itself
  could not run.

Usage:
    .venv/bin/python bench/bench_module.py            # full run (about 3 minutes)
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
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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
PREPOPULATED_KEY = "order:%012d"

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
        """`count` contexts named like redis-benchmark's keys: order:%012d."""
        self.fresh_db()
        batch = 2000
        for start in range(0, count, batch):
            pipe = self.r.pipeline(transaction=False)
            for i in range(start, min(start + batch, count)):
                pipe.execute_command("CTX.CAS", PREPOPULATED_KEY % i, 0, self.payload,
                                     "SCHEMA", SCHEMA_NAME)
            replies = pipe.execute(raise_on_error=False)
            bad = [x for x in replies if x != 1]
            if bad:
                raise BenchError(f"pre-populating failed: {bad[0]!r}")
        size = self.r.dbsize()
        if size != count + REGISTRY_KEYS:
            raise BenchError(f"pre-populated db holds {size} keys, expected {count + REGISTRY_KEYS}")

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
        log(f"   round {run.round}  {run.side:<16} {fmt_int(run.rps):>11} req/s  "
            f"{run.seconds:5.2f} s  usec_per_call {upc:>6}  p50 {run.p50_ms:6.3f} ms  "
            f"cpu server {run.server_cpu:4.0%} client {run.client_cpu:4.0%}"
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
    cas = Side("CTX.CAS create", "ctx.cas",
               [b"CTX.CAS", KEY_PATTERN, b"0", payload, b"SCHEMA", SCHEMA_NAME.encode()],
               CREATE_KEYSPACE, creates=True)
    hset = Side("HSET", "hset", [b"HSET", KEY_PATTERN, b"raw", payload, b"version", b"1"],
                CREATE_KEYSPACE, creates=True)
    lua = Side("EVALSHA Lua CAS", "evalsha",
               [b"EVALSHA", sha.encode(), b"1", KEY_PATTERN, b"0", payload],
               CREATE_KEYSPACE, creates=True)
    hset5 = Side("HSET 5 fields", "hset",
                 [b"HSET", KEY_PATTERN, b"raw", payload, b"version", b"1",
                  b"schema", SCHEMA_NAME.encode(), b"updated_ms", b"1764100000123",
                  b"updated_by", b""],
                 CREATE_KEYSPACE, creates=True)
    get = Side("CTX.GET", "ctx.get", [b"CTX.GET", KEY_PATTERN], read_keys, creates=False)
    hgetall = Side("HGETALL", "hgetall", [b"HGETALL", KEY_PATTERN], read_keys, creates=False)
    return [
        Workload("create", "create a context on a new key: CTX.CAS vs a plain HSET", cas, hset, 0.8),
        Workload("create-5f", "info: CTX.CAS vs HSET of the same five fields it stores "
                 "(the storage format's share of the cost)", cas, hset5, None),
        Workload("lua-cas", "create via CAS: CTX.CAS vs the reference Lua CAS (EVALSHA)",
                 cas, lua, 2.0),
        Workload("read", f"read one of {read_keys:,} contexts: CTX.GET vs HGETALL",
                 get, hgetall, 0.9),
    ]


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
    header = (f"{'workload':<9} {'module side':<15} {'req/s':>9} {'us/call':>7}  "
              f"{'baseline side':<15} {'req/s':>9} {'us/call':>7}  "
              f"{'ratio':>6} {'target':>7} {'result':<6} {'us ratio':>8}")
    log(header)
    log("-" * len(header))
    for res in results:
        m, b = res["module"], res["baseline"]

        def upc(x):
            return f"{x:.2f}" if x is not None else "?"

        ur = res["usec_ratio"]
        log(f"{res['workload']:<9} {m['label']:<15} {fmt_int(m['median_rps']):>9} "
            f"{upc(m['median_usec_per_call']):>7}  "
            f"{b['label']:<15} {fmt_int(b['median_rps']):>9} {upc(b['median_usec_per_call']):>7}  "
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
        payload = build_payload(order_class(fds))
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

        log("\nResults (median of the rounds; us/call = server-side usec_per_call "
            "from INFO commandstats)")
        print_table(results)
        for res in results:
            for side in ("module", "baseline"):
                c = res[side]["conflicts_total"]
                if c is not None and res["workload"] != "read":
                    total = res["requests_per_run"] * len(res[side]["runs"])
                    log(f"  {res['workload']}: {res[side]['label']} key collisions "
                        f"(conflicts / overwrites) {c} of {total:,} requests")
        for res in results:
            for side in ("module", "baseline"):
                sd = res[side]
                if sd["median_server_cpu"] < SERVER_BOUND_CPU:
                    bench.warnings.append(
                        f"{res['workload']}: {sd['label']} was not server-bound (server main "
                        f"thread {sd['median_server_cpu']:.0%} busy, redis-benchmark "
                        f"{sd['median_client_cpu']:.0%}); its req/s understates the server")
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
