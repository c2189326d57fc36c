"""The writes the tools make that the Store has no public method for, as sans-I/O operations run
by the asyncio front end (``ctxlink.aio._run``), built from the SDK's own pieces so that they
are exactly once like ``cas``/``update``:

- :func:`op_patch`: a field patch (``CTX.PATCH``) based on a version the caller read earlier
  (``update(reads=...)`` reads the current state itself, so it cannot be based on an older
  version a model saw);
- :func:`append_items`: the append to a repeated field (TODO below).
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

__all__ = ["op_patch", "append_items", "AppendNotAvailable"]


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


class AppendNotAvailable(Exception):
    """This server's SDK has no append to a repeated field yet."""


async def append_items(
    store: Any, key: str, elements: Message, field: str, reads: list[str],
    base_version: Optional[int], by: Optional[str]
) -> CasResult:
    """Appends the elements of the repeated top-level field ``field`` of ``elements`` (a message
    of the context's type holding only them, already parsed and checked) to the context at
    ``key``, conflicting only with writes to ``reads`` since ``base_version``; returns the
    SDK's :class:`CasResult`.

    TODO(lead, when merging the APPEND branch): this calls the asyncio Store's ``append``
    (``store.append(key, field, items, reads=, base_version=, message_class=, by=)``, as that
    branch has it) when the Store has one, and raises AppendNotAvailable otherwise (the tool
    then answers ``NOT_AVAILABLE``). After the merge, drop the ``getattr`` fallback, adjust the
    call if that API changed, and run tests/test_mcp.py: its append checks take the real path as
    soon as ``ctxlink.aio.Store`` has ``append``. They passed on both engines on a trial merge
    of this branch with the APPEND branch at 7aaa1f8 (a copy outside the worktree).
    """
    append = getattr(store, "append", None)
    if append is None:
        raise AppendNotAvailable(
            "append_items is not available on this server: its ctxlink SDK has no append to a "
            "repeated field yet; read the context with get_context and write the whole field "
            "with update_fields instead")
    result: CasResult = await append(key, field, list(getattr(elements, field)), reads=reads,
                                     base_version=base_version,
                                     message_class=type(elements), by=by)
    return result
