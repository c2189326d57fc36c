"""``update`` (and ``migrate``) as a sans-I/O operation, in phases:

1. read: the stored message (or ``default()``'s, to create the context) — :func:`_read`;
2. apply: the caller's function changes it — :func:`_apply`;
3. diff: the whole message with its next version, or a field patch of what changed —
   :func:`_prepare`;
4. send: once, re-sent after a lost reply until settled — :func:`_send`;
5. settle: success gives the stored state (:func:`_done`), a conflict another round
   (:func:`_after_conflict`) until ``retries`` or ``timeout`` runs out.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from ctxlink._exceptions import (
    ArgumentError,
    ConflictError,
    FieldError,
    NotFoundError,
    ValidationError,
    VersionError,
)
from ctxlink._fields import FieldNameError, FieldPlan, field_plan
from ctxlink._instr import Await, Op, Sleep
from ctxlink._protocol import Outcome, parse_outcome, ttl_ms
from ctxlink._registry import check_message_class
from ctxlink._send import TRANSPORT_ERRORS
from ctxlink._settle import _ambiguous, _reads_not_sent, _send_settled, _unknown
from ctxlink._state import State
from ctxlink._telemetry import update_conflict, update_done
from ctxlink._types import Backoff, CasResult, Snapshot, Updated, descriptor_of
from ctxlink._write import (
    _check_type,
    _vfield,
    _vfield_changed,
    _write_raw,
    check_by,
    new_write_id,
    op_get,
    write_inc,
)


def _field_error(exc: FieldNameError) -> FieldError:
    return FieldError(f"CTXFIELD {exc}")


@dataclass
class _Update:
    """One ``update`` call: its arguments, and what its rounds count and remember."""

    st: State
    key: Any
    fn: Optional[Callable[[Any], Any]]
    message_class: type[Message]
    schema: Optional[str]
    by: Optional[str]
    retries: Optional[int]
    default: Optional[Callable[[], Any]]
    drop_unknown: bool
    reads: Optional[Any]
    timeout: Optional[float]
    pause: Backoff
    deadline: Optional[float]
    px: Optional[int] = None
    calls: int = 0
    conflicts: int = 0
    #: the schema name whose message type was checked against the class
    checked: Optional[str] = None

    @property
    def desc(self) -> Descriptor:
        return descriptor_of(self.message_class)


@dataclass
class _Write:
    """One round's write: the whole message (``plan`` None) or a field patch."""

    msg: Message
    expected: int
    name: str
    vf: str
    wid: str
    raw: bytes
    plan: Optional[FieldPlan] = None
    fields: tuple[int, ...] = ()
    read_numbers: tuple[int, ...] = ()
    #: INC: the incarnation of the state fn saw (a create: a fresh one; None for v1/v2)
    inc: Optional[str] = None


def op_update(
    st: State,
    key: Any,
    fn: Optional[Callable[[Any], Any]],
    message_class: type[Message],
    schema: Optional[str],
    by: Optional[str],
    retries: Optional[int],
    default: Optional[Callable[[], Any]],
    drop_unknown: bool = False,
    reads: Optional[Any] = None,
    timeout: Optional[float] = None,
    backoff: Optional[Backoff] = None,
    ttl: Optional[float] = None,
) -> Op[Updated[Any]]:
    """``update`` (and ``migrate`` with ``drop_unknown``: the stored payload is parsed leniently,
    fields the class does not know are dropped, and ``fn`` may be None).

    Each attempt gets its own write id. After a transport error the same attempt is re-sent
    (same payload, same id) until ``timeout``; ``fn`` runs again only after a real conflict.
    Every write carries the incarnation of the state ``fn`` saw: a context deleted and created
    again in between is ``ContextReplacedError``, never retried (``fn``'s result must not land on
    the new context). ``ttl``: seconds, stored with every write (``PX``)."""
    pause = _check_args(st, fn, message_class, by, retries, reads, timeout, backoff)
    px = None if ttl is None else ttl_ms(ttl)
    deadline = None if timeout is None else time.monotonic() + timeout
    u = _Update(st, key, fn, message_class, schema, by, retries, default, drop_unknown, reads,
                timeout, pause, deadline, px)
    snap = yield from op_get(st, key)
    read_at = time.monotonic()  # of the state the next attempt is based on (its staleness)
    while True:
        msg, expected, name = yield from _read(u, snap)
        before = None
        if reads is not None and snap is not None:  # a patch: to tell what fn changed
            before = message_class()
            before.CopyFrom(msg)
        msg = yield from _apply(u, msg)
        write = yield from _prepare(u, before, msg, expected, name)
        if write is None:  # nothing to write: the state fn saw
            assert snap is not None and before is not None
            return Updated(snap[0], before, snap[1], name, u.calls)
        write.inc = write_inc(expected, snap)
        outcome = yield from _send(u, write)
        if outcome.result.ok:
            update_done(st, key, by, read_at)  # staleness metric and warning: _telemetry.py
            return (yield from _done(u, write, outcome))
        update_conflict(st, write.fields, outcome.changed)
        snap = yield from _after_conflict(u, outcome.result)
        read_at = time.monotonic()


