#!/usr/bin/env python3
"""The Lua engine's server cost per validated write, next to the module and a reference Lua CAS.

One redis-server 7 with the module loaded runs, side by side, for each schema of a size sweep
(the demo's Order, then schemas with 5x and 20x its fields):

    ref        EVALSHA of the reference non-validating Lua CAS (HGET version, compare, HSET raw
               and version): what a client would run without ctxlink
    lua-cas    EVALSHA of the Lua engine's cas script for the schema (ctxlink._scripts: prelude
               + the plan the C core generates + cas.lua), CAS with a 32-byte write id, as the
               SDK sends it
    lua-patch  the same script as CTX.PATCH of one top-level field (FIELDS 1 field), with an id
    module     CTX.CAS ... ID (the module)
    floor      EVALSHA of a script with lua-cas's key and 19 ARGV that makes only the commands a
               write of the protocol makes (GET the value, HMGET the registry entry, TIME, SET,
               PUBLISH on the wait channel) and checks nothing: what any Lua engine of this
               protocol pays before it validates a byte

Every write is an update of a context that exists (version v -> v + 1) with a 100-250 byte
payload that carries its version: validated writes, never conflicts. Server time per call comes
from INFO commandstats (usec_per_call of evalsha or ctx.cas after CONFIG RESETSTAT): everything a
script does is in it, the network and the client are not. Sides are interleaved (each round runs
every side of every schema once, --writes writes each), and the best of --rounds rounds counts.

    .venv/bin/python bench/bench_lua.py            # make bench runs it after bench_module.py
    .venv/bin/python bench/bench_lua.py --quick    # a smoke run (300 writes, 2 rounds)

Targets: lua-cas <= 3x ref for every schema; lua-cas growing <= 1.5x from the small
to the 20x schema; lua-patch <= 1.5x lua-cas. The exit status is 0 either way (a benchmark, not
a test); the table says which targets hold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("CTXLINK_SDK") or str(ROOT / "sdk"))

import redis  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

from ctxlink._order_schema import file_descriptor_proto  # noqa: E402
from ctxlink._lua import _lua_argv  # noqa: E402
from ctxlink._protocol import new_incarnation  # noqa: E402
from ctxlink._scripts import entry_script  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

REF_CAS = (
    "local v = redis.call('HGET', KEYS[1], 'version'); "
    "if (v or '0') ~= ARGV[1] then return redis.call('HGETALL', KEYS[1]) end; "
    "redis.call('HSET', KEYS[1], 'raw', ARGV[2], 'version', ARGV[1] + 1); "
    "return ARGV[1] + 1"
)
FLOOR = (
    "local val = redis.call('GET', KEYS[1]) or ''; "
    "redis.call('HMGET', '__ctx:schema:' .. ARGV[8], 'digest', 'history', 'hpayload', 'feed', "
    "'window'); "
    "local t = redis.call('TIME'); "
    "local v = tonumber(ARGV[1]) + 1; "
    "redis.call('SET', KEYS[1], string.sub(val, 1, 64) .. ARGV[2], 'KEEPTTL'); "
    "if ARGV[17] ~= '' then redis.call(ARGV[18] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[17], "
    "v) end; "
    "return v"
)
ORDER_FIELDS = 12  # Order 10 + LineItem 2
PIPELINE = 100
#: The Store settings _lua_argv reads (the SDK's defaults).
_LIMITS: Any = SimpleNamespace(max_payload_bytes=1 << 20, max_depth=32, unknown_fields="reject")

_F = descriptor_pb2.FieldDescriptorProto


# ---------------------------------------------------------------- schemas and payloads

def wide_file(factor: int) -> descriptor_pb2.FileDescriptorProto:
    """A schema with ``factor`` times the demo Order's fields: a root message ``Wide`` with a
    version field, string and integer fields and a repeated ``Item`` (itself 1/4 of the extra
    fields), plus a closed-enum-free proto3 file like order.proto."""
    total = ORDER_FIELDS * factor
    item_n = max(2, total // 4)
    root_n = total - item_n
    fdp = descriptor_pb2.FileDescriptorProto(name=f"wide{factor}.proto",
                                             package=f"bench.w{factor}", syntax="proto3")
    item = fdp.message_type.add(name="Item")
    for i in range(1, item_n + 1):
        item.field.add(name=f"i{i}", number=i, label=_F.LABEL_OPTIONAL,
                       type=_F.TYPE_STRING if i % 2 else _F.TYPE_INT64)
    wide = fdp.message_type.add(name="Wide")
    wide.field.add(name="version", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    wide.field.add(name="items", number=2, label=_F.LABEL_REPEATED, type=_F.TYPE_MESSAGE,
                   type_name=f".bench.w{factor}.Item")
    for i in range(3, root_n + 1):
        wide.field.add(name=f"f{i}", number=i, label=_F.LABEL_OPTIONAL,
                       type=_F.TYPE_STRING if i % 3 else _F.TYPE_INT64)
    return fdp


class Schema:
    """One schema of the sweep: its registry name, type, descriptor set and a payload maker."""

    def __init__(self, label: str, name: str, fdp: descriptor_pb2.FileDescriptorProto,
                 type_name: str, fill: Callable[[Any], None], fields: int, patch_field: int):
        self.label, self.name, self.type_name = label, name, type_name
        self.fds = descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        self.cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))
        self.fill = fill
        self.fields = fields
        self.patch_field = patch_field
        self.vf = self.cls.DESCRIPTOR.fields_by_name["version"].number

    def payload(self, version: int) -> bytes:
        m = self.cls()
        self.fill(m)
        m.version = version
        return m.SerializeToString()

    def patch_payload(self, version: int) -> bytes:
        """The one field a patch writes (``patch_field``), changed on every write."""
        m = self.cls()
        fd = self.cls.DESCRIPTOR.fields_by_number[self.patch_field]
        setattr(m, fd.name, f"patched-{version}" if fd.type == fd.TYPE_STRING else version)
        return m.SerializeToString()


def fill_order(m: Any) -> None:
    m.order_id = "order-000123-abcdef"
    m.status = 2
    m.base_price = 129900
    m.discount = 1500
    m.final_price = 128400
    m.inventory_reserved = True
    m.last_updated_by = "pricing-agent-7"
    m.last_updated_epoch = 1764806400
    for k in range(3):
        it = m.items.add()
        it.sku = f"SKU-{k:04d}-widget-blue"
        it.quantity = k + 1


def fill_wide(factor: int) -> Callable[[Any], None]:
    root_n = ORDER_FIELDS * factor - max(2, ORDER_FIELDS * factor // 4)

    def fill(m: Any) -> None:
        # about the Order payload's size, fields spread over the whole number range
        numbers = [3 + (root_n - 3) * k // 9 for k in range(10)]
        for n in numbers:
            fd = m.DESCRIPTOR.fields_by_number[n]
            setattr(m, fd.name, f"value-{n}" if fd.type == fd.TYPE_STRING else n * 1000)
        for k in range(3):
            it = m.items.add()
            it.i1 = f"item-{k}-name"
            it.i2 = k * 7
    return fill


def schemas() -> list[Schema]:
    out = [Schema("Order (1x, 12 fields)", "bench-order", file_descriptor_proto(),
                  "ctxlink.example.Order", fill_order, ORDER_FIELDS, 5)]
    for factor in (5, 20):
        out.append(Schema(f"Wide{factor} ({factor}x, {ORDER_FIELDS * factor} fields)",
                          f"bench-wide{factor}", wide_file(factor), f"bench.w{factor}.Wide",
                          fill_wide(factor), ORDER_FIELDS * factor, 3))
    return out


# ---------------------------------------------------------------- the sides

class Side:
    """Writes of one kind on ``nkeys`` contexts of one schema, version by version."""

    def __init__(self, kind: str, schema: Schema, nkeys: int, r: redis.Redis, shas: dict):
        self.kind, self.schema, self.nkeys, self.r, self.shas = kind, schema, nkeys, r, shas
        self.prefix = f"{kind}:{schema.name}:"
        self.version = 0  # every key is at this version
        self.wid = 0
        self.command = "ctx.cas" if kind == "module" else "evalsha"

    def args(self, i: int) -> tuple[Any, ...]:
        key = f"{self.prefix}{i}"
        v = self.version
        self.wid += 1
        wid = f"{self.kind}-{self.wid:012d}-{os.getpid():08d}-bench"[:32]
        s = self.schema
        given = 1 if v == 0 else 0
        if self.kind == "ref":
            return ("EVALSHA", self.shas["ref"], 1, key, v, s.payload(v + 1))
        if self.kind == "module":
            extra = ("SCHEMA", s.name) if v == 0 else ()
            return ("CTX.CAS", key, v, s.payload(v + 1), *extra, "ID", wid)
        # the ARGV the SDK sends (ctxlink._lua._lua_argv: 1..18, with the key's wait channel
        # and a fresh incarnation on every write)
        if self.kind == "floor":
            argv = _lua_argv(_LIMITS, v, s.payload(v + 1), given == 1, None, s.name, "", wid,
                             None, (), None, None, new_incarnation(), key)
            return ("EVALSHA", self.shas["floor"], 1, key, *argv)
        if self.kind == "lua-cas" or v == 0:
            sha = self.shas[(s.name, "cas")]
            argv = _lua_argv(_LIMITS, v, s.payload(v + 1), given == 1, None, s.name, "", wid,
                             None, (), None, None, new_incarnation(), key)
        else:
            sha = self.shas[(s.name, "patch")]
            argv = _lua_argv(_LIMITS, v, s.patch_payload(v + 1), False, None, s.name, "", wid,
                             (s.patch_field,), (), None, None, new_incarnation(), key)
        return ("EVALSHA", sha, 1, key, *argv)

    def pass_(self) -> None:
        """One write to every key (v -> v + 1); every reply must be the new version."""
        pipe = self.r.pipeline(transaction=False)
        want = self.version + 1
        for i in range(self.nkeys):
            pipe.execute_command(*self.args(i))
            if len(pipe.command_stack) >= PIPELINE or i == self.nkeys - 1:
                for reply in pipe.execute(raise_on_error=True):
                    got = reply[0] if isinstance(reply, list) else reply
                    if int(got) != want:
                        raise SystemExit(f"{self.kind} {self.schema.name}: reply {reply!r}, "
                                         f"expected version {want}")
                pipe = self.r.pipeline(transaction=False)
        self.version = want


def usec_per_call(r: redis.Redis, command: str) -> tuple[float, int]:
    stats = r.info("commandstats").get(f"cmdstat_{command}")
    if not stats:
        return 0.0, 0
    return float(stats["usec"]) / stats["calls"], int(stats["calls"])


def measure(side: Side, writes: int) -> float:
    """Server usec per call of ``writes`` writes of one side (passes over its keys)."""
    side.r.config_resetstat()
    for _ in range(max(1, writes // side.nkeys)):
        side.pass_()
    usec, calls = usec_per_call(side.r, side.command)
    assert calls >= writes, (side.kind, calls, writes)
    return usec


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=1500, help="validated writes per side per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (the best counts)")
    ap.add_argument("--keys", type=int, default=500, help="contexts per side")
    ap.add_argument("--quick", action="store_true", help="300 writes, 2 rounds")
    ap.add_argument("--module", default=None, help="path of ctxlink.so")
    args = ap.parse_args()
    if args.quick:
        args.writes, args.rounds, args.keys = 300, 2, 150
    module = Path(args.module) if args.module else find_module()
    sweep = schemas()
    kinds = ("ref", "lua-cas", "lua-patch", "module", "floor")
    best: dict[tuple[str, str], float] = {}
    sizes: dict[str, tuple[int, int]] = {}
    with EmbeddedRedis(module=module) as server:
        r = server.client()
        shas = {"ref": r.script_load(REF_CAS), "floor": r.script_load(FLOOR)}
        for s in sweep:
            r.execute_command("CTX.SCHEMA.SET", s.name, s.type_name, s.fds)
            entry = r.hmget(f"__ctx:schema:{s.name}", "type", "fds", "vfield", "digest")
            for flavor in ("cas", "patch"):
                script = entry_script(*entry, flavor=flavor)
                shas[(s.name, flavor)] = r.script_load(script.source)
                assert shas[(s.name, flavor)] == script.sha
                if flavor == "cas":
                    sizes[s.name] = (len(script.source), len(s.payload(1)))
        sides = [Side(k, s, args.keys, r, shas) for s in sweep for k in kinds]
        for side in sides:  # create every context (version 1), not measured
            side.pass_()
        for rnd in range(args.rounds):
            for side in sides:
                usec = measure(side, args.writes)
                key = (side.schema.name, side.kind)
                best[key] = min(best.get(key, usec), usec)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        version = r.info("server")["redis_version"]

    print(f"\nServer usec per validated write (INFO commandstats), best of {args.rounds} rounds "
          f"of {args.writes} writes per side, interleaved; redis {version}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    head = (f"{'schema':<26} {'payload':>7} {'script':>7} {'ref':>6} {'lua-cas':>8} "
            f"{'lua-patch':>9} {'module':>7} {'floor':>6} {'cas/ref':>8} {'patch/cas':>9} "
            f"{'cas/module':>10} {'floor/ref':>9}")
    print(head)
    print("-" * len(head))
    ok = True
    for s in sweep:
        ref, cas, patch, mod, floor = (best[(s.name, k)] for k in kinds)
        script_len, payload_len = sizes[s.name]
        print(f"{s.label:<26} {payload_len:>7} {script_len:>7} {ref:>6.2f} {cas:>8.2f} "
              f"{patch:>9.2f} {mod:>7.2f} {floor:>6.2f} {cas / ref:>7.2f}x {patch / cas:>8.2f}x "
              f"{cas / mod:>9.2f}x {floor / ref:>8.2f}x")
        ok &= cas / ref <= 3.0 and patch / cas <= 1.5
    small, large = best[(sweep[0].name, "lua-cas")], best[(sweep[-1].name, "lua-cas")]
    growth = large / small
    ok &= growth <= 1.5
    print(f"\nlua-cas growth from {sweep[0].label} to {sweep[-1].label}: {growth:.2f}x")
    print("targets (cas/ref <= 3x, patch/cas <= 1.5x, growth <= 1.5x): "
          + ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
