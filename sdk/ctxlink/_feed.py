"""The per-schema change feed (docs/PROTOCOL.md, "Change feed"): :class:`ChangeBatch`, the
sans-I/O ``changes`` operation, the ``feed=`` argument check and what the Lua engine's writes
need to pass the feed stream as their last ``KEYS`` entry.

A schema registered with ``feed=n`` keeps the last ``n`` changes of all its contexts in one Redis
stream, ``__ctxf:<schema>`` (standalone servers and replica sets; refused on a Redis Cluster).
Entry ids are automatic; the fields are a history entry's (``k i t b w f p o``, see
:mod:`ctxlink._history`) plus ``v`` the version and ``key`` the context's key. ``delete`` entries
carry the deleted version and no writer.

A cursor is ``"1-<ordinal>-<ms>-<seq>"``: the format's number, then the entry's position in
everything the stream ever took (Redis 7's ``entries-added``; 0 on Redis 6.2, which has no such
count) and its id. Resuming reads the entries after the id; when more entries were trimmed than
the ordinal counts, some after the cursor are gone: :class:`CursorExpiredError`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ctxlink._cluster import registry_key_for
from ctxlink._exceptions import ArgumentError, CursorExpiredError, SchemaError, WrongTypeError
from ctxlink._history import Change, _entry_fields, _field_names, _parse
from ctxlink._instr import Cmd, Op
from ctxlink._protocol import _bytes, _text

if TYPE_CHECKING:
    from ctxlink._state import State

__all__ = ["FEED_MAX", "ChangeBatch", "check_feed_arg", "cursor_of", "feed_key", "op_changes",
           "FEED_CLUSTER_MSG"]


def _feed_max() -> int:
    """The C core's CTX_FEED_MAX (module/core/ctx_core.h), through the cffi extension."""
    try:
        from ctxlink._ctxcore import lib

        return int(lib.CTX_FEED_MAX)
    except (ImportError, AttributeError):  # an extension built before the feed: the same value
        return 10_000_000


FEED_MAX = _feed_max()

#: CTX.SCHEMA.SET's (and schema_set.lua's) refusal of FEED n > 0 on a Redis Cluster
FEED_CLUSTER_MSG = ("CTXSCHEMA a change feed needs a standalone server or a replica set (Redis "
                    'Cluster: see docs/PROTOCOL.md, "Change feed")')

