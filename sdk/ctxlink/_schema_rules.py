"""The schema rules the Lua engine's ``register_schema`` applies itself (the module applies them
in C): the name rule, loading a descriptor set, the version field, wire compatibility."""

from __future__ import annotations

import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ctxlink._exceptions import SchemaError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,128}$")


_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_WIRE_CLASS = {
    FieldDescriptor.TYPE_INT32: "varint",
    FieldDescriptor.TYPE_INT64: "varint",
    FieldDescriptor.TYPE_UINT32: "varint",
    FieldDescriptor.TYPE_UINT64: "varint",
    FieldDescriptor.TYPE_BOOL: "varint",
    FieldDescriptor.TYPE_ENUM: "varint",
    FieldDescriptor.TYPE_SINT32: "zigzag",
    FieldDescriptor.TYPE_SINT64: "zigzag",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_SFIXED32: "fixed32",
    FieldDescriptor.TYPE_FLOAT: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED64: "fixed64",
    FieldDescriptor.TYPE_DOUBLE: "fixed64",
    FieldDescriptor.TYPE_STRING: "bytes",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_MESSAGE: "message",
    FieldDescriptor.TYPE_GROUP: "group",
}


def _repeated(f: FieldDescriptor) -> bool:
    value = getattr(f, "is_repeated", None)
    return bool(value) if value is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _required(f: FieldDescriptor) -> bool:
    value = getattr(f, "is_required", None)
    return bool(value) if value is not None else f.label == FieldDescriptor.LABEL_REQUIRED


def _schema_error(text: str) -> SchemaError:
    return SchemaError("CTXSCHEMA " + text)


def load_descriptor(fds: bytes, type_name: str, max_bytes: int) -> Descriptor:
    """Checks a descriptor set as CTX.SCHEMA.SET does and returns the message's descriptor."""
    if len(fds) > max_bytes:
        raise _schema_error(f"descriptor set is {len(fds)} bytes, over max-schema-bytes")
    from ctxlink._plan import PlanError, load_pool

    try:
        pool = load_pool(fds)
    except PlanError as exc:
        raise _schema_error(str(exc)) from None
    try:
        return pool.FindMessageTypeByName(type_name)
    except KeyError:
        raise _schema_error(f"message type '{type_name}' is not in the descriptor set") from None


def check_version_field(desc: Descriptor, vfield: str) -> None:
    f = desc.fields_by_name.get(vfield)
    if f is None or _repeated(f) or f.type not in _INT_TYPES:
        raise _schema_error(
            f"message '{desc.full_name}' has no top-level singular integer field '{vfield}'"
        )


def check_compatible(old: Descriptor, new: Descriptor) -> None:
    """Raises SchemaError when ``new`` is not wire-compatible with ``old`` (PROTOCOL rules)."""
    seen: set[tuple[str, str]] = set()
    todo = [(old, new, old.full_name)]
    while todo:
        a, b, path = todo.pop()
        if (a.full_name, b.full_name) in seen:
            continue
        seen.add((a.full_name, b.full_name))
        for fa in a.fields:
            fb = b.fields_by_number.get(fa.number)
            if fb is None:
                if _required(fa):
                    raise _schema_error(
                        f"incompatible: required field {path}.{fa.name} ({fa.number}) removed"
                    )
                continue
            where = f"{path}.{fa.name} ({fa.number})"
            if _WIRE_CLASS[fa.type] != _WIRE_CLASS[fb.type]:
                raise _schema_error(
                    f"incompatible: field {where} changes wire class "
                    f"{_WIRE_CLASS[fa.type]} -> {_WIRE_CLASS[fb.type]}"
                )
            if _repeated(fa) != _repeated(fb):
                raise _schema_error(f"incompatible: field {where} changes cardinality")
            if _required(fa) and not _required(fb):
                raise _schema_error(f"incompatible: required field {where} removed")
            if _required(fb) and not _required(fa):
                raise _schema_error(f"incompatible: new required field {where}")
            if fa.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
                todo.append((fa.message_type, fb.message_type, f"{path}.{fa.name}"))
        for fb in b.fields:
            if _required(fb) and fb.number not in a.fields_by_number:
                raise _schema_error(
                    f"incompatible: new required field {path}.{fb.name} ({fb.number})"
                )
