"""The wire protocol as the SDK sees it (docs/PROTOCOL.md): engine names, key names, the
arguments of ``CTX.CAS`` / ``CTX.PATCH``, reply parsing and the mapping of error replies to
exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional

from ctxlink._exceptions import error_from_reply
from ctxlink._types import CasResult, Snapshot, new_cas_result, new_snapshot

MODULE = "module"
LUA = "lua"
ENGINES = (MODULE, LUA)

SCHEMA_PREFIX = "__ctx:schema:"
SCHEMAS_KEY = "__ctx:schemas"

#: The protocol this SDK speaks (docs/PROTOCOL.md): it needs a module that speaks it too.
PROTOCOL = 2


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
    """``CTX.GET``'s reply (nil or the 5-element array) -> Snapshot / None."""
    if reply is None:
        return None
    version, raw, schema, updated_ms, updated_by = reply
    return new_snapshot(
        (
            version if type(version) is int else int(version),
            raw if type(raw) is bytes else _bytes(raw),
            _reply_text(schema),
            updated_ms if type(updated_ms) is int else int(updated_ms),
            _reply_text(updated_by),
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
    ``[version, raw, schema, updated_ms, updated_by(, oldest_known, changed)]``."""
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
    snap = parse_state(reply[:5])
    assert snap is not None
    oldest = int(reply[5]) if len(reply) > 5 else None
    changed = tuple(int(n) for n in reply[6]) if len(reply) > 6 and reply[6] else ()
    named = names(changed) if names is not None else tuple(str(n) for n in changed)
    return Outcome(new_cas_result((False, snap[0], snap, False, named)), oldest, None, changed)


def cas_command(
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.CAS`` (one builder for the generic path and both fast paths)."""
    args: tuple[Any, ...] = ("CTX.CAS", key, expected, raw)
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    if write_id is not None:
        args += ("ID", write_id)
    return args


def patch_command(
    key: Any,
    base: int,
    payload: bytes,
    fields: tuple[int, ...],
    reads: tuple[int, ...],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.PATCH``."""
    args: tuple[Any, ...] = ("CTX.PATCH", key, base, payload, "FIELDS", len(fields), *fields)
    if reads:
        args += ("READS", len(reads), *reads)
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    return args + ("ID", write_id)