def _check_args(
    st: State,
    fn: Optional[Callable[[Any], Any]],
    message_class: type[Message],
    by: Optional[str],
    retries: Optional[int],
    reads: Optional[Any],
    timeout: Optional[float],
    backoff: Optional[Backoff],
) -> Backoff:
    """Refuses bad arguments before anything is sent; returns the backoff between conflicts."""
    check_message_class(message_class, "message_class")
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be a function taking the message, not {type(fn).__name__}")
    if retries is not None and (type(retries) is not int or retries < 0):
        raise ArgumentError(f"retries must be None (no limit) or an int >= 0, not {retries!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be None or a number of seconds, not {timeout!r}")
        if not timeout > 0:
            raise ArgumentError(f"timeout must be None or a number of seconds > 0, not {timeout}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a ctxlink.Backoff(base, cap), not {backoff!r}")
    pause = backoff if backoff is not None else st.backoff
    check_by(by)
    desc = descriptor_of(message_class)
    if reads is not None:  # names checked before anything is sent
        try:
            field_plan(desc, st.vfield_by_type.get(desc.full_name, "version")).read_numbers(reads)
        except FieldNameError as exc:
            raise _field_error(exc) from None
    return pause


# --- phase 1: read


def _read(u: _Update, snap: Optional[Snapshot]) -> Op[tuple[Message, int, str]]:
    """(message fn sees, expected version, schema name): the stored context's, or for a missing
    context ``default()``'s, created at version 0 under ``schema``."""
    if snap is None:
        return (yield from _first(u))
    expected, name = snap[0], snap[2]
    yield from _check_type_once(u, name)
    return _decode(u, snap), expected, name


def _first(u: _Update) -> Op[tuple[Message, int, str]]:
    if u.default is None:
        raise NotFoundError(
            f"no context at {u.key!r} and no default= to create one"
            if not u.drop_unknown
            else f"no context at {u.key!r} to migrate"
        )
    if u.schema is None:
        raise ArgumentError("update() needs schema= to create a context from default()")
    yield from _check_type_once(u, u.schema)
    first = u.default()
    if inspect.isawaitable(first):
        first = yield Await(first)
    msg = u.message_class()
    msg.CopyFrom(first)
    return msg, 0, u.schema


def _check_type_once(u: _Update, name: str) -> Op[None]:
    """The message-type check of schema ``name``, once per name and call (skipped when the
    cached type already matches)."""
    if u.checked != name and u.st.type_by_schema.get(name) != u.desc.full_name:
        yield from _check_type(u.st, name, u.desc, u.key)
        u.checked = name


def _decode(u: _Update, snap: Snapshot) -> Message:
    if not u.drop_unknown:
        return snap.decode(u.message_class)
    msg = u.message_class()
    try:
        msg.ParseFromString(snap[1])
    except DecodeError as exc:
        raise ValidationError(
            f"CTXINVALID the stored payload at {u.key!r} does not parse as "
            f"{u.desc.full_name} ({exc}); write a fixed payload with cas()"
        ) from None
    msg.DiscardUnknownFields()
    return msg


# --- phase 2: apply


def _apply(u: _Update, msg: Message) -> Op[Message]:
    """Runs fn on ``msg`` (awaiting what an async fn returns). A message of the class's type
    that fn returns replaces the one given; anything else (what `lambda o: o.items.add(...)`
    returns, say) is ignored: fn changed the message in place."""
    u.calls += 1
    if u.fn is None:
        return msg
    out = u.fn(msg)
    if out is None:
        return msg
    if inspect.isawaitable(out):
        out = yield Await(out)
    if isinstance(out, Message) and descriptor_of(out).full_name == u.desc.full_name:
        return out
    return msg


# --- phase 3: diff


