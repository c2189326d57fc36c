"""``append``: elements added to a repeated top-level field without conflicting with other
appenders (``CTX.PATCH ... APPEND``; docs/PROTOCOL.md, "Appends"), optionally with a field patch
and reads in the same atomic write."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Optional, Sequence

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ctxlink._exceptions import ArgumentError, ConflictError
from ctxlink._instr import Op, Write
from ctxlink._lua import _write_lua
from ctxlink._protocol import MODULE, _options, parse_outcome
from ctxlink._settle import CAS_RESENDS, _ambiguous, _send_settled, _unknown
from ctxlink._state import State
from ctxlink._types import CasResult
from ctxlink._write import (
    _check_version,
    _schema_type,
    _vfield,
    check_by,
    check_incarnation,
    check_key,
    check_write_id,
    new_write_id,
    op_get,
)

#: how often an append whose base the window no longer covers is sent again with the base the
#: server reported (each such refusal proves the write was not applied)
STALE_RETRIES = 8

_REBASE = (b"rebase", "rebase")


def append_command(
    key: Any,
    base: int,
    payload: bytes,
    fields: tuple[int, ...],
    apps: tuple[int, ...],
    reads: tuple[int, ...],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any,
    px: Optional[int] = None,
    inc: Optional[str] = None,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.PATCH`` with ``APPEND``."""
    args: tuple[Any, ...] = ("CTX.PATCH", key, base, payload)
    if fields:
        args += ("FIELDS", len(fields), *fields)
    args += ("APPEND", len(apps), *apps)
    if reads:
        args += ("READS", len(reads), *reads)
    return args + _options(schema, by, write_id, inc, px)


def _message_class(st: State, key: Any, schema: Optional[str],
                   message_class: Optional[type[Message]]) -> Op[tuple[type[Message], str]]:
    """The context's message class and its schema name (None when unknown and not needed)."""
    name = schema if schema is not None else st.key_schema.get(key)
    if name is None:
        snap = yield from op_get(st, key)
        if snap is None and message_class is None:
            raise ArgumentError(f"{key!r} does not exist: appending to it creates it, which "
                                "needs schema=")
        name = snap.schema if snap is not None else None
        if name:
            st.key_schema.put(key, name)
    if message_class is not None:
        return message_class, name or ""
    type_name = (yield from _schema_type(st, name, key)) if name else None
    try:
        if type_name is None:
            raise KeyError(name)
        desc = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        raise ArgumentError(f"the message type of schema {name!r} is not known here: pass "
                            "message_class= (or register_schema the type in this process, from "
                            "the default descriptor pool)") from None
    return message_factory.GetMessageClass(desc), name or ""


def _field(desc: Descriptor, name: str) -> FieldDescriptor:
    fd = desc.fields_by_name.get(name)
    if fd is None:
        raise ArgumentError(f"{desc.full_name} has no field {name!r}")
    label: Any = getattr(fd, "label", None)
    repeated = getattr(fd, "is_repeated", label == FieldDescriptor.LABEL_REPEATED)
    if not repeated or (
            fd.message_type is not None and fd.message_type.GetOptions().map_entry):
        raise ArgumentError(f"field {name!r} of {desc.full_name} is not a repeated field "
                            "(maps cannot be appended to)")
    return fd


def _patch_fields(desc: Descriptor, patch: Message, vfield: str, app: str) -> tuple[int, ...]:
    """The FIELDS of a patch message: every field it sets (a oneof with all its members)."""
    nums: set[int] = set()
    for fd, _ in patch.ListFields():
        if fd.name == app:
            raise ArgumentError(f"patch sets {app!r}, the field appended to")
        oneof = fd.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            nums.update(f.number for f in oneof.fields)
        nums.add(fd.number)
    vfd = desc.fields_by_name.get(vfield)
    if vfd is not None:
        nums.discard(vfd.number)
    return tuple(sorted(nums))


def op_append(
    st: State,
    key: Any,
    field: str,
    items: Iterable[Any],
    message_class: Optional[type[Message]],
    reads: Sequence[str],
    patch: Optional[Message],
    base_version: Optional[int],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any,
    px: Optional[int],
    inc: Optional[str] = None,
) -> Op[CasResult]:
    """``append``: see :meth:`ctxlink.Store.append`. Phases: check the arguments, encode the
    write (the patch, then the new elements), choose the base version, send and settle."""
    check_key(key)
    check_by(by)
    inc = None if inc is None else check_incarnation(inc)
    if isinstance(reads, (str, bytes)):
        raise TypeError("reads must be a sequence of field names, not a str")
    if patch is not None and not isinstance(patch, Message):
        raise TypeError(f"patch must be a message, not {type(patch).__name__}")
    if message_class is None and patch is not None:
        message_class = type(patch)
    cls, name = yield from _message_class(st, key, schema, message_class)
    desc: Any = cls.DESCRIPTOR
    fd = _field(desc, field)
    elements = _elements(cls, fd, field, items)
    vfield = yield from _vfield(st, name or None, desc, key)
    fields, raw = _patch_part(cls, desc, patch, vfield, field)
    raw += elements
    rnums = _read_numbers(desc, reads)
    if base_version is not None:
        base = _check_version(base_version, st)
    elif rnums or fields:
        snap = yield from op_get(st, key)
        base = snap.version if snap is not None else 0
    else:
        base = st.append_base.get(key) or 0
    wid = new_write_id() if write_id is None else check_write_id(write_id)
    sch = schema if schema is not None else (name or None) if base == 0 else None
    write = _AppendWrite(key, raw, fields, (fd.number,), rnums, sch, by, wid, px, desc, inc)
    result = yield from _send_append(st, write, base)
    if result.ok or result.current is not None:
        st.append_base.put(key, result.version)
    if result.ok and name:
        st.key_schema.put(key, name)
    return result


