"""Hand-rolled protobuf wire encoding, to build payloads a protobuf library refuses to produce
(invalid UTF-8, wrong wire types, truncations, groups, overlong varints ...)."""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(n: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (10 bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def long_varint(n: int, length: int) -> bytes:
    """``n`` as a varint padded with continuation bytes to exactly ``length`` bytes
    (valid protobuf up to 10 bytes, malformed beyond)."""
    raw = bytearray(varint(n))
    if len(raw) > length:
        raise ValueError("value needs more bytes")
    while len(raw) < length:
        raw[-1] |= 0x80
        raw.append(0)
    return bytes(raw)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(value)


def f_sint(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(zigzag(value))


def f_fixed64(field: int, value: int) -> bytes:
    return tag(field, I64) + (value & (2**64 - 1)).to_bytes(8, "little")


def f_fixed32(field: int, value: int) -> bytes:
    return tag(field, I32) + (value & (2**32 - 1)).to_bytes(4, "little")


def f_len(field: int, data: bytes) -> bytes:
    return tag(field, LEN) + varint(len(data)) + data


f_bytes = f_len
f_msg = f_len


def f_str(field: int, text: str) -> bytes:
    return f_len(field, text.encode())


def f_group(field: int, body: bytes) -> bytes:
    return tag(field, SGROUP) + body + tag(field, EGROUP)


def packed_varints(field: int, values) -> bytes:
    return f_len(field, b"".join(varint(v) for v in values))


def unpacked_varints(field: int, values) -> bytes:
    return b"".join(f_varint(field, v) for v in values)


def skip_field(data: bytes, i: int) -> int:
    """Offset after the field starting at ``i`` (well-formed input only)."""
    key, i = read_varint(data, i)
    wt = key & 7
    if wt == VARINT:
        _, i = read_varint(data, i)
    elif wt == I64:
        i += 8
    elif wt == I32:
        i += 4
    elif wt == LEN:
        n, i = read_varint(data, i)
        i += n
    else:
        raise ValueError("groups not supported by skip_field")
    return i


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, int]]:
    """[(start, end, field_number)] of the top-level fields of a well-formed message."""
    out = []
    i = 0
    while i < len(data):
        key, _ = read_varint(data, i)
        end = skip_field(data, i)
        out.append((i, end, key >> 3))
        i = end
    return out


def tag_offsets(data: bytes) -> list[int]:
    """Offsets of the top-level tags of a well-formed message, up to its first group."""
    out, i = [], 0
    while i < len(data):
        key, _ = read_varint(data, i)
        out.append(i)
        if key & 7 not in (VARINT, I64, LEN, I32):
            break
        i = skip_field(data, i)
    return out
