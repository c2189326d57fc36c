"""Protobuf without generated code: message classes built from a registered descriptor set
(``descriptor_pool`` + ``message_factory``), and ``.proto`` files compiled to a descriptor set
with protoc from grpcio-tools (the ``ctxlink[proto]`` extra)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from ctxlink.cli._output import fail

__all__ = ["message_class", "decode", "to_json", "compile_proto", "read_descriptor_set",
           "field_rows"]

PROTO_EXTRA = "pip install 'ctxlink[proto]'"


def message_class(fds: bytes, type_name: str) -> Any:
    """The message class of ``type_name`` from a serialized FileDescriptorSet."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(fds).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))


def decode(fds: bytes, type_name: str, raw: bytes) -> Any:
    cls = message_class(fds, type_name)
    return cls.FromString(raw)


def to_json(message: Any) -> Any:
    """The message in protobuf's JSON mapping (field names as in the .proto), as Python data;
    ``google.protobuf.Any`` fields are resolved in the message's own pool (the registered set)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     descriptor_pool=message.DESCRIPTOR.file.pool)


def compile_proto(file: str, includes: Sequence[str]) -> bytes:
    """``protoc --include_imports --descriptor_set_out`` on ``file``: the serialized set. Without
    ``-I`` the file's own directory is the import path (protoc's well-known types are always
    there). A missing grpcio-tools or a protoc error: one line, exit 1."""
    try:
        importlib.import_module("grpc_tools")  # only whether it is there
    except ImportError:
        fail(f"compiling {file} needs protoc from grpcio-tools: {PROTO_EXTRA} "
             "(or pass a compiled set with --descriptor-set FILE)")
    paths = list(includes) or [str(Path(file).resolve().parent)]
    with tempfile.TemporaryDirectory(prefix="ctxlink-protoc-") as tmp:
        out = Path(tmp) / "set.pb"
        cmd = [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{p}" for p in paths),
               "--include_imports", f"--descriptor_set_out={out}", str(Path(file).resolve())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            detail = "; ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
            detail = detail or f"exit status {proc.returncode}"
            fail(f"protoc could not compile {file}: {detail}")
        return out.read_bytes()


def read_descriptor_set(path: str) -> bytes:
    return Path(path).read_bytes()


def _type_name(field: Any) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    if field.message_type is not None:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"map<{_type_name(key)}, {_type_name(value)}>"
        return str(entry.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    for name, number in vars(FieldDescriptor).items():
        if name.startswith("TYPE_") and number == field.type:
            return name[len("TYPE_"):].lower()
    return str(field.type)  # pragma: no cover


def _repeated(field: Any) -> bool:
    flag: Optional[bool] = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)  # protobuf < 6.31


def field_rows(fds: bytes, type_name: str) -> list[dict[str, Any]]:
    """The top-level fields of the message: number, name, type, repeated."""
    desc = message_class(fds, type_name).DESCRIPTOR
    rows = []
    for f in sorted(desc.fields, key=lambda f: f.number):
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        rows.append({"number": f.number, "name": f.name, "type": _type_name(f),
                     "repeated": _repeated(f) and not is_map})
    return rows