def _prepare(
    u: _Update, before: Optional[Message], msg: Message, expected: int, name: str
) -> Op[Optional[_Write]]:
    """The write of this round: without ``before``, the whole message at the next version
    (written even when fn changed nothing: the write also confirms that the state fn decided on
    is still current); with it, a patch of the fields fn changed (None: it changed none)."""
    vf = yield from _vfield(u.st, name, descriptor_of(msg), u.key)
    wid = new_write_id()
    if before is None:
        setattr(msg, vf, expected + 1)
        return _Write(msg, expected, name, vf, wid, msg.SerializeToString())
    plan = field_plan(u.desc, vf)
    assert u.reads is not None  # a patch: update(reads=...)
    try:
        read_numbers = plan.read_numbers(u.reads)
    except FieldNameError as exc:
        raise _field_error(exc) from None
    units = plan.changed(before, msg)
    if not units:
        return None
    raw, fields = plan.patch(msg, units)
    return _Write(msg, expected, name, vf, wid, raw, plan, fields, read_numbers)


# --- phase 4: send


def _send_once(u: _Update, w: _Write) -> Op[Any]:
    if w.plan is None:
        return _write_raw(u.st, u.key, w.expected, w.raw, u.schema or w.name, u.by, w.wid, None,
                          (), w.inc, u.px)
    return _write_raw(u.st, u.key, w.expected, w.raw, u.schema or w.name, u.by, w.wid, w.fields,
                      w.read_numbers, w.inc, u.px)


def _send(u: _Update, w: _Write) -> Op[Outcome]:
    """Sends the write until settled. A whole write refused with CTXVERSION because the schema's
    version field changed since it was cached is rebuilt with the new field and sent again."""
    try:
        reply, resent = yield from _send_settled(
            u.st, u.key, lambda: _send_once(u, w), w.wid, u.deadline, None, u.pause
        )
    except VersionError:
        if w.plan is not None or not (
            yield from _vfield_changed(u.st, w.name, descriptor_of(w.msg), u.key)
        ):
            raise
        w.vf = yield from _vfield(u.st, w.name, descriptor_of(w.msg), u.key)
        setattr(w.msg, w.vf, w.expected + 1)
        w.raw = w.msg.SerializeToString()
        reply, resent = yield from _send_settled(
            u.st, u.key, lambda: _send_once(u, w), w.wid, u.deadline, None, u.pause
        )
    outcome = parse_outcome(reply, w.plan.names if w.plan is not None else None)
    if _ambiguous(outcome, w.expected, resent, w.inc):
        raise _unknown(u.key, w.wid)
    return outcome


# --- phase 5: settle


def _done(u: _Update, w: _Write, outcome: Outcome) -> Op[Updated[Any]]:
    """The result of a write that succeeded: for a patch, the merged message the server stored."""
    version = outcome.result.version
    if w.plan is None:
        return Updated(version, w.msg, w.raw, w.name, u.calls)
    merged = outcome.raw
    if merged is None:  # a replayed patch: the merge it stored, if nothing came after
        try:
            now = yield from _reads_not_sent(op_get(u.st, u.key))
        except TRANSPORT_ERRORS:  # the write is done: a lost read must not say otherwise
            now = None
        if now is not None and now[0] == version:
            merged = now[1]
    if merged is None:  # overwritten since: the writer's own view, at its version
        setattr(w.msg, w.vf, version)
        return Updated(version, w.msg, w.msg.SerializeToString(), w.name, u.calls)
    stored = u.message_class()
    stored.ParseFromString(merged)
    return Updated(version, stored, merged, w.name, u.calls)


def _after_conflict(u: _Update, result: CasResult) -> Op[Optional[Snapshot]]:
    """The state the next round starts from, or ConflictError when ``retries`` or ``timeout``
    ran out. The state that came with a first conflict is fresh: retry from it at once. After
    repeated conflicts back off, then read again (the conflict's state went stale while
    sleeping, and retrying from it would only conflict again)."""
    u.conflicts += 1
    out_of_retries = u.retries is not None and u.conflicts > u.retries
    if out_of_retries or (u.deadline is not None and time.monotonic() >= u.deadline):
        why = f"{u.conflicts} conflicts" if out_of_retries else f"its {u.timeout:g} s timeout"
        raise ConflictError(
            f"update of {u.key!r} gave up after {why}"
            + (f" (changed: {', '.join(result.changed)})" if result.changed else ""),
            result.current,
            result.changed,
            u.calls,
            u.key,
        )
    if u.conflicts == 1:
        return result.current
    yield Sleep(u.pause.delay(u.conflicts - 1))
    return (yield from op_get(u.st, u.key))
