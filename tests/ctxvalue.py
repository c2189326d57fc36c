"""Reads and writes stored context values of storage format v3 (docs/PROTOCOL.md, "Storage
format"; v2 still read, and written by ``encode_v2`` to plant old values), for assertions on what
a server, its replica or its AOF holds. Both engines write these bytes.

    >>> v = decode(r.get(key))
    >>> v.version, v.schema, v.payload, v.incarnation, v.floor, v.clock(4)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

MAGIC = b"CTX\x03"     # format v3 (protocol 3): what both engines write
MAGIC_V2 = b"CTX\x02"  # format v2: still read, upgraded to v3 by its first write
HEADER = 44            # v3 fixed header
HEADER_V2 = 24
RECORD = 8             # v3 window record: the digest
RECORD_V2 = 12         # v2 window record: digest + mask
WINDOW = 16           # the default window (a schema without WINDOW)
WINDOW_MAX = 255      # the most records a value holds (the header byte; CTX_WINDOW_MAX)
FIELD_BITS = 31
DELTA_MAX = 0xFFFFFFFF
WHOLE = 1 << 31  # v2 mask bit: the whole context (CTX.CAS, a create)


@dataclass(frozen=True)
class Record:
    digest: bytes  # first 8 bytes of SHA-1(write id); 8 zero bytes for a write without id
    mask: int = 0  # v2: uint32 field mask; v3 records carry no mask (always 0 here)


@dataclass(frozen=True)
class Value:
    version: int
    updated_ms: int
    window: tuple[Record, ...]  # newest first: window[i] produced version - i
    schema: bytes
    updated_by: bytes
    payload: bytes
    header_len: int  # GETRANGE key <header_len> -1 is the payload
    format: int = 3
    incarnation: bytes = b""  # 8 bytes (v3); b"" for v2
    floor: int = 0            # v3: version of the newest whole-context write
    clocks: dict[int, int] = field(default_factory=dict)  # v3: bit -> delta, for bits in cmask

    @property
    def oldest_known(self) -> int:
        return self.version - len(self.window) + 1

    @property
    def inc_hex(self) -> str:
        """The incarnation as replies show it: 16 lowercase hex digits, "" before v3."""
        return self.incarnation.hex()

    @property
    def cmask(self) -> int:
        m = 0
        for bit in self.clocks:
            m |= 1 << bit
        return m

    def clock(self, number: int) -> int:
        """The clock of top-level field ``number`` (v3): floor + delta, or floor."""
        return self.floor + self.clocks.get((number - 1) % FIELD_BITS, 0)

    def record_for(self, write_id: bytes | str) -> tuple[int, Record] | None:
        """(version that write produced, record) when the id is in the window, else None."""
        d = id_digest(write_id)
        for i, rec in enumerate(self.window):
            if rec.digest == d:
                return self.version - i, rec
        return None


def id_digest(write_id: bytes | str) -> bytes:
    if isinstance(write_id, str):
        write_id = write_id.encode()
    return hashlib.sha1(write_id).digest()[:8]


def field_bit(number: int) -> int:
    """The mask bit of top-level field ``number``."""
    return 1 << ((number - 1) % FIELD_BITS)


def is_v3(raw: bytes | None) -> bool:
    return raw is not None and len(raw) >= HEADER and raw[:4] == MAGIC


def is_v2(raw: bytes | None) -> bool:
    return raw is not None and len(raw) >= HEADER_V2 and raw[:4] == MAGIC_V2


def _tail(raw: bytes, off: int, s: int, b: int) -> tuple[bytes, bytes, bytes, int]:
    if off + s + b > len(raw):
        raise ValueError("lengths exceed the value")
    return raw[off: off + s], raw[off + s: off + s + b], raw[off + s + b:], off + s + b


def decode_v2(raw: bytes) -> Value:
    if not is_v2(raw):
        raise ValueError("not a v2 context value")
    version, updated_ms, n, s, b = struct.unpack_from("<QQBBH", raw, 4)
    if n > WINDOW_MAX or not 1 <= s <= 128 or version < 1 or n > version or version >= 1 << 63:
        raise ValueError("bad v2 header")
    if HEADER_V2 + RECORD_V2 * n + s + b > len(raw):
        raise ValueError("v2 lengths exceed the value")
    window = tuple(
        Record(raw[HEADER_V2 + RECORD_V2 * i: HEADER_V2 + RECORD_V2 * i + 8],
               struct.unpack_from("<I", raw, HEADER_V2 + RECORD_V2 * i + 8)[0])
        for i in range(n))
    schema, by, payload, hl = _tail(raw, HEADER_V2 + RECORD_V2 * n, s, b)
    return Value(version, updated_ms, window, schema, by, payload, hl, format=2)


def decode(raw: bytes) -> Value:
    """Decodes a v3 (or v2) value; ValueError when ``raw`` is not one (the type rule of
    PROTOCOL.md)."""
    if is_v2(raw):
        return decode_v2(raw)
    if not is_v3(raw):
        raise ValueError("not a v3 context value")
    version, updated_ms, inc, floor, cmask, n, s, b = struct.unpack_from("<QQ8sQIBBH", raw, 4)
    if n > WINDOW_MAX or not 1 <= s <= 128 or version < 1 or n > version or version >= 1 << 63:
        raise ValueError("bad v3 header")
    if not 1 <= floor <= version or cmask & WHOLE or inc == bytes(8):
        raise ValueError("bad v3 clocks or incarnation")
    bits = [bit for bit in range(FIELD_BITS) if cmask >> bit & 1]
    if HEADER + 4 * len(bits) > len(raw):
        raise ValueError("v3 deltas exceed the value")
    clocks = {}
    for i, bit in enumerate(bits):
        d = struct.unpack_from("<I", raw, HEADER + 4 * i)[0]
        if d < 1 or floor + d > version:
            raise ValueError("bad v3 clock delta")
        clocks[bit] = d
    off = HEADER + 4 * len(bits)
    if off + RECORD * n > len(raw):
        raise ValueError("v3 window exceeds the value")
    window = tuple(Record(raw[off + RECORD * i: off + RECORD * i + 8]) for i in range(n))
    schema, by, payload, hl = _tail(raw, off + RECORD * n, s, b)
    return Value(version, updated_ms, window, schema, by, payload, hl, format=3,
                 incarnation=inc, floor=floor, clocks=clocks)


def _digest(r: Any) -> bytes:
    if isinstance(r, Record):
        return r.digest
    if isinstance(r, tuple):
        return bytes(r[0])
    return bytes(r)


def encode(version: int, updated_ms: int, window: Iterable[Any], schema: bytes,
           updated_by: bytes, payload: bytes, *, incarnation: bytes = b"\x01" * 8,
           floor: int | None = None, clocks: dict[int, int] | None = None) -> bytes:
    """A v3 value (to plant hand-made values, or to compute the bytes a write must store):
    ``window`` holds Records, digests or (digest, mask) pairs, newest first; ``clocks`` maps a
    bit (0..30) to its delta above ``floor`` (default: floor = version, no clocks). Writes what
    it is given, valid or not."""
    digests = [_digest(r) for r in window]
    clocks = clocks or {}
    floor = version if floor is None else floor
    cmask = 0
    for bit in clocks:
        cmask |= 1 << bit
    out = bytearray(MAGIC)
    out += struct.pack("<QQ8sQIBBH", version, updated_ms, incarnation, floor, cmask,
                       len(digests), len(schema), len(updated_by))
    for bit in sorted(clocks):
        out += struct.pack("<I", clocks[bit])
    for d in digests:
        out += d
    return bytes(out + schema + updated_by + payload)


def encode_v2(version: int, updated_ms: int, window: Iterable[Any], schema: bytes,
              updated_by: bytes, payload: bytes) -> bytes:
    """A v2 value (as a protocol-2 server stored it); ``window`` holds Records or (digest,
    mask) pairs, newest first."""
    recs = [r if isinstance(r, Record) else Record(*r) for r in window]
    out = bytearray(MAGIC_V2)
    out += struct.pack("<QQBBH", version, updated_ms, len(recs), len(schema), len(updated_by))
    for r in recs:
        out += r.digest + struct.pack("<I", r.mask)
    return bytes(out + schema + updated_by + payload)


def blanked(raw: bytes) -> bytes:
    """A context value with what differs between two runs of the same writes zeroed:
    updated_ms, the window's id digests (the SDK sends a fresh id with every write that names
    none) and, for v3, the incarnation (minted at random on a create without INC). v2 masks and
    v3 clocks stay."""
    v = decode(raw)
    if v.format == 2:
        n = len(v.window)
        window = b"".join(bytes(8) + raw[at + 8:at + 12]
                          for at in range(HEADER_V2, HEADER_V2 + RECORD_V2 * n, RECORD_V2))
        return raw[:12] + bytes(8) + raw[20:HEADER_V2] + window + raw[HEADER_V2 + RECORD_V2 * n:]
    at = HEADER + 4 * len(v.clocks)
    end = at + RECORD * len(v.window)
    return raw[:12] + bytes(16) + raw[28:at] + bytes(end - at) + raw[end:]
