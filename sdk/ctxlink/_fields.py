"""Top-level field units of a message type: what ``update(reads=...)`` compares and ``CTX.PATCH``
sends (docs/PROTOCOL.md, "CTX.PATCH").

A **unit** is one top-level field, or every member of one oneof: the server replaces a unit
whole (a repeated, map or message field is replaced whole; a oneof is one unit), so the SDK names
units by all of their field numbers. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Optional

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["Unit", "FieldPlan", "field_plan", "FieldNameError"]


class FieldNameError(ValueError):
    """A field name in ``reads`` that the message type does not have, names the version field,
    or appears twice; the front ends raise it as :class:`ctxlink.FieldError`."""


@dataclass(frozen=True)
class Unit:
    """One unit: the names and numbers of its fields (one field, or a oneof's members)."""

    names: tuple[str, ...]
    numbers: tuple[int, ...]


def _is_repeated(f: FieldDescriptor) -> bool:
    value = getattr(f, "is_repeated", None)
    return bool(value) if value is not None else bool(
        getattr(f, "label", None) == FieldDescriptor.LABEL_REPEATED  # older protobuf
    )


def _real_oneof(f: FieldDescriptor) -> Optional[str]:
    """The name of the oneof ``f`` belongs to, None for none or a proto3 ``optional``."""
    oneof = f.containing_oneof
    if oneof is None:
        return None
    synthetic = getattr(oneof, "is_synthetic", None)  # proto3 optional: a oneof of one field
    if synthetic is None:
        synthetic = len(oneof.fields) == 1 and oneof.name.startswith("_")
    return None if synthetic else oneof.name


class FieldPlan:
    """The units of one message type, minus its version field."""

    def __init__(self, desc: Descriptor, vfield: str) -> None:
        self.desc = desc
        self.type_name = desc.full_name
        self.vfield = vfield
        units: list[Unit] = []
        oneofs: dict[str, list[FieldDescriptor]] = {}
        for f in sorted(desc.fields, key=lambda f: f.number):
            if f.name == vfield:
                continue
            group = _real_oneof(f)
            if group is None:
                units.append(Unit((f.name,), (f.number,)))
            elif group not in oneofs:
                oneofs[group] = [m for m in desc.oneofs_by_name[group].fields if m.name != vfield]
                members = sorted(oneofs[group], key=lambda m: m.number)
                units.append(Unit(tuple(m.name for m in members), tuple(m.number for m in members)))
        self.units: tuple[Unit, ...] = tuple(units)
        self._by_name: dict[str, Unit] = {n: u for u in units for n in u.names}
        self._by_number: dict[int, str] = {
            num: name for u in units for name, num in zip(u.names, u.numbers, strict=True)
        }
        self._fields = {f.name: f for f in desc.fields}

    # -- names <-> numbers ---------------------------------------------------------------------
    def read_numbers(self, reads: Iterable[str]) -> tuple[int, ...]:
        """The field numbers a read set stands for (every member of a named oneof member's oneof),
        ascending. Raises :class:`FieldNameError` for an unknown name, the version field or a name
        given twice."""
        if isinstance(reads, (str, bytes)):
            raise FieldNameError("reads must be a list of field names, not a single string")
        seen: set[str] = set()
        numbers: set[int] = set()
        for name in reads:
            if not isinstance(name, str):
                raise FieldNameError(f"reads holds {name!r}: field names are strings")
            if name in seen:
                raise FieldNameError(f"reads names field {name!r} twice")
            seen.add(name)
            if name == self.vfield:
                raise FieldNameError(
                    f"reads names {name!r}, the version field of {self.type_name}: the version "
                    "is compared by every write anyway"
                )
            unit = self._by_name.get(name)
            if unit is None:
                known = ", ".join(n for u in self.units for n in u.names)
                raise FieldNameError(
                    f"{self.type_name} has no top-level field {name!r} (fields: {known})"
                )
            numbers.update(unit.numbers)
        return tuple(sorted(numbers))

    def names(self, numbers: Iterable[int]) -> tuple[str, ...]:
        """Field numbers from a conflict reply -> names, in the same order (unknown numbers as
        their decimal text)."""
        return tuple(self._by_number.get(int(n), str(int(n))) for n in numbers)

    # -- what fn changed -----------------------------------------------------------------------
    def changed(self, before: Message, after: Message) -> tuple[Unit, ...]:
        """The units whose value differs between ``before`` and ``after`` (same type)."""
        out = []
        for unit in self.units:
            if len(unit.names) > 1:  # a oneof: which member is set, and its value
                which_a = before.WhichOneof(_oneof_name(before, unit))
                which_b = after.WhichOneof(_oneof_name(after, unit))
                if which_a != which_b or (
                    which_a is not None and getattr(before, which_a) != getattr(after, which_b)
                ):
                    out.append(unit)
                continue
            name = unit.names[0]
            f = self._fields[name]
            if _has_presence(f) and before.HasField(name) != after.HasField(name):
                out.append(unit)
            elif getattr(before, name) != getattr(after, name):
                out.append(unit)
        return tuple(out)

    def patch(self, after: Message, units: Iterable[Unit]) -> tuple[bytes, tuple[int, ...]]:
        """The CTX.PATCH payload (only the fields of ``units``, set as in ``after``) and the
        numbers for FIELDS, ascending."""
        keep: set[str] = set()
        numbers: set[int] = set()
        for unit in units:
            keep.update(unit.names)
            numbers.update(unit.numbers)
        msg = type(after)()
        msg.CopyFrom(after)
        for f in msg.DESCRIPTOR.fields:
            if f.name not in keep:
                msg.ClearField(f.name)
        # partial: a proto2 required field outside the units is the server's (it checks the
        # merge); top-level unknown fields and extensions are not in FIELDS, so they are cut
        # from the bytes, while unknown fields inside a kept unit stay (the unit is replaced whole)
        raw = msg.SerializePartialToString(deterministic=True)
        return _only_fields(raw, numbers), tuple(sorted(numbers))


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(raw: bytes, pos: int, tag: int) -> int:
    """The end of the value of ``tag`` starting at ``pos`` (a group: through its end tag)."""
    wire = tag & 7
    if wire == 0:
        return _varint(raw, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(raw, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    if wire == 3:
        while True:
            inner, pos = _varint(raw, pos)
            if inner & 7 == 4:
                return pos
            pos = _skip(raw, pos, inner)
    raise ValueError(f"wire type {wire} at the top level")


def _only_fields(raw: bytes, numbers: set[int]) -> bytes:
    """The top-level field occurrences of ``raw`` whose number is in ``numbers``, in order."""
    out = []
    pos = 0
    while pos < len(raw):
        start = pos
        tag, pos = _varint(raw, pos)
        pos = _skip(raw, pos, tag)
        if tag >> 3 in numbers:
            out.append(raw[start:pos])
    return b"".join(out)


def _has_presence(f: FieldDescriptor) -> bool:
    value = getattr(f, "has_presence", None)
    if value is not None:
        return bool(value)
    return not _is_repeated(f) and (
        f.type == FieldDescriptor.TYPE_MESSAGE or f.containing_oneof is not None
    )


def _oneof_name(msg: Message, unit: Unit) -> str:
    f = msg.DESCRIPTOR.fields_by_name[unit.names[0]]
    return f.containing_oneof.name  # type: ignore[union-attr]


@lru_cache(maxsize=256)
def field_plan(desc: Descriptor, vfield: str) -> FieldPlan:
    """The (cached) plan of ``desc`` with ``vfield`` as its version field."""
    return FieldPlan(desc, vfield)
