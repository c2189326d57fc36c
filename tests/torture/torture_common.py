"""Shared pieces of the torture suite (docs/RELIABILITY.md): paths, the compiled test schemas,
a random filler for any message type and the hostile schemas of the payload storm.

Everything reuses the test suite's own helpers (tests/servers.py, tests/helpers.py ProtoLib,
tests/test_fuzz.py mutate/random_order); this module only adds what they lack.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
for p in (str(TESTS), str(REPO / "sdk")):
    if p not in sys.path:
        sys.path.insert(0, p)

from google.protobuf import descriptor_pb2  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor as FD  # noqa: E402

from helpers import SCHEMAS, ProtoLib  # noqa: E402

_protolib: ProtoLib | None = None


def protolib() -> ProtoLib:
    """The test suite's compiled schemas (grpc_tools.protoc), compiled once per process."""
    global _protolib
    if _protolib is None:
        _protolib = ProtoLib(Path(tempfile.mkdtemp(prefix="ctx-torture-protos-")))
    return _protolib


# --------------------------------------------------------------------------- random messages

WORDS = ["", "a", "é", "€", "😀", "x" * 40, "\u0000", "ß" * 3, "order", "k"]


def fill(msg, rng: random.Random, version: int | None = None, depth: int = 0,
         vfield: str = "version", budget: list | None = None) -> None:
    """Sets random values on ``msg`` (any message type; maps, oneofs, nested, recursive with a
    bounded depth and a bounded number of fields). ``version`` sets the version field."""
    budget = budget if budget is not None else [200]
    d = msg.DESCRIPTOR
    fields = list(d.fields)
    rng.shuffle(fields)
    for fd in fields:
        if budget[0] <= 0:
            break
        if fd.name == vfield and depth == 0:
            continue
        if rng.random() < 0.5:
            continue
        budget[0] -= 1
        repeated = _repeated(fd)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target = getattr(msg, fd.name)
            kf, vf = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            for _ in range(rng.randint(0, 3)):
                key = _scalar(kf, rng)
                if vf.message_type is not None:
                    if depth < 4:
                        fill(target[key], rng, None, depth + 1, vfield, budget)
                else:
                    target[key] = _scalar(vf, rng)
            continue
        if fd.message_type is not None:
            if depth >= 4:
                continue
            if repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(getattr(msg, fd.name).add(), rng, None, depth + 1, vfield, budget)
            else:
                sub = getattr(msg, fd.name)
                sub.SetInParent()
                fill(sub, rng, None, depth + 1, vfield, budget)
            continue
        if repeated:
            getattr(msg, fd.name).extend(_scalar(fd, rng) for _ in range(rng.randint(0, 4)))
        else:
            try:
                setattr(msg, fd.name, _scalar(fd, rng))
            except (ValueError, TypeError):
                pass
    if version is not None and vfield in d.fields_by_name:
        setattr(msg, vfield, version)
    _set_required(msg)


def _set_required(msg) -> None:
    for fd in msg.DESCRIPTOR.fields:
        if getattr(fd, "is_required", False) and not msg.HasField(fd.name):
            if fd.message_type is None:
                setattr(msg, fd.name, _scalar(fd, random.Random(0)))
            else:
                getattr(msg, fd.name).SetInParent()
                _set_required(getattr(msg, fd.name))


_INTS = {
    FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1),
    FD.TYPE_SFIXED32: (-2**31, 2**31 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1),
    FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(fd, rng: random.Random):
    t = fd.type
    if t in _INTS:
        lo, hi = _INTS[t]
        return rng.choice([0, 1, lo, hi, rng.randint(lo, hi)])
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice([0.0, -1.5, 1e10, float("inf")])
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_STRING:
        return rng.choice(WORDS)
    if t == FD.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    if t == FD.TYPE_ENUM:
        return rng.choice(fd.enum_type.values).number
    raise ValueError(f"no scalar for {fd.full_name}")


# --------------------------------------------------------------------------- hostile schemas

