"""The write operations ``cas`` and ``delete``, and what they need on the way: argument checks,
write ids, encoding a message with its version field, the message-type check, one send of a
write (:func:`_write_raw`) and ``get``."""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Any, Optional, Union

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from ctxlink._cluster import registry_key_for
from ctxlink._exceptions import ArgumentError, MessageTypeError, VersionError
from ctxlink._history import lua_delete, lua_touch
from ctxlink._instr import Cmd, Op, Write
from ctxlink._lua import _evalsha, _write_lua
from ctxlink._precheck import _local_precheck
from ctxlink._protocol import (
    LUA,
    MODULE,
    _text,
    cas_command,
    new_incarnation,
    parse_outcome,
    parse_state,
    parse_write,
    patch_command,
    ttl_ms,
)
from ctxlink._settle import CAS_RESENDS, _ambiguous, _send_settled, _unknown
from ctxlink._state import State
from ctxlink._types import CasResult, Snapshot, descriptor_of, new_cas_result, note_schema_type


def op_get(st: State, key: Any) -> Op[Optional[Snapshot]]:
    check_key(key)
    if st.engine == MODULE:
        reply = yield Cmd(("CTX.GET", key))
    else:
        reply = yield from _evalsha(st, "get", (key,), ())
    snap = parse_state(reply)
    st.remember_schema(key, snap)
    return snap


def _vfield(st: State, schema: Optional[str], desc: Descriptor, key: Any = None) -> Op[str]:
    """The version field name for a payload of type ``desc`` stored under ``schema``.

    Cached per schema name; the first use of a name not registered through this Store reads
    the registry's ``vfield`` once. Without a schema name: the type's cached name, else "version".
    """
    if schema is not None:
        cached = st.vfield_by_schema.get(schema)
        if cached is not None:
            return cached
        try:
            value = yield Cmd(("HGET", registry_key_for(st, schema, key), "vfield"))
        except Exception:  # no ACL right on __ctx:* ... fall back to the default
            value = None
        if value:
            name = _text(value)
            st.vfield_by_schema[schema] = name
            st.vfield_by_type[desc.full_name] = name
            return name
    return st.vfield_by_type.get(desc.full_name, "version")


def _encode(
    st: State, payload: Union[bytes, Message], expected: int, schema: Optional[str],
    key: Any = None,
) -> Op[bytes]:
    if isinstance(payload, Message):
        vf = yield from _vfield(st, schema, descriptor_of(payload), key)
        msg = type(payload)()
        msg.CopyFrom(payload)
        setattr(msg, vf, expected + 1)
        return bytes(msg.SerializeToString())
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(
        f"payload must be the encoded bytes or a protobuf message, not {type(payload).__name__}"
        + (" (encode text first? payloads are protobuf bytes)" if isinstance(payload, str) else "")
    )


#: Largest ``expected_version`` the module accepts (the new version must fit in an int64) and
#: the Lua engine's (Lua numbers are doubles; docs/PROTOCOL.md, "Lua engine").
MAX_EXPECTED_MODULE = (1 << 63) - 2
MAX_EXPECTED_LUA = (1 << 53) - 2


def max_expected(st: Optional[State]) -> int:
    return MAX_EXPECTED_LUA if st is not None and st.engine == LUA else MAX_EXPECTED_MODULE


def _check_version(expected: int, st: Optional[State] = None) -> int:
    """``expected_version`` as sent: an int in ``0 .. max`` (ArgumentError / TypeError before
    anything is sent, instead of the server's bare ``ERR``)."""
    if type(expected) is not int:
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise TypeError(
                f"expected_version must be an int (0 creates), not {type(expected).__name__}"
            )
        expected = int(expected)
    limit = max_expected(st)
    if not 0 <= expected <= limit:
        raise ArgumentError(
            f"expected_version must be 0 (create) or the stored version, in 0..{limit}"
            f"{' on the Lua engine' if limit == MAX_EXPECTED_LUA else ''}; got {expected}"
        )
    return expected


def _schema_type(st: State, name: str, key: Any = None) -> Op[Optional[str]]:
    """The message type (full name) schema ``name`` stores: cached per name, else read once from
    the registry entry's ``type`` field. None when unknown or not readable (no ACL right on
    ``__ctx:*``): the type check is then skipped and the server validates as always."""
    cached = st.type_by_schema.get(name)
    if cached is not None:
        return cached
    try:
        value = yield Cmd(("HGET", registry_key_for(st, name, key), "type"))
    except Exception:  # NOPERM, WRONGTYPE ... no check
        return None
    if not value:
        return None
    type_name = _text(value)
    st.type_by_schema[name] = type_name
    note_schema_type(name, type_name)
    return type_name


