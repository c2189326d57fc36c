"""Messages <-> JSON in protobuf's JSON mapping, with the registered descriptor set (as
``ctxlink get --json``: field names as in the .proto), and the field-naming errors a model can
act on. No I/O; nothing of the ``mcp`` SDK."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ctxlink._cache import LRU
from ctxlink._registry import SchemaInfo
from ctxlink.cli._proto import field_rows, message_class, to_json

__all__ = ["MessageInputError", "class_of", "is_list", "parse_message", "message_json", "describe",
           "error_field"]

#: (schema name, revision, message type) -> message class built from the registered set
_CLASSES: LRU[tuple[str, int, str], Any] = LRU(256)


class MessageInputError(ValueError):
    """A message (or a field patch) that does not parse as the schema's message type; ``field``
    is the path of the field at fault (``items[0].sku``), "" when no one field is."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def is_list(f: FieldDescriptor) -> bool:
    """A repeated field that is not a map."""
    flag = getattr(f, "is_repeated", None)
    repeated = bool(flag) if flag is not None else (  # protobuf < 6.31: no is_repeated
        getattr(f, "label", None) == FieldDescriptor.LABEL_REPEATED)
    return repeated and not (f.message_type is not None and f.message_type.GetOptions().map_entry)


def class_of(info: SchemaInfo) -> Any:
    """The message class of a registry entry (cached per schema revision)."""
    k = (info.name, info.revision, info.message_type)
    cls = _CLASSES.get(k)
    if cls is None:
        cls = message_class(info.descriptor_set, info.message_type)
        _CLASSES.put(k, cls)
    return cls


_FAILED = re.compile(r"Failed to parse (\S+) field")
_NO_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]*)"')
_AT = re.compile(r' at "?([A-Za-z_][\w.\[\]]*)"?\.?$')


def error_field(text: str) -> str:
    """The field path a ``json_format.ParseError`` text names ("" when it names none)."""
    path = _FAILED.findall(text)
    missing = _NO_FIELD.search(text)
    if missing is not None:
        where = missing.group(2).split(".", 1)
        inner = where[1] if len(where) > 1 else ""
        return f"{inner}.{missing.group(1)}" if inner else missing.group(1)
    at = _AT.search(text.split("\n", 1)[0])
    if at is not None and "." in at.group(1).rstrip("."):
        return at.group(1).rstrip(".").split(".", 1)[1]
    return ".".join(path)


def _loads(value: Any, what: str) -> Any:
    """A JSON object given as such, or as JSON text (models send both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise MessageInputError(f"{what} is not valid JSON: {exc}", what) from None
    if not isinstance(value, dict):
        raise MessageInputError(
            f"{what} must be a JSON object (the message in protobuf's JSON mapping), not "
            f"{type(value).__name__}", what)
    return value


def parse_message(info: SchemaInfo, value: Any, what: str = "message") -> Message:
    """``value`` (a dict or JSON text) as a message of the schema's type; MessageInputError
    naming the field otherwise. Unknown field names are refused."""
    data = _loads(value, what)
    msg: Message = class_of(info)()
    try:
        pool: Any = msg.DESCRIPTOR.file.pool
        json_format.ParseDict(data, msg, descriptor_pool=pool)
    except json_format.ParseError as exc:
        text = " ".join(str(exc).split())
        raise MessageInputError(text, error_field(str(exc)) or what) from None
    return msg


def top_level_names(info: SchemaInfo, data: dict[str, Any]) -> list[str]:
    """The .proto names of a patch's keys (JSON names accepted); MessageInputError naming an
    unknown one."""
    desc: Descriptor = class_of(info).DESCRIPTOR
    by_json = {f.json_name: f.name for f in desc.fields}
    names = []
    for key in data:
        if key in desc.fields_by_name:
            names.append(key)
        elif key in by_json:
            names.append(by_json[key])
        else:
            known = ", ".join(f.name for f in desc.fields)
            raise MessageInputError(f"{desc.full_name} has no top-level field {key!r} "
                                    f"(fields: {known})", key)
    return names


def message_json(info: Optional[SchemaInfo], raw: bytes) -> Any:
    """A stored payload in protobuf's JSON mapping; None when it cannot be decoded (no schema)."""
    if info is None:
        return None
    msg = class_of(info)()
    msg.ParseFromString(raw)
    return to_json(msg)


def field_rows_cache(desc: Descriptor) -> list[dict[str, Any]]:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        fds.file.append(proto)

    add(desc.file)
    return field_rows(fds.SerializeToString(), desc.full_name)


def describe(info: SchemaInfo, version_field: str) -> dict[str, Any]:
    """What a model needs to write a message of the schema: its top-level fields (name, JSON
    name, type, repeated), the nested message types and enums they use, and the version field
    (set by the server: never written by the caller)."""
    cls = class_of(info)
    desc: Descriptor = cls.DESCRIPTOR
    rows = field_rows(info.descriptor_set, info.message_type)
    by_name = {f.name: f for f in desc.fields}
    for row in rows:
        row["json_name"] = by_name[row["name"]].json_name
        if row["name"] == version_field:
            row["note"] = "the context version: set by the server, do not write it"
    messages: dict[str, list[dict[str, Any]]] = {}
    enums: dict[str, list[str]] = {}

    def walk(d: Descriptor) -> None:
        for f in d.fields:
            if f.enum_type is not None and f.enum_type.full_name not in enums:
                enums[f.enum_type.full_name] = [v.name for v in f.enum_type.values]
            sub = f.message_type
            if sub is None or sub.full_name in messages:
                continue
            if sub.GetOptions().map_entry:
                walk(sub)
                continue
            if sub.file.name.startswith("google/protobuf/"):
                continue  # well-known types: their JSON forms are protobuf's
            messages[sub.full_name] = [
                {"number": r["number"], "name": r["name"], "type": r["type"],
                 "repeated": r["repeated"]} for r in field_rows_cache(sub)]
            walk(sub)

    walk(desc)
    out: dict[str, Any] = {
        "schema": info.name, "message_type": info.message_type, "revision": info.revision,
        "version_field": version_field, "history": info.history, "fields": rows,
    }
    if messages:
        out["messages"] = messages
    if enums:
        out["enums"] = enums
    out["json"] = ("protobuf's JSON mapping: field names as in the .proto (or their JSON "
                   "names), 64-bit integers as numbers or strings, enums by name, bytes as "
                   "base64")
    return out