F = descriptor_pb2.FieldDescriptorProto


def _file(name: str, package: str = "h", syntax: str = "proto3") -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name=name, package=package)
    if syntax:
        f.syntax = syntax
    return f


def _field(m, name: str, number: int, type_: int, label: int = F.LABEL_OPTIONAL,
           type_name: str = "", **kw):
    fd = m.field.add(name=name, number=number, type=type_, label=label, **kw)
    if type_name:
        fd.type_name = type_name
    return fd


def _fds(*files) -> bytes:
    s = descriptor_pb2.FileDescriptorSet()
    for f in files:
        s.file.add().CopyFrom(f)
    return s.SerializeToString()


def hostile_schemas(max_schema_bytes: int) -> list[tuple[str, str, bytes]]:
    """(label, message type, serialized FileDescriptorSet) for the storm: some must be accepted,
    some rejected with CTXSCHEMA; none may crash, hang or grow the server without bound."""
    out: list[tuple[str, str, bytes]] = []

    # recursion: a message containing itself (direct and through a second type)
    f = _file("rec.proto")
    a = f.message_type.add(name="A")
    _field(a, "version", 1, F.TYPE_INT64)
    _field(a, "self", 2, F.TYPE_MESSAGE, type_name=".h.A")
    _field(a, "b", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".h.B")
    b = f.message_type.add(name="B")
    _field(b, "a", 1, F.TYPE_MESSAGE, type_name=".h.A")
    out.append(("recursion", "h.A", _fds(f)))

    # 10,000 fields: small scalars (fits upb's message size limit) and strings (does not)
    for label, types in (("10000-fields", [F.TYPE_INT32, F.TYPE_BOOL, F.TYPE_SINT32, F.TYPE_FIXED32]),
                         ("10000-strings", [F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_INT64])):
        f = _file("wide.proto")
        w = f.message_type.add(name="Wide")
        _field(w, "version", 1, F.TYPE_INT64)
        for i in range(2, 10_001):
            _field(w, f"f{i}", i, types[i % len(types)])
        out.append((label, "h.Wide", _fds(f)))

    # deep nesting: 60 and 150 nested message types, each holding the next (150 is past the
    # depth at which upb stops decoding the descriptor set itself)
    for levels in (60, 150):
        f = _file("deep.proto")
        top = f.message_type.add(name="D0")
        _field(top, "version", 1, F.TYPE_INT64)
        cur, path = top, ".h.D0"
        for i in range(1, levels):
            nested = cur.nested_type.add(name=f"D{i}")
            path = f"{path}.D{i}"
            _field(cur, "next", 2, F.TYPE_MESSAGE, type_name=path)
            _field(nested, "v", 1, F.TYPE_INT32)
            cur = nested
        out.append((f"deep-nesting-{levels}", "h.D0", _fds(f)))

    # sizes around max-schema-bytes: padding comments cannot be used, so field names are
    for delta in (-64, -1, 0, 1, 64):
        out.append((f"size{delta:+d}", "h.Big", _sized_fds(max_schema_bytes + delta)))

    # bad imports: a dependency that is missing, a type from a file not imported, a cycle
    f = _file("imp.proto")
    f.dependency.append("missing.proto")
    m = f.message_type.add(name="M")
    _field(m, "version", 1, F.TYPE_INT64)
    _field(m, "x", 2, F.TYPE_MESSAGE, type_name=".other.X")
    out.append(("missing-import", "h.M", _fds(f)))
    g = _file("other.proto", package="other")
    g.message_type.add(name="X")
    f2 = _file("imp2.proto")
    m = f2.message_type.add(name="M")
    _field(m, "version", 1, F.TYPE_INT64)
    _field(m, "x", 2, F.TYPE_MESSAGE, type_name=".other.X")
    out.append(("undeclared-import", "h.M", _fds(g, f2)))
    c1, c2 = _file("c1.proto"), _file("c2.proto")
    c1.dependency.append("c2.proto")
    c2.dependency.append("c1.proto")
    m = c1.message_type.add(name="M")
    _field(m, "version", 1, F.TYPE_INT64)
    out.append(("import-cycle", "h.M", _fds(c1, c2)))
    d1 = _file("dup.proto")
    d1.message_type.add(name="M").field.add(name="version", number=1, type=F.TYPE_INT64,
                                             label=F.LABEL_OPTIONAL)
    out.append(("duplicate-file", "h.M", _fds(d1, d1)))

    # maps, oneofs, groups (proto2), editions
    f = _file("mix.proto", syntax="proto2")
    m = f.message_type.add(name="Mix")
    _field(m, "version", 1, F.TYPE_INT64)
    e = m.nested_type.add(name="CountsEntry")
    e.options.map_entry = True
    _field(e, "key", 1, F.TYPE_STRING)
    _field(e, "value", 2, F.TYPE_MESSAGE, type_name=".h.Mix")
    _field(m, "counts", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".h.Mix.CountsEntry")
    m.oneof_decl.add(name="choice")
    _field(m, "text", 3, F.TYPE_STRING, oneof_index=0)
    _field(m, "num", 4, F.TYPE_SINT64, oneof_index=0)
    grp = m.nested_type.add(name="Grp")
    _field(grp, "g", 6, F.TYPE_INT32, F.LABEL_REQUIRED)
    _field(m, "grp", 5, F.TYPE_GROUP, F.LABEL_REPEATED, ".h.Mix.Grp")
    _field(m, "req", 7, F.TYPE_FIXED64, F.LABEL_OPTIONAL)
    out.append(("map-oneof-group", "h.Mix", _fds(f)))
    f = _file("ed.proto", syntax="editions")
    f.edition = descriptor_pb2.EDITION_2023
    m = f.message_type.add(name="E")
    _field(m, "version", 1, F.TYPE_INT64)
    sub = _field(m, "sub", 2, F.TYPE_MESSAGE, type_name=".h.E")
    sub.options.features.message_encoding = descriptor_pb2.FeatureSet.DELIMITED
    s = _field(m, "s", 3, F.TYPE_STRING)
    s.options.features.utf8_validation = descriptor_pb2.FeatureSet.NONE
    out.append(("editions-delimited", "h.E", _fds(f)))
    f = _file("ed99.proto", syntax="editions")
    f.edition = descriptor_pb2.EDITION_99999_TEST_ONLY
    f.message_type.add(name="E").field.add(name="version", number=1, type=F.TYPE_INT64)
    out.append(("edition-unknown", "h.E", _fds(f)))

    # structurally bad: no version field, wrong version type, duplicate numbers, bad numbers
    for label, mutate in (
        ("no-version-field", lambda m: m.field[0].__setattr__("name", "ver")),
        ("string-version", lambda m: m.field[0].__setattr__("type", F.TYPE_STRING)),
        ("repeated-version", lambda m: m.field[0].__setattr__("label", F.LABEL_REPEATED)),
        ("duplicate-number", lambda m: _field(m, "dup", 1, F.TYPE_INT32)),
        ("field-number-0", lambda m: _field(m, "zero", 0, F.TYPE_INT32)),
        ("field-number-2^29", lambda m: _field(m, "huge", 2**29, F.TYPE_INT32)),
        ("dangling-type", lambda m: _field(m, "dang", 3, F.TYPE_MESSAGE, type_name=".h.Nope")),
        ("enum-no-values", lambda m: _field(m, "en", 4, F.TYPE_ENUM, type_name=".h.En")),
    ):
        f = _file("bad.proto")
        m = f.message_type.add(name="M")
        _field(m, "version", 1, F.TYPE_INT64)
        mutate(m)
        if label == "enum-no-values":
            f.enum_type.add(name="En")
        out.append((label, "h.M", _fds(f)))
    out.append(("empty-set", "h.M", b""))
    out.append(("garbage", "h.M", bytes(range(256)) * 4))
    out.append(("truncated", "h.A", out[0][2][:-3]))
    return out