_CURSOR = re.compile(r"1-(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_U64 = 2**64


@dataclass(frozen=True)
class ChangeBatch:
    """What ``store.changes`` returns: ``changes`` in the feed's order (each context's in the
    order they were made), ``cursor`` the opaque position after the last of them (pass it back
    to read on; the same cursor when there was nothing new)."""

    changes: list[Change]
    cursor: str


def check_feed_arg(feed: Any) -> Optional[int]:
    """``register_schema(feed=)``: None (keep the entry's setting) or an int 0..FEED_MAX."""
    if feed is not None and (type(feed) is not int or not 0 <= feed <= FEED_MAX):
        raise ArgumentError(
            f"feed must be an int from 0 (off) to {FEED_MAX} (changes kept for the schema), or "
            f"None to keep the schema's setting; got {feed!r}"
        )
    return feed


def feed_key(name: str) -> str:
    """The change feed stream of schema ``name``."""
    return "__ctxf:" + name


def _parse_cursor(cursor: Any) -> tuple[int, int, int]:
    if cursor is None:
        return (-1, 0, 0)
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        raise ArgumentError(f"cursor must be None or a cursor store.changes returned; got "
                            f"{cursor!r}")
    _, k, ms, seq = (int(p) for p in cursor.split("-"))
    if k >= _U64 or ms >= _U64 or seq >= _U64:
        raise ArgumentError(f"cursor must be None or a cursor store.changes returned; got "
                            f"{cursor!r}")
    return (k, ms, seq)


def check_changes_args(name: Any, cursor: Any, count: Any, block_ms: Any) -> tuple[int, int, int]:
    """ArgumentError (nothing sent) for a bad ``cursor``, ``count`` or ``block_ms``."""
    from ctxlink import _native

    if not isinstance(name, str):
        raise TypeError(f"the schema name must be a str, not {type(name).__name__}")
    _native.check_name(name)
    if type(count) is not int or count <= 0:
        raise ArgumentError(f"count must be an int > 0, not {count!r}")
    if block_ms is not None and (type(block_ms) is not int or block_ms < 0):
        raise ArgumentError(f"block_ms must be None or an int >= 0 (milliseconds), not "
                            f"{block_ms!r}")
    return _parse_cursor(cursor)


# One atomic, read-only look at the feed: its counts and the entries after the cursor. Redis 7
# runs it with EVAL_RO (a replica serves it; the %R~ grant of a read-only consumer suffices).
_READ = b"""
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'none' then return {-1, 0, false, {}} end
if t ~= 'stream' then return redis.error_reply('WRONGTYPE not a stream') end
local info, added, len, first = redis.call('XINFO', 'STREAM', k), -1, 0, false
for i = 1, #info, 2 do
  local f = info[i]
  if f == 'entries-added' then added = info[i + 1]
  elseif f == 'length' then len = info[i + 1]
  elseif f == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
return {added, len, first, redis.call('XRANGE', k, ARGV[1], '+', 'COUNT', ARGV[2])}
"""
_READ_RO = b"#!lua flags=no-writes\n" + _READ


def cursor_of(added: int, last_id: Any) -> str:
    """The cursor after the entry ``last_id`` of a feed whose ``entries-added`` is ``added``
    (-1: Redis 6.2, no count): what ``changes`` would return after reading up to it."""
    ms, seq = _id(_text(last_id))
    return f"1-{max(0, added)}-{ms}-{seq}"


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _read(st: "State", fk: str, start: str, count: int) -> Op[Any]:
    """The read script: EVAL_RO (Redis 7), else EVAL (Redis 6.2 has no EVAL_RO)."""
    if st.eval_ro is not False:
        try:
            return (yield Cmd(("EVAL_RO", _READ_RO, 1, fk, start, count)))
        except Exception as exc:
            if "unknown command" not in str(exc).lower():
                raise
            st.eval_ro = False
    return (yield Cmd(("EVAL", _READ, 1, fk, start, count)))


def _names(st: "State", name: str) -> Op[dict[int, str]]:
    """Field number -> name of schema ``name`` (its registry entry, read as data); {} when
    unknown or not readable."""
    try:
        got = yield Cmd(("HMGET", registry_key_for(st, name, None), "type", "fds"))
    except Exception:  # no read grant on __ctx:*: numbers it is
        return {}
    if not got or got[0] is None or got[1] is None:
        return {}
    return _field_names(_text(got[0]), _bytes(got[1]))


def op_changes(
    st: "State", name: str, cursor: Any = None, count: Any = 100, block_ms: Any = None,
    slice_s: Optional[float] = None,
) -> Op[ChangeBatch]:
    """``store.changes``: up to ``count`` changes of schema ``name``'s feed after ``cursor``
    (None: from the oldest retained); with ``block_ms``, waits up to that long (XREAD BLOCK)
    when there is nothing yet. ``slice_s``: the longest single block (half the client's socket
    timeout)."""
    k, ms, seq = check_changes_args(name, cursor, count, block_ms)
    if st.cluster:
        raise SchemaError(FEED_CLUSTER_MSG)
    fk = feed_key(name)
    deadline = None if not block_ms else time.monotonic() + block_ms / 1000
    while True:
        start = "-" if k < 0 else f"({ms}-{seq}"
        try:
            added, length, first, entries = yield from _read(st, fk, start, count)
        except WrongTypeError:
            raise WrongTypeError("WRONGTYPE the change feed key holds another type (not a "
                                 "stream)") from None
        added, length = int(added), int(length)
        entries = list(entries or [])
        if added >= 0:  # Redis 7: trimmed = added - length entries, the oldest first
            trimmed = added - length
            if k >= 0 and trimmed > k:
                raise CursorExpiredError(
                    f"the change feed of '{name}' no longer holds the changes after this cursor "
                    f"({trimmed - k} or more were trimmed: raise its FEED setting or read more "
                    "often); start again with cursor=None")
            base = trimmed if k < 0 else k
        else:  # Redis 6.2: the cursor's own entry gone means entries may be (conservative)
            if k >= 0 and (ms, seq) != (0, 0) and first and _id(_text(first)) > (ms, seq):
                raise CursorExpiredError(
                    f"the change feed of '{name}' no longer holds this cursor's change (Redis "
                    "6.2: changes after it may be lost); start again with cursor=None")
            base = 0
        left = 0 if deadline is None else int((deadline - time.monotonic()) * 1000)
        if entries or left <= 0:
            break
        # nothing yet: block until something is added after the cursor (in slices of at most
        # half the socket timeout), then read it as above
        wait_ms = left if slice_s is None else min(left, max(1, int(slice_s * 1000)))
        yield Cmd(("XREAD", "COUNT", 1, "BLOCK", wait_ms, "STREAMS", fk,
                   "0-0" if k < 0 else f"{ms}-{seq}"))
    names: dict[int, str] = {}
    if any("f" in _entry_fields(e[1]) for e in entries):
        names = yield from _names(st, name)
    changes = [_parse("", e, names) for e in entries]
    if entries:
        ms, seq = _id(_text(entries[-1][0]))
        k = (base + len(entries)) if added >= 0 else 0
    elif k < 0:
        k = max(0, base) if added >= 0 else 0
    return ChangeBatch(changes, f"1-{k}-{ms}-{seq}")
