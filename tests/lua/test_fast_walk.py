"""The Lua engine's fast walk (lua/cas.lua, ``fwalk``) may only accept what the generic walk
accepts, with the same version field: thousands of random mutations of valid payloads go through
the cas script as the SDK assembles it, through the same script with the fast walk cut out, and
through the module's CTX.CAS, and the three answers (the reply, or the error's code and full
text) must be the same.

Schemas: the demo's Order (proto3), a 240-field proto3 schema (two-byte tags), and two proto2
messages without required fields (closed enums, a group, packed and unpacked repeated scalars,
recursion, field numbers past the fast walk's table, fixed-width values) whose version fields are
an int64 with a one-byte tag and a fixed32 with a two-byte tag.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional, Union

import pytest
import redis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from test_lua_plan import order_fds, plan_of, wide_fds
from wire import f_varint, long_varint, tag

from ctxlink.embedded import EmbeddedRedis, find_module

#: the line of cas.lua that runs the fast walk (replaced by "if true then" for the reference)
FAST_LINE = "if ANY_REQ or not fwalk(1,1,n+1,0)then"
ORDER = "ctxlink.example.Order"
SEED = 20261204
PER_SCHEMA = 1500

_F = descriptor_pb2.FieldDescriptorProto

#: ARGV[16] of cas.lua: the incarnation a create (or an upgrade) gives the context
FRESH = "00000000000000a1"


def _field(msg: Any, name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL,
           type_name: str = "", packed: Optional[bool] = None) -> None:
    f = msg.field.add(name=name, number=number, label=label, type=ftype)
    if type_name:
        f.type_name = type_name
    if packed is not None:
        f.options.packed = packed


def proto2_fds() -> bytes:
    """``t.fast.Node`` (int64 version = 1) and ``t.fast.Fixed`` (fixed32 version = 19)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="fast.proto", package="t.fast", syntax="proto2")
    level = fdp.enum_type.add(name="Level")
    for name, number in (("LOW", 0), ("MID", 1), ("HIGH", 5), ("NEG", -3), ("BIG", 300)):
        level.value.add(name=name, number=number)
    for mname, vnum, vtype in (("Node", 1, _F.TYPE_INT64), ("Fixed", 19, _F.TYPE_FIXED32)):
        m = fdp.message_type.add(name=mname)
        me = f".t.fast.{mname}"
        _field(m, "version", vnum, vtype)
        if vnum != 1:
            _field(m, "one", 1, _F.TYPE_INT64)
        _field(m, "label", 2, _F.TYPE_STRING)
        _field(m, "kids", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, me)
        _field(m, "next", 4, _F.TYPE_MESSAGE, type_name=me)
        _field(m, "level", 7, _F.TYPE_ENUM, type_name=".t.fast.Level")
        _field(m, "levels", 8, _F.TYPE_ENUM, _F.LABEL_REPEATED, ".t.fast.Level")
        _field(m, "plevels", 9, _F.TYPE_ENUM, _F.LABEL_REPEATED, ".t.fast.Level", packed=True)
        _field(m, "box", 10, _F.TYPE_GROUP, type_name=f"{me}.Box")
        box = m.nested_type.add(name="Box")
        _field(box, "a", 11, _F.TYPE_INT32)
        _field(box, "t", 13, _F.TYPE_MESSAGE, type_name=me)
        _field(m, "zs", 14, _F.TYPE_SINT32, _F.LABEL_REPEATED)
        _field(m, "f4", 15, _F.TYPE_FIXED32, _F.LABEL_REPEATED, packed=True)
        _field(m, "f8", 16, _F.TYPE_DOUBLE, _F.LABEL_REPEATED)
        _field(m, "blob", 17, _F.TYPE_BYTES)
        _field(m, "u", 18, _F.TYPE_UINT32)
        _field(m, "s64", 20, _F.TYPE_SFIXED64)
        _field(m, "mid", 200, _F.TYPE_INT64)
        _field(m, "far", 300, _F.TYPE_STRING)
        _field(m, "farther", 5000, _F.TYPE_MESSAGE, type_name=me)
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


TEXTS = ["", "a", "plain text", "é", "中文", "😀", "x" * 130, "y" * 20000]
INTS = [0, 1, 2, 127, 128, 300, 16383, 16384, 1 << 31, 1 << 40, (1 << 63) - 1, -1, -300]


