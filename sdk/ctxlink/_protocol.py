"""The wire protocol as the SDK sees it (docs/PROTOCOL.md): engine names, key names, the
arguments of ``CTX.CAS`` / ``CTX.PATCH``, reply parsing and the mapping of error replies to
exceptions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional, Union

from ctxlink._exceptions import ArgumentError, error_from_reply
from ctxlink._types import CasResult, Snapshot, new_cas_result, new_snapshot

MODULE = "module"
LUA = "lua"
ENGINES = (MODULE, LUA)

SCHEMA_PREFIX = "__ctx:schema:"
SCHEMAS_KEY = "__ctx:schemas"

#: The protocol this SDK speaks (docs/PROTOCOL.md): it needs a module that speaks it too.
PROTOCOL = 3


def map_error(exc: BaseException) -> BaseException:
    """A client library error reply -> the ctxlink exception for its code (or ``exc`` itself)."""
    mapped = error_from_reply(str(exc))
    if mapped is None:
        return exc
    mapped.__cause__ = exc
    return mapped


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


@lru_cache(maxsize=1024)
def _decoded(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _reply_text(value: Any) -> str:
    """bytes -> str for the schema / updated_by fields of replies: a handful of distinct
    values, so each is decoded once (bounded cache)."""
    if type(value) is bytes:
        return _decoded(value)
    return _text(value)


def parse_state(reply: Any) -> Optional[Snapshot]:
    """``CTX.GET``'s reply (nil or ``[version, raw, schema, updated_ms, updated_by,
    incarnation]``; a protocol 2 reply has no incarnation) -> Snapshot / None."""
    if reply is None:
        return None
    if len(reply) == 6:
        version, raw, schema, updated_ms, updated_by, inc = reply
        # one per context: not through the bounded cache of _reply_text
        inc = inc.decode("ascii") if type(inc) is bytes else _text(inc)
    else:  # protocol 2's five elements
        version, raw, schema, updated_ms, updated_by = reply
        inc = ""
    return new_snapshot(
        (
            version if type(version) is int else int(version),
            raw if type(raw) is bytes else _bytes(raw),
            _reply_text(schema),
            updated_ms if type(updated_ms) is int else int(updated_ms),
            _reply_text(updated_by),
            inc,
        )
    )


_REPLAYED = (b"replayed", "replayed")


def parse_write(reply: Any) -> CasResult:
    """A ``CTX.CAS`` / ``CTX.PATCH`` / ``CTX.DEL`` reply as a CasResult (field numbers of
    ``changed`` as decimal text; :func:`parse_outcome` names them)."""
    return parse_outcome(reply).result


@dataclass(frozen=True)
class Outcome:
    """A write's reply: the result, the oldest version the window knows (conflicts of commands
    that carried an id), the merged payload (``CTX.PATCH`` success) and the raw ``changed``."""

    result: CasResult
    oldest: Optional[int] = None
    raw: Optional[bytes] = None
    changed: tuple[int, ...] = ()


def parse_outcome(reply: Any, names: Optional[Callable[[tuple[int, ...]], tuple[str, ...]]] = None
                  ) -> Outcome:
    """Replies (docs/PROTOCOL.md): an integer (done), ``["replayed", version]``, ``[version,
    merged payload]`` (a patch, done), nil (conflict: no context) or the conflict state
    ``[version, raw, schema, updated_ms, updated_by, incarnation]``, with an id ``[version, raw,
    schema, updated_ms, updated_by, oldest_known, changed, incarnation]``."""
    if type(reply) is int:
        return Outcome(new_cas_result((True, reply, None, False, ())))
    if reply is None:
        return Outcome(new_cas_result((False, 0, None, False, ())))
    if isinstance(reply, int):
        return Outcome(new_cas_result((True, int(reply), None, False, ())))
    if len(reply) == 2:
        first = reply[0]
        if first in _REPLAYED:
            return Outcome(new_cas_result((True, int(reply[1]), None, True, ())))
        return Outcome(new_cas_result((True, int(first), None, False, ())), raw=_bytes(reply[1]))
    size = len(reply)
    if size == 8 or size == 7:  # with an id (7: protocol 2, no incarnation)
        snap = parse_state([*reply[:5], *reply[7:]])
        oldest: Optional[int] = int(reply[5])
        changed = tuple(int(n) for n in reply[6]) if reply[6] else ()
    else:
        snap, oldest, changed = parse_state(reply), None, ()
    assert snap is not None
    named = names(changed) if names is not None else tuple(str(n) for n in changed)
    return Outcome(new_cas_result((False, snap[0], snap, False, named)), oldest, None, changed)


def cas_command(
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
    inc: Optional[str] = None,
    px: Optional[int] = None,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.CAS`` (one builder for the generic path and both fast paths)."""
    return ("CTX.CAS", key, expected, raw) + _options(schema, by, write_id, inc, px)