def _check_type(st: State, name: Optional[str], desc: Descriptor, key: Any = None) -> Op[None]:
    """Refuses (MessageTypeError) a message whose type is not the one schema ``name`` stores. A
    mismatch is confirmed against a fresh read of the registry before refusing."""
    if not name:
        return
    expected = yield from _schema_type(st, name, key)
    if expected is None or expected == desc.full_name:
        return
    st.type_by_schema.pop(name, None)
    expected = yield from _schema_type(st, name, key)
    if expected is None or expected == desc.full_name:
        return
    raise MessageTypeError(
        f"schema {name!r} stores {expected} messages, not {desc.full_name}: pass the class "
        f"generated for {expected}",
        expected,
        desc.full_name,
    )


def new_write_id() -> str:
    """A fresh write id: 16 random bytes as 32 hex characters."""
    return os.urandom(16).hex()


def check_write_id(write_id: Any) -> Union[str, bytes]:
    """A write id as given (str or bytes of 1 to 64 bytes), else ArgumentError / TypeError."""
    checked: Union[str, bytes]
    if isinstance(write_id, str):
        checked, size = write_id, len(write_id.encode("utf-8", "surrogateescape"))
    elif isinstance(write_id, (bytes, bytearray, memoryview)):
        checked = bytes(write_id)
        size = len(checked)
    else:
        raise TypeError(f"write_id must be str or bytes, not {type(write_id).__name__}")
    if not 1 <= size <= 64:
        raise ArgumentError(f"write_id must be 1 to 64 bytes, not {size}")
    return checked


def check_by(by: Any) -> None:
    """``by`` (the writer id stored as ``updated_by``): None, or str/bytes of at most 65535
    bytes (the server's limit), checked before anything is sent."""
    if by is None:
        return
    if isinstance(by, str):
        size = len(by.encode("utf-8", "surrogateescape"))
    elif isinstance(by, (bytes, bytearray, memoryview)):
        size = len(by)
    else:
        raise TypeError(f"by must be a str (the writer's name), not {type(by).__name__}")
    if size > 65535:
        raise ArgumentError(f"by must be at most 65535 bytes, not {size}")


def check_key(key: Any) -> None:
    """A context key: str or bytes (TypeError before anything is sent)."""
    if not isinstance(key, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"a context key must be str or bytes, not {type(key).__name__}")


def _write_raw(
    st: State,
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
    fields: Optional[tuple[int, ...]] = None,
    reads: tuple[int, ...] = (),
    inc: Optional[str] = None,
    px: Optional[int] = None,
) -> Op[Any]:
    """Sends one write (``CTX.CAS``, or ``CTX.PATCH`` when ``fields`` is given) once, as a
    :class:`Write`, and returns its raw reply. ``inc``: ``INC`` (the incarnation the write is
    based on; on a create the fresh one it gives the context), ``px``: ``PX`` milliseconds. A
    transport error passes through: the caller decides about re-sending."""
    if st.engine == MODULE:
        if fields is None:
            args = cas_command(key, expected, raw, schema, by, write_id, inc, px)
        else:
            args = patch_command(key, expected, raw, fields, reads, schema, by, write_id, inc, px)
        return (yield Write(key, args))
    return (yield from _write_lua(st, key, expected, raw, schema, by, write_id, fields, reads,
                                  inc, px))


def write_inc(expected: int, snap: Optional[Snapshot]) -> Optional[str]:
    """The ``INC`` of a write: a create's fresh incarnation, else the one of the snapshot the
    write is based on (None for a v1/v2 value, which has none)."""
    if expected == 0:
        return new_incarnation()
    return (snap[5] or None) if snap is not None else None


