"""The write-id window setting (``register_schema(window=)``, ``WINDOW n``): how many write
records a schema's contexts keep (docs/PROTOCOL.md, "Storage format" and "Write ids"). The bound
and the default are the C core's (``CTX_WINDOW_MAX``, ``CTX_WINDOW_DEFAULT`` in
module/core/ctx_core.h), read through the cffi extension, so the SDK, the module and the Lua
scripts (whose copies a test compares) hold one value."""

from __future__ import annotations

from typing import Any, Optional

from ctxlink._exceptions import ArgumentError

__all__ = ["WINDOW_DEFAULT", "WINDOW_MAX", "check_window_arg", "stored_window"]


def _limits() -> tuple[int, int]:
    """The C core's window bound and default (module/core/ctx_core.h)."""
    try:
        from ctxlink._ctxcore import lib

        return int(lib.CTX_WINDOW_MAX), int(lib.CTX_WINDOW_DEFAULT)
    except (ImportError, AttributeError):  # an extension built before the setting: its values
        return 255, 16


WINDOW_MAX, WINDOW_DEFAULT = _limits()


def check_window_arg(window: Any) -> Optional[int]:
    """``register_schema(window=)``: None (keep the entry's setting; 16 for a new name) or an
    int 1..WINDOW_MAX; ArgumentError otherwise, before anything is sent."""
    if window is not None and (type(window) is not int or not 1 <= window <= WINDOW_MAX):
        raise ArgumentError(
            f"window must be an int from 1 to {WINDOW_MAX} (write records kept per context), "
            f"or None to keep the schema's setting; got {window!r}"
        )
    return window


def stored_window(value: Any) -> int:
    """An entry's ``window`` field as both engines read it: absent, unreadable or out of
    1..WINDOW_MAX is WINDOW_DEFAULT."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value) if value is not None else ""
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return WINDOW_DEFAULT
    n = int(text)
    return n if 1 <= n <= WINDOW_MAX else WINDOW_DEFAULT
