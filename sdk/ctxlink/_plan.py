"""The validation plan of the Lua engine (docs/PROTOCOL.md, "The validation plan").

A plan is the part of a descriptor set the Lua wire walk needs, as canonical JSON:

    {"v":1,"digest":"<entry digest>","vf":<number>,"vk":"<type>",
     "m":[{"f":{"<number>":[<kind>,<repeated>,<ref>],...},"r":[<required numbers>]},...],
     "e":[[<sorted values of a closed enum>],...]}

Messages are numbered breadth-first from the root (fields visited by ascending number, a type
reached twice keeps its first number); closed enums in the order they are first met.
Everything here is pure: no I/O, no global state.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

__all__ = ["compile_plan", "registry_digest", "PlanError"]

PLAN_FORMAT = 1

_FD = FieldDescriptor

# Kind letters of the plan, by protobuf field type.
_KINDS: dict[int, str] = {
    _FD.TYPE_INT32: "v",
    _FD.TYPE_INT64: "v",
    _FD.TYPE_UINT32: "v",
    _FD.TYPE_UINT64: "v",
    _FD.TYPE_BOOL: "v",
    _FD.TYPE_ENUM: "v",  # "e" instead when the enum is closed
    _FD.TYPE_SINT32: "z",
    _FD.TYPE_SINT64: "z",
    _FD.TYPE_FIXED32: "4",
    _FD.TYPE_SFIXED32: "4",
    _FD.TYPE_FLOAT: "4",
    _FD.TYPE_FIXED64: "8",
    _FD.TYPE_SFIXED64: "8",
    _FD.TYPE_DOUBLE: "8",
    _FD.TYPE_BYTES: "b",
    _FD.TYPE_STRING: "s",
    _FD.TYPE_MESSAGE: "m",
    _FD.TYPE_GROUP: "g",
}

# The integer types a version field may have, by protobuf type name.
_VERSION_KINDS: dict[int, str] = {
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_SINT32: "sint32",
    _FD.TYPE_SINT64: "sint64",
    _FD.TYPE_FIXED32: "fixed32",
    _FD.TYPE_FIXED64: "fixed64",
    _FD.TYPE_SFIXED32: "sfixed32",
    _FD.TYPE_SFIXED64: "sfixed64",
}


class PlanError(ValueError):
    """The descriptor set cannot be turned into a plan (bad set, unknown type, bad version field)."""


def registry_digest(type_name: str | bytes, vfield: str | bytes, fds: bytes) -> str:
    """The registry entry's ``digest``: sha1 of ``<len>:<type><len>:<vfield><fds>`` (byte lengths)."""
    t = type_name.encode() if isinstance(type_name, str) else bytes(type_name)
    v = vfield.encode() if isinstance(vfield, str) else bytes(vfield)
    h = hashlib.sha1()
    h.update(b"%d:" % len(t))
    h.update(t)
    h.update(b"%d:" % len(v))
    h.update(v)
    h.update(bytes(fds))
    return h.hexdigest()


def load_pool(fds: bytes) -> descriptor_pool.DescriptorPool:
    """A pool holding every file of a serialized FileDescriptorSet, imports first (files may
    come in any order). Raises PlanError with the reason a CTX.SCHEMA.SET would give."""
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(bytes(fds))
    except Exception as e:  # protobuf raises DecodeError (a Message.Error)
        raise PlanError(f"descriptor set does not parse: {e}") from None
    by_name: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for f in files.file:
        if f.name in by_name:
            raise PlanError(f"file '{f.name}' appears twice in the descriptor set")
        by_name[f.name] = f
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in chain:
            raise PlanError(f"import cycle through '{name}'")
        proto = by_name[name]
        for dep in proto.dependency:
            if dep not in by_name:
                raise PlanError(f"missing import '{dep}' (imported by '{name}')")
            add(dep, chain + (name,))
        try:
            pool.Add(proto)
        except Exception as e:
            raise PlanError(f"file '{name}' refused: {e}") from None
        added.add(name)

    for name in by_name:
        add(name, ())
    return pool


def _is_closed(enum: EnumDescriptor) -> bool:
    closed = getattr(enum, "is_closed", None)
    if closed is not None:
        return bool(closed)
    return enum.file.syntax == "proto2"  # pragma: no cover - protobuf < 4.22


def _is_required(field: FieldDescriptor) -> bool:
    req = getattr(field, "is_required", None)
    if req is not None:
        return bool(req)
    return field.label == _FD.LABEL_REQUIRED  # pragma: no cover - old protobuf


def _is_repeated(field: FieldDescriptor) -> bool:
    rep = getattr(field, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return field.label == _FD.LABEL_REPEATED


def compile_plan(fds: bytes, type_name: str, vfield: str, digest: str) -> str:
    """The canonical JSON plan of message ``type_name`` defined in descriptor set ``fds``.

    ``vfield`` names the top-level integer version field; ``digest`` is the registry entry's
    digest (see :func:`registry_digest`) the plan is tied to.
    """
    pool = load_pool(fds)
    try:
        root: Descriptor = pool.FindMessageTypeByName(type_name)
    except KeyError as e:
        raise PlanError(f"message type {type_name!r} is not in the descriptor set") from e

    vf = root.fields_by_name.get(vfield)
    if vf is None or _is_repeated(vf) or vf.type not in _VERSION_KINDS:
        raise PlanError(f"{type_name} has no singular integer field named {vfield!r}")

    msg_index: dict[str, int] = {root.full_name: 0}
    enum_index: dict[str, int] = {}
    enums: list[list[int]] = []
    messages: list[dict[str, Any]] = []
    queue: deque[Descriptor] = deque([root])
    while queue:
        m = queue.popleft()
        fields: dict[str, list[Any]] = {}
        required: list[int] = []
        for f in sorted(m.fields, key=lambda f: f.number):
            kind = _KINDS[f.type]
            ref = 0
            if kind in ("m", "g"):
                sub = f.message_type
                if sub.full_name not in msg_index:
                    msg_index[sub.full_name] = len(msg_index)
                    queue.append(sub)
                ref = msg_index[sub.full_name]
            elif f.type == _FD.TYPE_ENUM and _is_closed(f.enum_type):
                kind = "e"
                e = f.enum_type
                if e.full_name not in enum_index:
                    enum_index[e.full_name] = len(enums)
                    enums.append(sorted({v.number for v in e.values}))
                ref = enum_index[e.full_name]
            fields[str(f.number)] = [kind, 1 if _is_repeated(f) else 0, ref]
            if _is_required(f):
                required.append(f.number)
        messages.append({"f": fields, "r": required})

    plan = {
        "v": PLAN_FORMAT,
        "digest": digest,
        "vf": vf.number,
        "vk": _VERSION_KINDS[vf.type],
        "m": messages,
        "e": enums,
    }
    return json.dumps(plan, separators=(",", ":"))
