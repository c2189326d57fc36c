"""Registering a schema on the Lua engine, with the module's rules: every rule is the C core's,
called through :mod:`ctxlink._native` (the name rule, compiling the descriptor set with its message
type and version field, the digest, and the change decision ``ctx_Schema_CheckChange`` under the
entry's compatibility category), so both engines refuse the same registrations with the same text.
lua/schema_set.lua then writes every copy of the entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from ctxlink import _native
from ctxlink._cluster import registry_copies
from ctxlink._exceptions import ArgumentError, SchemaError, WrongTypeError
from ctxlink._instr import Cmd, Op
from ctxlink._lua import _evalsha, check_plan
from ctxlink._protocol import _bytes, _text
from ctxlink._state import State
from ctxlink._window import WINDOW_DEFAULT, stored_window

__all__ = ["check_compat_arg", "register_lua"]

# The entry fields the change decision reads (HMGET order).
_PREV_FIELDS = ("type", "fds", "vfield", "revision", "digest", "compat", "history", "hpayload",
                "feed", "window")


def _schema_error(text: str) -> SchemaError:
    return SchemaError("CTXSCHEMA " + text)


def check_compat_arg(compat: Any) -> str | None:
    """``register_schema(compat=...)``: None (keep the entry's category) or the canonical name
    of "WIRE_JSON" / "WIRE"; ArgumentError for anything else, before anything is sent."""
    if compat is None:
        return None
    try:
        return _native.compat_parse(compat)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None


def _stored_compat(value: Any) -> str:
    """An entry's category: its ``compat`` field; absent or unreadable is WIRE_JSON."""
    if value is None:
        return _native.DEFAULT_COMPAT
    try:
        return _native.compat_parse(_text(value))
    except ValueError:
        return _native.DEFAULT_COMPAT


_INT = re.compile(r"-?[1-9][0-9]{0,19}|0")


def _revision(value: Any) -> int:
    """The entry's revision as schema_set.lua and the module read it (Redis' strict integer
    parse: no sign, leading zero or space; inside int64, below 2^63-1 for Lua's doubles);
    unreadable or negative is 0."""
    text = _text(value) if value is not None else ""
    if _INT.fullmatch(text) is None:
        return 0
    n = int(text)
    return n if 0 <= n < (1 << 63) - 1 else 0


def _previous(fields: Sequence[Any]) -> _native.Schema | None:
    """The registered revision compiled, or None when it cannot be read: a field missing, content
    that no longer hashes to its digest (edited by hand), or a definition that does not compile
    (what the module's registry refuses as damaged)."""
    ptype, pfds, pvfield, _, pdigest = fields[:5]
    if ptype is None or pfds is None or pvfield is None or pdigest is None:
        return None
    type_name, fds, vfield = _text(ptype), _bytes(pfds), _text(pvfield)
    if _native.digest(type_name, vfield, fds) != _text(pdigest):
        return None
    try:
        return _native.compile_schema(fds, type_name, vfield)
    except (SchemaError, MemoryError):
        return None


# How often the Lua engine's registration decides again when another registration landed
# between its read of the entry and its write (schema_set.lua's revision check).
_ATTEMPTS = 8
_CONCURRENT = "CTXSCHEMA concurrent registration, retry"
_OTHER_TYPE = "CTXSCHEMA the registry key holds another type"


def _stored_history(fields: Sequence[Any]) -> tuple[int, bool, int, int]:
    """An entry's history, feed and window settings as the module reads them (unreadable: off,
    the default window)."""
    text = _text(fields[6]) if fields[6] is not None else ""
    n = int(text) if _INT.fullmatch(text) else 0
    ftext = _text(fields[8]) if fields[8] is not None else ""
    f = int(ftext) if _INT.fullmatch(ftext) else 0
    return ((n if 0 <= n <= 1000 else 0), fields[7] is not None and _text(fields[7]) == "1",
            f if 0 <= f <= 10_000_000 else 0, stored_window(fields[9]))


def register_lua(
    st: State, name: str, type_name: str, fds: bytes, force: bool, vfield: str,
    compat: str | None, history: int | None = None, history_payloads: bool | None = None,
    feed: int | None = None, window: int | None = None,
) -> Op[int]:
    """The Lua engine's ``register_schema``: what CTX.SCHEMA.SET decides, through the C core,
    then lua/schema_set.lua on every copy of the entry. Returns the revision. A registration by
    someone else between the read and the write makes it read and decide again (the module's
    command is atomic, so it never sees one), up to ``_ATTEMPTS`` times."""
    _native.check_name(name)
    nxt = _native.compile_schema(fds, type_name, vfield, st.max_schema_bytes)
    digest = _native.digest(type_name, vfield, fds)
    yield from check_plan(st, name, nxt, digest)  # a plan Lua cannot load: refused here
    for attempt in range(_ATTEMPTS):
        try:
            return (yield from _register_once(st, name, type_name, fds, force, vfield, compat,
                                              nxt, digest, history, history_payloads, feed,
                                              window))
        except SchemaError as exc:
            if str(exc) != _CONCURRENT or attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _read_entry(st: State, entry: str) -> Op[tuple[list[Any], bool]]:
    """The entry's fields the decision reads (``_PREV_FIELDS`` order, None where absent) and
    whether the key exists, from one ``HGETALL``: one atomic read, so a registration landing
    meanwhile is seen whole or not at all (an existence check of its own, a second round trip,
    could see an entry whose fields the first read missed: "cannot be read"). A key of another
    type is the module's refusal."""
    try:
        reply = yield Cmd(("HGETALL", entry))
    except (WrongTypeError, ResponseError) as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        raise SchemaError(_OTHER_TYPE) from None
    if isinstance(reply, dict):
        pairs = list(reply.items())
    else:  # a flat [field, value, ...] list (no response callback)
        flat = list(reply or [])
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
    have = {_text(k): v for k, v in pairs}
    return [have.get(f) for f in _PREV_FIELDS], bool(pairs)


# On a cluster whose first copy is missing, every _SAMPLE_STEP-th copy is read for another one
_SAMPLE_STEP = 64


def _first_present(st: State, copies: list[tuple[str, str]]) -> Op[tuple[list[Any], bool]]:
    """On a cluster whose first copy is missing: the fields of a copy that has some, among every
    ``_SAMPLE_STEP``-th slot's (the change is checked against it, as CTX.SCHEMA.SET does on each
    node against its first copy there: a copy lost by hand or in a failover must not make the
    name look new). A new name costs 255 reads, not 16383; every node serves some of them."""
    for entry, _ in copies[_SAMPLE_STEP::_SAMPLE_STEP]:
        fields, exists = yield from _read_entry(st, entry)
        if exists:
            return fields, True
    return [None] * len(_PREV_FIELDS), False


def _register_once(
    st: State, name: str, type_name: str, fds: bytes, force: bool, vfield: str,
    compat: str | None, nxt: _native.Schema, digest: str,
    history: int | None = None, history_payloads: bool | None = None, feed: int | None = None,
    window: int | None = None,
) -> Op[int]:
    """One read-decide-write round of :func:`register_lua`."""
    copies = registry_copies(st, name)
    # a hash without any of an entry's fields is an entry that cannot be read, as on the module
    fields, exists = yield from _read_entry(st, copies[0][0])
    if not exists and len(copies) > 1:
        fields, exists = yield from _first_present(st, copies)
    stored = _stored_compat(fields[5])
    mode = compat or (stored if exists else _native.DEFAULT_COMPAT)
    # the very same definition under the same category: schema_set.lua writes nothing where it is
    # intact and repairs a damaged or missing copy under the same revision (no check needed)
    # (an unreadable revision has nothing to keep: written again as revision 1, as the module does)
    seen = _revision(fields[3])
    # history settings not given keep the entry's; other settings are a new revision
    have = _stored_history(fields) if exists else (0, False, 0, WINDOW_DEFAULT)
    want = (have[0] if history is None else history,
            have[1] if history_payloads is None else history_payloads,
            have[2] if feed is None else feed,
            have[3] if window is None else window)
    same = seen > 0 and fields[4] is not None and _text(fields[4]) == digest and stored == mode \
        and want == have
    if exists and not same:
        prev = None if force else _previous(fields)
        _native.check_change(prev, nxt, mode, force)
    revision = 0
    for i, (entry, index) in enumerate(copies):
        reply = yield from _evalsha(
            st, "schema_set", (entry, index),
            (name, type_name, fds, vfield, mode, seen, 1 if same else 0, 0 if i else 1,
             want[0], 1 if want[1] else 0, want[2], want[3]),
        )
        if i == 0:  # the copy read: its revision is the entry's
            revision = int(reply)
    return revision