def _elements(cls: type[Message], fd: Any, field: str, items: Iterable[Any]) -> bytes:
    """The new elements, encoded as occurrences of ``field`` (TypeError for a wrong item)."""
    msg = cls()
    try:
        rep = getattr(msg, field)
        if fd.message_type is None:
            rep.extend(items)
        else:
            for item in items:
                if not isinstance(item, Message) or \
                        item.DESCRIPTOR.full_name != fd.message_type.full_name:
                    raise TypeError(f"expected a {fd.message_type.full_name}, got "
                                    f"{type(item).__name__}")
                # by bytes: the same type from another descriptor pool is accepted
                rep.add().MergeFromString(item.SerializePartialToString())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"items of {field!r}: {exc}") from exc
    return bytes(msg.SerializePartialToString())


def _patch_part(cls: type[Message], desc: Any, patch: Optional[Message], vfield: str,
                field: str) -> tuple[tuple[int, ...], bytes]:
    """The field patch written with the append: its FIELDS and its bytes (none without one)."""
    if patch is None:
        return (), b""
    if type(patch) is not cls:
        raise TypeError(f"patch is a {type(patch).__name__}, the context a {cls.__name__}")
    p = cls()
    p.CopyFrom(patch)
    if vfield in desc.fields_by_name:
        p.ClearField(vfield)
    return _patch_fields(desc, p, vfield, field), bytes(p.SerializePartialToString())


def _read_numbers(desc: Any, reads: Sequence[str]) -> tuple[int, ...]:
    """READS: the field numbers of ``reads``, ascending, each once."""
    nums = set()
    for r in reads:
        rd = desc.fields_by_name.get(r)
        if rd is None:
            raise ArgumentError(f"{desc.full_name} has no field {r!r} (reads)")
        nums.add(rd.number)
    return tuple(sorted(nums))


@dataclass(frozen=True)
class _AppendWrite:
    """One append as sent (every send of it the same but for the base version)."""

    key: Any
    raw: bytes
    fields: tuple[int, ...]
    apps: tuple[int, ...]
    reads: tuple[int, ...]
    schema: Optional[str]
    by: Optional[str]
    wid: Any
    px: Optional[int]
    desc: Any
    inc: Optional[str] = None

    def inc_at(self, base: int) -> Optional[str]:
        """``INC`` at ``base``: the incarnation the append is based on, checked by the server
        against the context's (``CTXGONE``: it was deleted and created again); none at base 0,
        where the append may create the context (which then gets an incarnation of its own)."""
        return self.inc if base > 0 else None

    def names(self, nums: tuple[int, ...]) -> tuple[str, ...]:
        by_number = self.desc.fields_by_number
        return tuple(by_number[n].name if n in by_number else str(n) for n in nums)


def _send_append(st: State, w: _AppendWrite, base: int) -> Op[CasResult]:
    """Sends the append, settling lost replies by its write id; a ``rebase`` answer (its base
    left the window: not applied) is sent again at the version given, unless an earlier send
    may have landed (then the outcome is unknown)."""
    sent = False
    for _ in range(STALE_RETRIES):
        if st.engine == MODULE:
            send = partial(_send_module, w.key, base, w.raw, w.fields, w.apps, w.reads, w.schema,
                           w.by, w.wid, w.px, w.inc_at(base))
        else:
            send = partial(_write_lua, st, w.key, base, w.raw, w.schema, w.by, w.wid, w.fields,
                           w.reads, w.inc_at(base), w.px, w.apps)
        reply, resent = yield from _send_settled(st, w.key, send, w.wid, None, CAS_RESENDS,
                                                 sent=sent)
        sent = sent or resent
        if isinstance(reply, list) and len(reply) == 2 and reply[0] in _REBASE:
            # not applied; an earlier send of this write may have been, beyond the window
            if sent:
                raise _unknown(w.key, w.wid)
            # the fields it reads and patches did not change in base..reply[1] (checked first)
            base = int(reply[1])
            continue
        outcome = parse_outcome(reply, w.names)  # `changed` by field name, as update() does
        if _ambiguous(outcome, base, sent):
            raise _unknown(w.key, w.wid)
        return outcome.result
    raise ConflictError(
        f"append to {w.key!r} gave up: {STALE_RETRIES} times in a row more writes than the "
        "context's window (the schema's WINDOW) landed between reading the version and the "
        "send (the write id window could not vouch for a re-send); it was not applied", None,
        (), STALE_RETRIES, w.key)


def _send_module(key: Any, base: int, raw: bytes, fields: tuple[int, ...], apps: tuple[int, ...],
                 reads: tuple[int, ...], schema: Optional[str], by: Optional[str], wid: Any,
                 px: Optional[int], inc: Optional[str]) -> Op[Any]:
    return (yield Write(key, append_command(key, base, raw, fields, apps, reads, schema, by, wid,
                                            px, inc)))