def op_cas(
    st: State,
    key: Any,
    expected_version: int,
    payload: Union[bytes, Message],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
    sent: bool = False,
    px: Optional[int] = None,
    inc: Optional[str] = None,
) -> Op[CasResult]:
    """``cas``; ``sent``: this write (same ``write_id``, same ``inc``) was sent already and its
    reply lost. ``px``: the TTL in ms (checked by the caller); ``inc``: the ``INC`` (a create
    without one gets a fresh incarnation)."""
    check_key(key)
    check_by(by)
    expected = _check_version(expected_version, st)
    wid = new_write_id() if write_id is None else check_write_id(write_id)
    if inc is None and expected == 0:
        inc = new_incarnation()
    # For a message, the version field's name comes from the schema: the one given, else the
    # context's own (known from an earlier reply, or one read), so a VERSIONFIELD is honoured.
    # The message's type must be the one that schema stores (checked before sending).
    vschema = schema
    if isinstance(payload, Message):
        if vschema is None and expected > 0:
            vschema = st.key_schema.get(key)
            # a read only when this type's version field is not known yet (the server checks
            # the payload anyway; the type check is the SDK's early hint)
            if vschema is None and descriptor_of(payload).full_name not in st.vfield_by_type:
                current = yield from op_get(st, key)
                vschema = current.schema if current is not None else None
                if vschema:
                    st.key_schema.put(key, vschema)
        yield from _check_type(st, vschema, descriptor_of(payload), key)
    raw = yield from _encode(st, payload, expected, vschema, key)
    if st.local is not None:  # opt-in local check (ctxlink._precheck)
        yield from _local_precheck(st, key, expected, raw, schema, not isinstance(payload, Message))
    for attempt in range(2):
        try:
            reply, resent = yield from _send_settled(
                st, key, partial(_write_raw, st, key, expected, raw, schema, by, wid, None, (),
                                 inc, px), wid, None, CAS_RESENDS, sent=sent,
            )
            break
        except VersionError:
            if attempt or not isinstance(payload, Message) or vschema is None:
                raise
            if not (yield from _vfield_changed(st, vschema, descriptor_of(payload), key)):
                raise
            raw = yield from _encode(st, payload, expected, vschema, key)
    outcome = parse_outcome(reply)
    if _ambiguous(outcome, expected, resent, inc):
        raise _unknown(key, wid)
    result = outcome.result
    if st.engine == MODULE:  # what the Lua engine's _write_raw records, for _encode next time
        if result.ok and schema is not None:
            st.key_schema.put(key, schema)
        elif result.current is not None:
            st.key_schema.put(key, result.current.schema)
    return result


def _vfield_changed(st: State, schema: str, desc: Descriptor, key: Any = None) -> Op[bool]:
    """After CTXVERSION: re-reads the schema's version field; True when the cached one was stale
    (the schema was re-registered with another VERSIONFIELD), so the write is worth retrying."""
    old = st.vfield_by_schema.pop(schema, None)
    new = yield from _vfield(st, schema, desc, key)
    return old is not None and new != old


def op_delete(
    st: State, key: Any, expected_version: int, write_id: Any = None, inc: Optional[str] = None
) -> Op[CasResult]:
    """``delete``; ``inc``: the ``INC`` (the incarnation of the snapshot it is based on)."""
    check_key(key)
    expected = _check_version(expected_version, st)
    wid = new_write_id() if write_id is None else check_write_id(write_id)
    if inc is not None:
        inc = check_incarnation(inc)

    def send() -> Op[Any]:
        if st.engine == MODULE:
            args: tuple[Any, ...] = ("CTX.DEL", key, expected, "ID", wid)
            return (yield Write(key, args + ("INC", inc) if inc else args))
        return (yield from lua_delete(st, key, expected, wid, inc or ""))  # + the history

    reply, resent = yield from _send_settled(st, key, send, wid, None, CAS_RESENDS)
    if isinstance(reply, int):
        st.remember_schema(key, None)
        return new_cas_result((True, 0, None, False, ()))
    if reply is None and resent:
        # the re-sent delete finds no context: gone either way (ours, or another agent's)
        st.remember_schema(key, None)
        return new_cas_result((True, 0, None, True, ()))
    result = parse_write(reply)
    st.remember_schema(key, result.current)
    return result


_HEX16 = re.compile(r"[0-9A-Fa-f]{16}")


def check_incarnation(inc: Any) -> Optional[str]:
    """An incarnation as given (``Snapshot.incarnation``: 16 hex digits, not all zero; "" , the
    incarnation of a value an older release wrote, is none: None), else ArgumentError /
    TypeError before anything is sent."""
    if inc == "":
        return None
    if not isinstance(inc, str):
        raise TypeError(
            f"incarnation must be a str (Snapshot.incarnation), not {type(inc).__name__}"
        )
    if not _HEX16.fullmatch(inc) or int(inc, 16) == 0:
        raise ArgumentError(f"incarnation must be 16 hex digits, not all zero, not {inc!r}")
    return inc.lower()


def op_touch(st: State, key: Any, ttl: Any) -> Op[bool]:
    """``touch``: sets the context's time to live (``CTX.TOUCH`` / touch.lua); False when there
    is no context. Safe to repeat (redis-py's own retries apply)."""
    check_key(key)
    ms = ttl_ms(ttl)
    if st.engine == MODULE:
        reply = yield Cmd(("CTX.TOUCH", key, ms))
    else:
        reply = yield from lua_touch(st, key, ms)  # + the history (_history)
    return bool(reply)