def _repeated(fd: Any) -> bool:
    rep = getattr(fd, "is_repeated", None)  # protobuf 6; older: label
    return bool(rep) if rep is not None else fd.label == _F.LABEL_REPEATED


def _fill(m: Any, rng: random.Random, version: int, depth: int, ascii: bool = False) -> None:
    """Random values in some fields of ``m`` (a generated message class instance)."""
    for fd in m.DESCRIPTOR.fields:
        if fd.name == "version" or rng.random() < 0.45:
            continue
        n = rng.randint(1, 3) if _repeated(fd) else 1
        for _ in range(n):
            if fd.type in (fd.TYPE_MESSAGE, fd.TYPE_GROUP):
                if depth >= 3:
                    break
                sub = getattr(m, fd.name).add() if _repeated(fd) \
                    else getattr(m, fd.name)
                _fill(sub, rng, version, depth + 1, ascii)
                sub.SetInParent()
                continue
            value = _value(fd, rng, ascii)
            if _repeated(fd):
                getattr(m, fd.name).append(value)
            else:
                setattr(m, fd.name, value)
    if "version" in m.DESCRIPTOR.fields_by_name and depth == 0:
        m.version = version


def _value(fd: Any, rng: random.Random, ascii: bool = False) -> Any:
    if fd.type == fd.TYPE_STRING:
        if ascii:
            return rng.choice(["", "a", "plain text", "x" * 130])
        return rng.choice(TEXTS[:-1] if rng.random() < 0.98 else TEXTS)
    if fd.type == fd.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if fd.type == fd.TYPE_ENUM:
        return rng.choice([v.number for v in fd.enum_type.values])
    if fd.type == fd.TYPE_BOOL:
        return rng.random() < 0.5
    if fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        return rng.random() * 1000
    x = rng.choice(INTS)
    if ascii:  # ... and no 10-byte varint either
        x = abs(x)
    if fd.type in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
        return abs(x) % (1 << 32)
    if fd.type in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32):
        return max(min(x, (1 << 31) - 1), -(1 << 31))
    if fd.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
        return abs(x)
    return x


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits: a flipped, replaced, inserted or deleted byte, a cut, a
    repeated slice, an appended raw field, a padded varint."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[at % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[at % len(b)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x0B, 0x0C, 0x92,
                                         rng.randrange(256)])
        elif op == 2:
            b[at:at] = bytes([rng.randrange(256)])
        elif op == 3 and b:
            del b[at % len(b)]
        elif op == 4:
            del b[at:]
        elif op == 5 and b:
            start = rng.randrange(len(b))
            b[at:at] = b[start:start + rng.randint(1, 12)]
        elif op == 6:
            field = rng.choice([1, 2, 3, 5, 6, 15, 16, 19, 99, 200, 255, 256, 300, 2047, 2048])
            wt = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
            b[at:at] = tag(field, wt) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 5)))
        elif op == 7:
            b[at:at] = f_varint(rng.choice([1, 2, 3]), rng.choice(INTS))
        else:
            b[at:at] = tag(rng.choice([1, 2, 9]), 0) + long_varint(rng.randint(0, 127),
                                                                    rng.randint(1, 11))
    return bytes(b)


class Case:
    """One registered schema: its generated message class and the two cas scripts."""

    def __init__(self, name: str, fds: bytes, type_name: str, make: Callable[..., bytes]):
        self.name, self.fds, self.type_name, self.make = name, fds, type_name, make


def _message_class(fds: bytes, type_name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(fds).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))


def cases() -> list[tuple[str, bytes, str]]:
    wide, wide_type = wide_fds(240)
    p2 = proto2_fds()
    return [("order", order_fds(), ORDER), ("wide", wide, wide_type),
            ("node", p2, "t.fast.Node"), ("fixed", p2, "t.fast.Fixed")]


def payloads(fds: bytes, type_name: str, rng: random.Random, count: int) -> list[bytes]:
    cls = _message_class(fds, type_name)
    valid = []
    for i in range(60):
        m = cls()
        _fill(m, rng, 1 if i % 4 else rng.choice([1, 2, 0]), 0)
        valid.append(m.SerializeToString())
    out = list(valid)
    while len(out) < count:
        out.append(_mutate(rng.choice(valid), rng))
    return out


Outcome = tuple[str, Union[int, str]]