def _sized_fds(target: int) -> bytes:
    """A valid one-message set of exactly ``target`` bytes (or as close as varints allow)."""
    def build(pad: int) -> bytes:
        f = _file("big.proto")
        m = f.message_type.add(name="Big")
        _field(m, "version", 1, F.TYPE_INT64)
        n, i = pad, 2
        while n > 0:
            chunk = min(n, 200)
            _field(m, f"f{i}_" + "x" * chunk, i, F.TYPE_INT32)
            n -= chunk
            i += 1
        return _fds(f)
    pad = max(0, target - len(build(0)))
    for _ in range(60):
        data = build(pad)
        if len(data) == target or pad == 0:
            return data
        pad = max(0, pad + (target - len(data)))
    return data


def _repeated(fd) -> bool:
    r = getattr(fd, "is_repeated", None)
    return r if r is not None else fd.label == FD.LABEL_REPEATED


# --------------------------------------------------------------------------- history vs value


def history_problems(store, key: str, maxlen: int, client=None) -> list[str]:
    """History and value never disagree (docs/PROTOCOL.md, "History"): for context ``key`` of a
    schema registered with ``history=maxlen`` from before its first write, read through ``store``
    (an SDK Store on a standalone server) and its stream ``__ctxh:<key>`` read raw:

    - no context: no stream;
    - else the stream's last entry is the context's version (id ``<version>-0``) with its
      incarnation, updated_ms and updated_by; no entry beyond it; every entry of the context's
      incarnation, versions contiguous, exactly ``min(maxlen, version)`` of them (so none was
      lost and MAXLEN holds); the entry of version 1 is the ``create``, no other one is.

    Reads the value, then the stream, then the value again, until both reads of the value agree
    (the caller has stopped its writers; an in-doubt write may still land)."""
    r = client if client is not None else store.client
    stream = f"__ctxh:{key}"
    for _ in range(10):
        before = store.get(key)
        entries = r.xrange(stream, "-", "+")
        after = store.get(key)
        if before == after:
            break
    else:
        return [f"{key}: the value kept changing while its history was read"]
    snap = after
    if snap is None:
        return [f"{key}: no context, but its stream has {len(entries)} entries"] if entries \
            else []
    if not entries:
        return [f"{key}: version {snap.version} and no history"]
    out = []
    versions = []
    for eid, fields in entries:
        eid = eid.decode() if isinstance(eid, bytes) else eid
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        ms, seq = eid.split("-")
        v = int(ms)
        versions.append(v)
        if seq != "0":
            out.append(f"{key}: entry id {eid} (sequence not 0)")
        inc = f.get("i", b"").decode()
        if inc != snap.incarnation:
            out.append(f"{key}: entry {v} of incarnation {inc!r}, the context's is "
                       f"{snap.incarnation!r}")
        kind = f.get("k", b"").decode()
        if (v == 1) != (kind == "create"):
            out.append(f"{key}: entry {v} has kind {kind!r}")
    last = dict((k.decode() if isinstance(k, bytes) else k, val)
                for k, val in entries[-1][1].items())
    if versions[-1] != snap.version:
        out.append(f"{key}: the stream's last entry is version {versions[-1]}, the context's "
                   f"{snap.version}")
    else:
        if int(last.get("t", b"-1")) != snap.updated_ms:
            out.append(f"{key}: last entry updated_ms {last.get('t')!r}, context "
                       f"{snap.updated_ms}")
        if last.get("b", b"").decode() != snap.updated_by:
            out.append(f"{key}: last entry writer {last.get('b')!r}, context "
                       f"{snap.updated_by!r}")
    want = list(range(max(1, snap.version - maxlen + 1), snap.version + 1))
    if versions != want:
        show = versions if len(versions) <= 8 else versions[:3] + ["..."] + versions[-3:]
        out.append(f"{key}: stream versions {show} ({len(versions)} entries), expected "
                   f"{want[0]}..{want[-1]} ({len(want)}, MAXLEN {maxlen})")
    return out
