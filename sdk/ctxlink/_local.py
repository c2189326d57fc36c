"""Local payload checks with the module's own validation core (the optional ``ctxlink._ctxcore``).

The extension is built from ``module/core/*.c`` and upb by ``make ext`` (see
:mod:`ctxlink._ffi_build`), so a local check gives exactly the verdict ``CTX.CAS`` gives under the
same limits: same accept/reject decision, same error code, same message. It is optional:
:func:`available` is False when it was not built (or does not load), and the SDK then validates
on the server only. The server stays the authority either way.

    if _local.available():
        handle = _local.compile_schema(fds, "ctxlink.example.Order", "version")
        code, message, version = _local.check(handle, payload, max_payload_bytes=1 << 20,
                                              max_depth=32, unknown_fields="reject")
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Optional, Union

from ctxlink._exceptions import EXCEPTION_CLASSES, ServerError

try:  # the extension is optional
    from ctxlink import _ctxcore  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on whether `make ext` ran
    _ctxcore = None

__all__ = [
    "available",
    "compile_schema",
    "check",
    "check_cas",
    "raise_for",
    "LocalSchema",
    "LocalValidator",
]

Bytes = Union[bytes, bytearray, memoryview]

_MAX_SCHEMA_BYTES = (1 << 64) - 1  # as the module compiles registry entries: no limit here


def available() -> bool:
    """True when ``ctxlink._ctxcore`` was built and imports."""
    return _ctxcore is not None


class LocalSchema:
    """A compiled schema (``ctx_Schema*``), freed when the object is collected."""

    __slots__ = ("_ptr", "type_name", "vfield")

    def __init__(self, ptr: Any, type_name: str, vfield: Optional[str]) -> None:
        self._ptr = ptr
        self.type_name = type_name
        self.vfield = vfield  # None: compiled with the default name "version"

    def __repr__(self) -> str:
        return f"<LocalSchema {self.type_name} vfield={self.vfield!r}>"


def _need() -> Any:
    if _ctxcore is None:
        raise RuntimeError("ctxlink._ctxcore is not built (run `make ext`)")
    return _ctxcore


def _status_text(ffi: Any, status: Any) -> str:
    return ffi.string(status.msg).decode("utf-8", "replace")


def _prefix(lib: Any, ffi: Any, code: int) -> str:
    return ffi.string(lib.ctx_Code_Prefix(code)).decode("ascii")


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[bytes, str, Optional[str]], LocalSchema] = OrderedDict()
_CACHE_SIZE = 64


def compile_schema(fds: Bytes, type_name: str, vfield: Optional[str] = None) -> LocalSchema:
    """Compiles a descriptor set as the module does (``ctx_Schema_Build``); cached by content.

    ``vfield`` None means the default "version" (``LocalSchema.vfield`` stays None).

    Raises :class:`ctxlink.SchemaError` (``CTXSCHEMA ...``, the module's text) when the set does
    not compile, the type is missing or the version field is unusable.
    """
    mod = _need()
    ffi, lib = mod.ffi, mod.lib
    fds_b = bytes(fds)
    vf = vfield or "version"
    key = (fds_b, type_name, vfield)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    t = type_name.encode("utf-8")
    v = vf.encode("utf-8")
    status = ffi.new("ctx_Status*")
    ptr = lib.ctx_Schema_Build(fds_b, len(fds_b), t, len(t), v, len(v), _MAX_SCHEMA_BYTES, status)
    if ptr == ffi.NULL:
        code = _prefix(lib, ffi, status.code)
        text = f"{code} {_status_text(ffi, status)}"
        if code == "ERR":
            raise MemoryError(text)
        raise EXCEPTION_CLASSES[code](text)
    schema = LocalSchema(ffi.gc(ptr, lib.ctx_Schema_Free), type_name, vfield)
    with _cache_lock:
        _cache[key] = schema
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return schema


def _validate(
    handle: LocalSchema, payload: Bytes, max_payload_bytes: int, max_depth: int,
    unknown_fields: str,
) -> tuple[Optional[str], str, bool, int]:
    """ctx_Validate: (code or None, message, version in range, version)."""
    mod = _need()
    ffi, lib = mod.ffi, mod.lib
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
    if lib.ctx_Validate(handle._ptr, data, len(data), limits, pv, status):
        return None, "", bool(pv.in_range), int(pv.value)
    return _prefix(lib, ffi, status.code), _status_text(ffi, status), False, 0


def check(
    handle: LocalSchema,
    payload: Bytes,
    *,
    max_payload_bytes: int,
    max_depth: int,
    unknown_fields: str = "reject",
) -> tuple[Optional[str], str, Optional[int]]:
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
) -> tuple[Optional[str], str]:
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


def raise_for(code: Optional[str], message: str) -> None:
    """Raises the exception the server would raise for ``(code, message)``; nothing when None."""
    if code is None:
        return
    text = f"{code} {message}"
    cls = EXCEPTION_CLASSES.get(code)
    if cls is None:
        raise MemoryError(text) if code == "ERR" else ServerError(text)
    raise cls(text)


class LocalValidator:
    """Limits plus a schema cache, as one object: what a Store with ``local_check=True`` keeps.

    It maps schema names to compiled schemas; callers refresh an entry with :meth:`set_schema`
    when the registry changes and drop it with :meth:`forget`.
    """

    def __init__(
        self, *, max_payload_bytes: int, max_depth: int, unknown_fields: str = "reject"
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_depth = max_depth
        self.unknown_fields = unknown_fields
        self._schemas: dict[str, LocalSchema] = {}
        self._lock = threading.Lock()

    def set_schema(self, name: str, fds: Bytes, type_name: str, vfield: Optional[str]) -> LocalSchema:
        schema = compile_schema(fds, type_name, vfield)
        with self._lock:
            self._schemas[name] = schema
        return schema

    def get_schema(self, name: str) -> Optional[LocalSchema]:
        with self._lock:
            return self._schemas.get(name)

    def forget(self, name: str) -> None:
        with self._lock:
            self._schemas.pop(name, None)

    def check(self, handle: LocalSchema, payload: Bytes) -> tuple[Optional[str], str, Optional[int]]:
        return check(
            handle,
            payload,
            max_payload_bytes=self.max_payload_bytes,
            max_depth=self.max_depth,
            unknown_fields=self.unknown_fields,
        )

    def check_cas(
        self, handle: LocalSchema, payload: Bytes, expected_version: int
    ) -> tuple[Optional[str], str]:
        return check_cas(
            handle,
            payload,
            expected_version,
            max_payload_bytes=self.max_payload_bytes,
            max_depth=self.max_depth,
            unknown_fields=self.unknown_fields,
        )
