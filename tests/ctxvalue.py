"""Reads a stored context value of storage format v2 (docs/PROTOCOL.md, "Storage format"), for
assertions on what a server, its replica or its AOF holds. Both engines write these bytes.

    >>> v = decode(r.get(key))
    >>> v.version, v.schema, v.payload, v.window[0].mask
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

MAGIC = b"CTX\x02"
HEADER = 24
RECORD = 12
WINDOW = 16
WHOLE = 1 << 31  # mask bit: the whole context (CTX.CAS, a create)


@dataclass(frozen=True)
class Record:
    digest: bytes  # first 8 bytes of SHA-1(write id); 8 zero bytes for a write without id
    mask: int      # uint32 field mask


@dataclass(frozen=True)
class Value:
    version: int
    updated_ms: int
    window: tuple[Record, ...]  # newest first: window[i] produced version - i
    schema: bytes
    updated_by: bytes
    payload: bytes
    header_len: int  # GETRANGE key <header_len> -1 is the payload

    @property
    def oldest_known(self) -> int:
        return self.version - len(self.window) + 1

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
    return 1 << ((number - 1) % 31)


def is_v2(raw: bytes | None) -> bool:
    return raw is not None and len(raw) >= HEADER and raw[:4] == MAGIC


def decode(raw: bytes) -> Value:
    """Decodes a v2 value; ValueError when ``raw`` is not one (the type rule of PROTOCOL.md)."""
    if not is_v2(raw):
        raise ValueError("not a v2 context value")
    version, updated_ms, n, s, b = struct.unpack_from("<QQBBH", raw, 4)
    if n > WINDOW or not 1 <= s <= 128 or version < 1 or n > version or version >= 1 << 63:
        raise ValueError("bad v2 header")
    off = HEADER + RECORD * n
    if off + s + b > len(raw):
        raise ValueError("v2 lengths exceed the value")
    window = tuple(
        Record(raw[HEADER + RECORD * i: HEADER + RECORD * i + 8],
               struct.unpack_from("<I", raw, HEADER + RECORD * i + 8)[0])
        for i in range(n))
    schema = raw[off: off + s]
    by = raw[off + s: off + s + b]
    hl = off + s + b
    return Value(version, updated_ms, window, schema, by, raw[hl:], hl)


def encode(version: int, updated_ms: int, window, schema: bytes, updated_by: bytes,
           payload: bytes) -> bytes:
    """A v2 value (to plant hand-made values in tests); ``window`` holds Records or
    (digest, mask) pairs, newest first."""
    recs = [r if isinstance(r, Record) else Record(*r) for r in window]
    out = bytearray(MAGIC)
    out += struct.pack("<QQBBH", version, updated_ms, len(recs), len(schema), len(updated_by))
    for r in recs:
        out += r.digest + struct.pack("<I", r.mask)
    return bytes(out + schema + updated_by + payload)
