"""The writes the tools make that the Store has no public method for, as sans-I/O operations run
by the asyncio front end (``ctxlink.aio._run``), built from the SDK's own pieces so that they
are exactly once like ``cas``/``update``:

- :func:`op_patch`: a field patch (``CTX.PATCH``) based on a version the caller read earlier
  (``update(reads=...)`` reads the current state itself, so it cannot be based on an older
  version a model saw);
- :func:`append_items`: the append to a repeated field (``Store.append``), with the tool's
  arguments.
"""

from __future__ import annotations

from typing import Any, Optional

from google.protobuf.message import Message

from ctxlink._fields import field_plan
from ctxlink._instr import Op
from ctxlink._protocol import Outcome, parse_outcome
from ctxlink._settle import CAS_RESENDS, _ambiguous, _send_settled, _unknown
from ctxlink._state import State
from ctxlink._types import CasResult, descriptor_of
from ctxlink._write import _write_raw, new_write_id, write_inc

__all__ = ["op_patch", "append_items"]


def op_patch(
    st: State,
    key: Any,
    base_version: int,
    msg: Message,
    names: list[str],
    reads: list[str],
    vfield: str,
    schema: Optional[str],
    by: Optional[str],
    incarnation: Optional[str],
) -> Op[Outcome]:
    """Writes the top-level fields ``names`` of ``msg`` on top of the current state if none of
    them nor of ``reads`` changed after ``base_version`` (``CTX.PATCH``); a lost reply is
    re-sent with the same write id. Returns the outcome (conflicts carry the current state and
    the changed fields' names). FieldNameError for a bad name, before anything is sent."""
    plan = field_plan(descriptor_of(msg), vfield)
    plan.read_numbers(names)  # checks the names (unknown, version field, twice)
    read_numbers = plan.read_numbers(reads)
    units = [u for u in plan.units if set(u.names) & set(names)]
    raw, fields = plan.patch(msg, units)
    wid = new_write_id()
    inc = incarnation or (write_inc(0, None) if base_version == 0 else None)

    def send() -> Op[Any]:
        return _write_raw(st, key, base_version, raw, schema, by, wid, fields, read_numbers,
                          inc, None)

    reply, resent = yield from _send_settled(st, key, send, wid, None, CAS_RESENDS)
    outcome = parse_outcome(reply, plan.names)
    if _ambiguous(outcome, base_version, resent, inc):
        raise _unknown(key, wid)
    return outcome


async def append_items(
    store: Any, key: str, elements: Message, field: str, reads: list[str],
    base_version: Optional[int], by: Optional[str]
) -> CasResult:
    """Appends the elements of the repeated top-level field ``field`` of ``elements`` (a message
    of the context's type holding only them, already parsed and checked) to the context at
    ``key``, conflicting only with writes to ``reads`` since ``base_version``; returns the
    SDK's :class:`CasResult`.
    """
    result: CasResult = await store.append(key, field, list(getattr(elements, field)),
                                           reads=reads, base_version=base_version,
                                           message_class=type(elements), by=by)
    return result