def patch_command(
    key: Any,
    base: int,
    payload: bytes,
    fields: tuple[int, ...],
    reads: tuple[int, ...],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any,
    inc: Optional[str] = None,
    px: Optional[int] = None,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.PATCH``."""
    args: tuple[Any, ...] = ("CTX.PATCH", key, base, payload, "FIELDS", len(fields), *fields)
    if reads:
        args += ("READS", len(reads), *reads)
    return args + _options(schema, by, write_id, inc, px)


def _options(schema: Optional[str], by: Optional[str], write_id: Any, inc: Optional[str],
             px: Optional[int]) -> tuple[Any, ...]:
    """The options of ``CTX.CAS`` and ``CTX.PATCH``, in one order."""
    args: tuple[Any, ...] = ()
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    if write_id is not None:
        args += ("ID", write_id)
    if inc:
        args += ("INC", inc)
    if px is not None:
        args += ("PX", px)
    return args


#: The largest TTL in milliseconds the servers take (``PX``, ``CTX.TOUCH``).
MAX_TTL_MS = 10**15


def ttl_ms(ttl: Any, what: str = "ttl") -> int:
    """A TTL in seconds (int or float > 0) as the milliseconds sent: ``max(1, round(ttl *
    1000))``, at most 10^15. bool, NaN, infinity, <= 0, too large: ArgumentError (a
    ValueError); another type (str, None ...): TypeError. Checked before anything is sent."""
    if isinstance(ttl, bool):
        raise ArgumentError(f"{what} must be a number of seconds > 0, not {ttl!r}")
    if not isinstance(ttl, (int, float)):
        raise TypeError(f"{what} must be a number of seconds (int or float > 0), not "
                        f"{type(ttl).__name__}")
    if not ttl > 0 or ttl != ttl or ttl == float("inf"):
        raise ArgumentError(f"{what} must be a number of seconds > 0 (finite), not {ttl!r}")
    ms = max(1, round(ttl * 1000))
    if ms > MAX_TTL_MS:
        raise ArgumentError(f"{what} must be at most {MAX_TTL_MS // 1000} seconds, not {ttl!r}")
    return int(ms)


def new_incarnation() -> str:
    """A fresh incarnation: 8 random bytes (never all zero) as 16 lowercase hex digits."""
    while True:
        value = os.urandom(8)
        if value != b"\0" * 8:
            return value.hex()


#: The prefix of the Lua engine's wait channels (docs/PROTOCOL.md, "The wait channel").
WAIT_PREFIX = b"__ctx:wait:"


def wait_channel(key: Union[str, bytes]) -> tuple[bytes, bool]:
    """The key's wait channel and whether it is a shard channel in the key's slot (SPUBLISH /
    SSUBSCRIBE on Redis 7+). The one place the naming rule lives: the SDK passes the channel to
    the scripts that publish on it (lua/wait_publish.lua)."""
    k = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)
    open_ = k.find(b"{")
    close = k.find(b"}", open_ + 1) if open_ >= 0 else -1
    if close > open_ + 1:
        return WAIT_PREFIX + k, True
    if b"}" not in k:
        return WAIT_PREFIX + b"{" + k + b"}", True
    return WAIT_PREFIX + k, False
