"""The one door to the C validation core (``ctxlink._ctxcore``, built from ``module/core``).

Every schema rule lives once, in C, and the Redis module and the SDK both call it: compiling a
descriptor set (:func:`compile_schema`), the compatibility decision of a registration
(:func:`check_change`, categories WIRE_JSON and WIRE), the registry digest (:func:`digest`) and
the schema-name rule (:func:`check_name`). This module is the only one that imports the cffi
extension; the extension is a required part of the SDK, so a checkout without it fails here, at
import, with the fix in the message (no pure-Python fallback).

    schema = compile_schema(fds, "pkg.Order", "version", max_schema_bytes=4 << 20)
    check_change(previous, schema, "WIRE_JSON", force=False)   # SchemaError when breaking
"""

from __future__ import annotations

from typing import Any, NoReturn

from ctxlink._exceptions import EXCEPTION_CLASSES, SchemaError

try:
    from ctxlink._ctxcore import ffi, lib
except ImportError as exc:  # the extension was not built, or does not load
    raise ImportError(
        "the ctxlink validation core extension (ctxlink._ctxcore) is missing: in a source "
        f"checkout run `make ext` (or `pip install .`) ({exc})"
    ) from exc

__all__ = [
    "COMPAT_NAMES",
    "DEFAULT_COMPAT",
    "NO_SCHEMA_LIMIT",
    "Schema",
    "check_change",
    "check_name",
    "compat_name",
    "compat_parse",
    "compile_schema",
    "digest",
    "ffi",
    "lib",
    "raise_status",
]

Bytes = bytes | bytearray | memoryview

DEFAULT_COMPAT = "WIRE_JSON"
COMPAT_NAMES = ("WIRE_JSON", "WIRE")
NO_SCHEMA_LIMIT = (1 << 64) - 1  # as the module compiles registry entries: no size limit


class Schema:
    """A compiled schema (``ctx_Schema*``), freed when the object is collected.

    ``vfield`` is the version field as given (None: the default name "version")."""

    __slots__ = ("__weakref__", "_ptr", "type_name", "vfield")

    def __init__(self, ptr: Any, type_name: str, vfield: str | None) -> None:
        self._ptr = ptr
        self.type_name = type_name
        self.vfield = vfield

    @property
    def ptr(self) -> Any:
        """The ``ctx_Schema*`` (a cffi pointer), valid while this object lives."""
        return self._ptr

    def __repr__(self) -> str:
        return f"<Schema {self.type_name} vfield={self.vfield!r}>"


def _text(status: Any) -> str:
    return str(ffi.string(status.msg).decode("utf-8", "replace"))


def _prefix(code: int) -> str:
    return str(ffi.string(lib.ctx_Code_Prefix(code)).decode("ascii"))


def raise_status(status: Any) -> NoReturn:
    """Raises what the module would reply for a failed core call: the exception of its code
    (``CTXSCHEMA ...`` -> SchemaError), with the module's text; MemoryError for out of memory."""
    code = _prefix(status.code)
    text = f"{code} {_text(status)}"
    if code == "ERR":
        raise MemoryError(text)
    raise EXCEPTION_CLASSES.get(code, SchemaError)(text)


def _utf8(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    # surrogateescape: a name read back from Redis (decoded so) is judged on its exact bytes
    return value.encode("utf-8", "surrogateescape")


def digest(type_name: str, vfield: str, fds: Bytes) -> str:
    """The registry entry's ``digest`` (``ctx_Digest``): hex SHA-1 of
    ``"<len>:<type><len>:<vfield><fds>"``, lengths in bytes. The compat setting is not in it."""
    t = _utf8(type_name, "type_name")
    v = _utf8(vfield, "vfield")
    data = bytes(fds)
    out = ffi.new("char[41]")
    lib.ctx_Digest(t, len(t), v, len(v), data, len(data), out)
    return str(ffi.string(out).decode("ascii"))


def check_name(name: str) -> None:
    """The schema-name rule (``ctx_SchemaName_Check``): 1 to 128 bytes of
    ``A-Z a-z 0-9 _ . - :``. Raises SchemaError with the module's text otherwise."""
    raw = _utf8(name, "the schema name")
    status = ffi.new("ctx_Status*")
    if not lib.ctx_SchemaName_Check(raw, len(raw), status):
        raise_status(status)


def compat_parse(value: str) -> str:
    """The canonical name of a compatibility category ("WIRE_JSON" or "WIRE", case ignored);
    ValueError for anything else."""
    raw = value.encode("utf-8") if isinstance(value, str) else b""
    mode = ffi.new("ctx_Compat*")
    if not isinstance(value, str) or not lib.ctx_Compat_Parse(raw, len(raw), mode):
        raise ValueError(f"compat must be 'WIRE_JSON' or 'WIRE', not {value!r}")
    return compat_name(int(mode[0]))


def compat_name(mode: int) -> str:
    """The name of a ``ctx_Compat`` value."""
    return str(ffi.string(lib.ctx_Compat_Name(mode)).decode("ascii"))


def _compat_value(value: str) -> int:
    raw = compat_parse(value).encode("ascii")
    mode = ffi.new("ctx_Compat*")
    lib.ctx_Compat_Parse(raw, len(raw), mode)
    return int(mode[0])


def compile_schema(
    fds: Bytes, type_name: str, vfield: str | None = None,
    max_schema_bytes: int = NO_SCHEMA_LIMIT,
) -> Schema:
    """Compiles a descriptor set as ``CTX.SCHEMA.SET`` does (``ctx_Schema_Build``): the message
    type must be in it and ``vfield`` (None: "version") must be a singular top-level integer
    field. Raises SchemaError (``CTXSCHEMA ...``, the module's text) otherwise."""
    data = bytes(fds)
    t = _utf8(type_name, "type_name")
    v = _utf8(vfield or "version", "vfield")
    status = ffi.new("ctx_Status*")
    ptr = lib.ctx_Schema_Build(data, len(data), t, len(t), v, len(v), max_schema_bytes, status)
    if ptr == ffi.NULL:
        raise_status(status)
    return Schema(ffi.gc(ptr, lib.ctx_Schema_Free), type_name, vfield)


def check_change(prev: Schema | None, next: Schema, compat: str, force: bool) -> None:
    """The decision of registering ``next`` over an entry holding ``prev``
    (``ctx_Schema_CheckChange``, the module's own): ``force`` accepts anything; ``prev`` None (the
    registered revision does not parse) is refused; else the rules of category ``compat``.
    Raises SchemaError with the module's text when refused."""
    status = ffi.new("ctx_Status*")
    prev_ptr = ffi.NULL if prev is None else prev.ptr
    if not lib.ctx_Schema_CheckChange(prev_ptr, next.ptr, _compat_value(compat), bool(force),
                                      status):
        raise_status(status)
