"""Local payload checks with the module's own validation core (``ctxlink._ctxcore``, reached
through :mod:`ctxlink._native`, its one importer).

The extension is built from ``module/core/*.c`` and upb (``make ext``, ``pip install .``), so a
local check gives exactly the verdict ``CTX.CAS`` gives under the same limits: same
accept/reject decision, same error code, same message. The extension is a required part of the
SDK: importing this module fails with the fix in the message when it is missing. The server stays
the authority either way.

    handle = _local.compile_schema(fds, "ctxlink.example.Order", "version")
    code, message, version = _local.check(handle, payload, max_payload_bytes=1 << 20,
                                          max_depth=32, unknown_fields="reject")
"""

from __future__ import annotations

from ctxlink import _native
from ctxlink._cache import LRU
from ctxlink._exceptions import EXCEPTION_CLASSES, ServerError

__all__ = [
    "LocalSchema",
    "LocalValidator",
    "check",
    "check_cas",
    "compile_schema",
    "raise_for",
]

Bytes = bytes | bytearray | memoryview

#: A compiled schema (``ctx_Schema*``), freed when the object is collected.
LocalSchema = _native.Schema


#: Compiled schemas by content, shared by the process's Stores (at most 64).
_compiled: LRU[tuple[bytes, str, str | None], LocalSchema] = LRU(64)


def compile_schema(fds: Bytes, type_name: str, vfield: str | None = None) -> LocalSchema:
    """Compiles a descriptor set as the module does (``ctx_Schema_Build``); cached by content.

    ``vfield`` None means the default "version" (``LocalSchema.vfield`` stays None).

    Raises :class:`ctxlink.SchemaError` (``CTXSCHEMA ...``, the module's text) when the set does
    not compile, the type is missing or the version field is unusable.
    """
    fds_b = bytes(fds)
    key = (fds_b, type_name, vfield)
    hit = _compiled.get(key)
    if hit is not None:
        return hit
    schema = _native.compile_schema(fds_b, type_name, vfield)
    _compiled.put(key, schema)
    return schema


def _validate(
    handle: LocalSchema, payload: Bytes, max_payload_bytes: int, max_depth: int,
    unknown_fields: str,
) -> tuple[str | None, str, bool, int]:
    """ctx_Validate: (code or None, message, version in range, version)."""
    ffi, lib = _native.ffi, _native.lib
    if unknown_fields not in ("reject", "allow"):
        raise ValueError("unknown_fields must be 'reject' or 'allow'")
    data = bytes(payload)
    limits = ffi.new("ctx_Limits*")
    lib.ctx_Limits_Default(limits)
    limits.max_payload_bytes = max_payload_bytes
    limits.max_depth = max_depth
    limits.allow_unknown = unknown_fields == "allow"
    pv = ffi.new("ctx_PayloadVersion*")
    status = ffi.new("ctx_Status*")
    if lib.ctx_Validate(handle.ptr, data, len(data), limits, pv, status):
        return None, "", bool(pv.in_range), int(pv.value)
    code = str(ffi.string(lib.ctx_Code_Prefix(status.code)).decode("ascii"))
    return code, str(ffi.string(status.msg).decode("utf-8", "replace")), False, 0


def check(
    handle: LocalSchema,
    payload: Bytes,
    *,
    max_payload_bytes: int,
    max_depth: int,
    unknown_fields: str = "reject",
) -> tuple[str | None, str, int | None]:
    """Validates ``payload`` (``ctx_Validate``) under the given limits.

    Returns ``(code, message, version)``: ``code`` is None when the payload is valid, else the
    module's error code ("CTXINVALID", "CTXTOOBIG", or "ERR" when memory ran out) with the text
    that follows it in the module's reply; ``version`` is the payload's version field (None when
    invalid, or when an unsigned value does not fit an int64).
    """
    code, message, in_range, value = _validate(
        handle, payload, max_payload_bytes, max_depth, unknown_fields
    )
    return code, message, value if code is None and in_range else None


def check_cas(
    handle: LocalSchema,
    payload: Bytes,
    expected_version: int,
    *,
    max_payload_bytes: int,
    max_depth: int,
    unknown_fields: str = "reject",
) -> tuple[str | None, str]:
    """What ``CTX.CAS`` would answer for this payload once the key and schema checks passed:
    ``(None, "")`` or ``(code, message)``, the version rule (``CTXVERSION``) included, in the
    module's wording (module/cmd_data.c)."""
    code, message, in_range, value = _validate(
        handle, payload, max_payload_bytes, max_depth, unknown_fields
    )
    if code is not None:
        return code, message
    want = expected_version + 1
    if not in_range:
        return "CTXVERSION", f"payload version is out of range, expected {want}"
    if value != want:
        return "CTXVERSION", f"payload version is {value}, expected {want}"
    return None, ""


def raise_for(code: str | None, message: str) -> None:
    """Raises the exception the server would raise for ``(code, message)``; nothing when None."""
    if code is None:
        return
    text = f"{code} {message}"
    cls = EXCEPTION_CLASSES.get(code)
    if cls is None:
        raise MemoryError(text) if code == "ERR" else ServerError(text)
    raise cls(text)


#: How many compiled schemas one Store's local check keeps (the module keeps 64 too).
LOCAL_SCHEMAS = 64


class LocalValidator:
    """Limits plus a schema cache, as one object: what a Store with ``local_check=True`` keeps.

    It maps schema names to compiled schemas, at most :data:`LOCAL_SCHEMAS` of them (least
    recently used first out, as the module's compiled-schema cache); callers refresh an entry
    with :meth:`set_schema` when the registry changes and drop it with :meth:`forget`.
    """

    def __init__(
        self, *, max_payload_bytes: int, max_depth: int, unknown_fields: str = "reject"
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_depth = max_depth
        self.unknown_fields = unknown_fields
        self._schemas: LRU[str, LocalSchema] = LRU(LOCAL_SCHEMAS)

    def set_schema(self, name: str, fds: Bytes, type_name: str, vfield: str | None) -> LocalSchema:
        schema = compile_schema(fds, type_name, vfield)
        self._schemas.put(name, schema)
        return schema

    def get_schema(self, name: str) -> LocalSchema | None:
        return self._schemas.get(name)

    def forget(self, name: str) -> None:
        self._schemas.pop(name)

    def check(self, handle: LocalSchema, payload: Bytes) -> tuple[str | None, str, int | None]:
        return check(
            handle,
            payload,
            max_payload_bytes=self.max_payload_bytes,
            max_depth=self.max_depth,
            unknown_fields=self.unknown_fields,
        )

    def check_cas(
        self, handle: LocalSchema, payload: Bytes, expected_version: int
    ) -> tuple[str | None, str]:
        return check_cas(
            handle,
            payload,
            expected_version,
            max_payload_bytes=self.max_payload_bytes,
            max_depth=self.max_depth,
            unknown_fields=self.unknown_fields,
        )