def _outcomes(r: redis.Redis, command: Callable[[Any, int, bytes], None],
              items: list[bytes], prefix: str) -> list[Outcome]:
    pipe = r.pipeline(transaction=False)
    for i, payload in enumerate(items):
        command(pipe, i, payload)
    out: list[Outcome] = []
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, redis.ResponseError):
            out.append(("error", str(reply)))
        elif isinstance(reply, Exception):
            raise reply
        else:
            out.append(("ok", int(reply)))
    return out


LIMITS = {"reject": (6, "reject"), "allow": (3, "allow")}


@pytest.mark.parametrize("mode", sorted(LIMITS))
def test_fast_walk_agrees_with_the_generic_walk_and_the_module(mode):
    max_depth, unknown = LIMITS[mode]
    args = ["max-depth", str(max_depth), "unknown-fields", unknown]
    rng = random.Random(f"{SEED}-{mode}")
    seen_ok = seen_err = 0
    with EmbeddedRedis(module=find_module(), module_args=args) as server:
        r = server.client()
        for name, fds, type_name in cases():
            assert r.execute_command("CTX.SCHEMA.SET", name, type_name, fds) == 1
            script = plan_of(fds, type_name).source.decode()
            assert script.count(FAST_LINE) == 1
            fast = r.script_load(script)
            slow = r.script_load(script.replace(FAST_LINE, "if true then"))
            items = payloads(fds, type_name, rng, PER_SCHEMA)

            def lua(sha: str, prefix: str,
                    name: str = name) -> Callable[[Any, int, bytes], None]:
                def send(pipe: Any, i: int, payload: bytes) -> None:
                    pipe.evalsha(sha, 1, f"{prefix}:{name}:{i}", 0, payload, 1, "", 1 << 20,
                                 max_depth, unknown, name, "", f"id-{i}", "cas", "", "", "",
                                 "", FRESH)
                return send

            def module(pipe: Any, i: int, payload: bytes, name: str = name) -> None:
                pipe.execute_command("CTX.CAS", f"m:{name}:{i}", 0, payload, "SCHEMA", name,
                                     "ID", f"id-{i}", "INC", FRESH)

            got_fast = _outcomes(r, lua(fast, "f"), items, "f")
            got_slow = _outcomes(r, lua(slow, "g"), items, "g")
            got_mod = _outcomes(r, module, items, "m")
            for k, item in enumerate(items):
                assert got_fast[k] == got_slow[k], (name, item.hex(), got_fast[k], got_slow[k])
                assert got_fast[k] == got_mod[k], (name, item.hex(), got_fast[k], got_mod[k])
                if got_fast[k][0] == "ok":
                    # the same stored payload, version and window
                    assert r.get(f"f:{name}:{k}")[24:] == r.get(f"g:{name}:{k}")[24:]
            seen_ok += sum(1 for o in got_fast if o[0] == "ok")
            seen_err += sum(1 for o in got_fast if o[0] == "error")
    # the corpus exercises both verdicts
    assert seen_ok > 300 and seen_err > 2000, (seen_ok, seen_err)


def _clear(m: Any, names: tuple[str, ...]) -> None:
    """``m`` without the fields ``names``, at every depth."""
    for fd, value in m.ListFields():
        if fd.name in names:
            m.ClearField(fd.name)
        elif fd.type == fd.TYPE_MESSAGE:
            for sub in (value if _repeated(fd) else [value]):
                _clear(sub, names)


def test_the_fast_walk_accepts_the_benchmark_and_demo_payloads():
    """Not a soundness check: the fast walk is there for these (it returns true): ASCII strings,
    varints of up to 9 bytes, lengths of up to 2 bytes, tags of fields 1 to 255."""
    with EmbeddedRedis(module=find_module()) as server:
        r = server.client()
        for name, fds, type_name in cases():
            assert r.execute_command("CTX.SCHEMA.SET", name, type_name, fds) == 1
            script = plan_of(fds, type_name).source.decode()
            probe = script.replace(FAST_LINE, "do return fwalk(1, 1, n + 1, 0) and 1 or 0 end "
                                              "if true then")
            cls = _message_class(fds, type_name)
            m = cls()
            _fill(m, random.Random(7), 1, 0, ascii=True)
            _clear(m, ("box", "plevels", "f4", "mid", "far", "farther", "level", "levels"))
            got = r.eval(probe, 1, f"p:{name}", 0, m.SerializeToString(), 1, "", 1 << 20, 32,
                         "reject", name, "", "id")
            assert got == 1, name


def test_patches_over_hand_made_stored_payloads_agree_with_the_generic_walk_and_the_module():
    """CTX.PATCH reads the stored payload's top level (an inline fast path for short tags and
    values, then the general reader) and walks the merged payload (the fast walk first): stored
    payloads planted by hand (valid ones and their mutations) patched with one field give the
    same reply or error text on the module, the patch script and the patch script without the
    fast walk."""
    from ctxvalue import encode

    rng = random.Random(f"{SEED}-patch")
    with EmbeddedRedis(module=find_module(), module_args=["max-depth", "6"]) as server:
        r = server.client()
        fds = order_fds()
        assert r.execute_command("CTX.SCHEMA.SET", "order", ORDER, fds) == 1
        script = plan_of(fds, ORDER, flavor="patch").source.decode()
        assert script.count(FAST_LINE) == 1
        fast = r.script_load(script)
        slow = r.script_load(script.replace(FAST_LINE, "if true then"))
        base = payloads(fds, ORDER, rng, 1)[0]
        edges = [base + raw for raw in (
            b"\x18" + b"\xff" * 9 + bytes([last]) for last in (0, 1, 2, 0x7F))] + [
            base + b"\x18" + b"\xff" * 10 + b"\x00", base + b"\x98\x00\x05",
            base + b"\x80\x00\x05", base + b"\x88\x80\x00\x05", base + b"\x0a\x05abc",
            base + b"\x0a\x80\x01" + b"x" * 128, base + b"\x09" + b"\0" * 7,
            base + b"\x0d" + b"\0" * 3, base + b"\x98", base + b"\xd2\x01\x02\x08\x01"]
        stored = edges + payloads(fds, ORDER, rng, 1200)
        patches = [(1, f_len_ascii(1, "patched")), (5, f_varint(5, 150)), (5, f_varint(5, 3)),
                   (10, b""), (4, f_varint(4, 1 << 40))]
        plans = []
        for i, payload in enumerate(stored):
            field, patch = rng.choice(patches)
            if rng.random() < 0.2:
                patch = _mutate(patch, rng)
            value = encode(1, 1000, [(b"\0" * 8, 1 << 31)], b"order", b"w", payload)
            for prefix in ("m", "f", "g"):
                r.set(f"{prefix}:p:{i}", value)
            plans.append((field, patch))

        def lua(sha: str, prefix: str) -> Callable[[Any, int, bytes], None]:
            def send(pipe: Any, i: int, _: bytes) -> None:
                field, patch = plans[i]
                pipe.evalsha(sha, 1, f"{prefix}:p:{i}", 1, patch, 0, "", 1 << 20, 6, "reject",
                             "order", "", f"id-{i}", "patch", str(field), "", "", "", FRESH)
            return send

        def module(pipe: Any, i: int, _: bytes) -> None:
            field, patch = plans[i]
            pipe.execute_command("CTX.PATCH", f"m:p:{i}", 1, patch, "FIELDS", 1, field,
                                 "READS", 0, "ID", f"id-{i}")

        got = {k: _replies(r, fn, stored) for k, fn in
               (("fast", lua(fast, "f")), ("slow", lua(slow, "g")), ("module", module))}
        for i in range(len(stored)):
            assert got["fast"][i] == got["slow"][i] == got["module"][i], (
                stored[i].hex(), plans[i], got["fast"][i], got["slow"][i], got["module"][i])
        oks = sum(1 for o in got["fast"] if o[0] == "ok")
        assert oks > 100 and len(stored) - oks > 300, oks


def f_len_ascii(field: int, text: str) -> bytes:
    return tag(field, 2) + bytes([len(text)]) + text.encode()


def _replies(r: redis.Redis, command: Callable[[Any, int, bytes], None],
             items: list[bytes]) -> list[tuple[str, Any]]:
    pipe = r.pipeline(transaction=False)
    for i, payload in enumerate(items):
        command(pipe, i, payload)
    out: list[tuple[str, Any]] = []
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, redis.ResponseError):
            out.append(("error", str(reply)))
        elif isinstance(reply, Exception):
            raise reply
        else:
            out.append(("ok", reply))
    return out
