"""A seeded corpus of protobuf payloads for the three-way parity test (module, Lua, cffi).

Payloads are written by hand on the wire, so they can be anything a client could send: valid
messages and their mutations (truncation, flipped wire types, unknown fields, bad UTF-8, overlong
and malformed varints, deep nesting, oversize, missing proto2 required fields, closed-enum values
the enum lacks). Two schemas: ``ctxlink.example.Order`` (proto/order.proto, proto3) and
``ctxlink.test.lua.Tree`` (tests/lua/tree.proto: recursive, proto2 required, closed enum, group).

Every item is ``(category, schema name, payload)``; the category is only for the report.
"""

from __future__ import annotations

import random

Item = tuple[str, str, bytes]

# --------------------------------------------------------------------------- wire writing


from wire import f_fixed32 as fx32  # tests/wire.py: the suite's one wire encoder
from wire import f_fixed64 as fx64
from wire import f_group as grp
from wire import f_len as ld
from wire import f_varint as vint
from wire import long_varint as padded_varint
from wire import tag as key
from wire import tag_offsets
from wire import varint


def zz(n: int) -> int:
    return ((n << 1) ^ (n >> 63)) & ((1 << 64) - 1)


# --------------------------------------------------------------------------- text

INVALID_UTF8 = [
    b"\x80", b"\xbf", b"\xff", b"\xfe", b"\xc0\xaf", b"\xc1\x81", b"\xc3", b"\xe2\x82",
    b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x82\x82\xac",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"ab\xc3(cd",
    b"\xf0\x9f\x98", b"\xe2\x28\xa1",
]
VALID_UTF8 = [
    b"", b"plain", b"\x00zero", "é".encode(), "€".encode(), "中文".encode(), "😀".encode(),
    b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
    b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf",
]


def text(rng: random.Random) -> bytes:
    return b"".join(rng.choice(VALID_UTF8 + [b"sku-", b"o-7", b"y" * rng.randint(1, 30)])
                    for _ in range(rng.randint(0, 3)))


# --------------------------------------------------------------------------- Order (proto3)

ORDER_INTS = [0, 1, 2, 127, 128, 300, 1 << 31, 1 << 40, (1 << 63) - 1, -1, -300]


def order(rng: random.Random, version: int = 1) -> bytes:
    """A valid Order with random fields, version field included (fields in number order)."""
    out = bytearray()
    if rng.random() < 0.85:
        out += ld(1, text(rng))
    out += vint(2, version)
    if rng.random() < 0.6:
        out += vint(3, rng.choice([0, 1, 2, 3, 4, 5, 6, 99, -1]))  # open enum: any value
    for num in (4, 5, 6):
        if rng.random() < 0.5:
            out += vint(num, rng.choice(ORDER_INTS))
    if rng.random() < 0.3:
        out += vint(7, rng.choice([0, 1, 5]))
    if rng.random() < 0.4:
        out += ld(8, text(rng))
    if rng.random() < 0.4:
        out += vint(9, rng.choice(ORDER_INTS))
    for _ in range(rng.randint(0, 3)):
        item = bytearray()
        if rng.random() < 0.8:
            item += ld(1, text(rng))
        if rng.random() < 0.7:
            item += vint(2, rng.choice([0, 1, 3, 1 << 32, (1 << 32) + 5]))
        out += ld(10, bytes(item))
    return bytes(out)


def truncated(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def flipped_wire_type(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    at = rng.choice(tag_offsets(data))
    b[at] = (b[at] & ~7) | rng.choice([w for w in range(8) if w != b[at] & 7])
    return bytes(b)


def with_unknown(rng: random.Random, data: bytes) -> bytes:
    num = rng.choice([11, 20, 99, 1000, 19000, (1 << 29) - 1])
    extra = rng.choice([
        vint(num, 1), fx32(num, 2), fx64(num, 3), ld(num, b"u"), grp(num, vint(1, 1)),
        grp(num, grp(num + 1, ld(2, b"in"))),
        key(num, 3) + vint(1, 1),  # group never closed
        grp(num, b"")[:-1] + key(num + 1, 4),  # closed by the wrong number
        key(num, 6) + b"\x00", key(num, 7) + b"\x00",  # wire types 6 and 7 do not exist
    ])
    at = rng.choice(tag_offsets(data) + [len(data)])
    return data[:at] + extra + data[at:]


def with_bad_utf8(rng: random.Random, data: bytes) -> bytes:
    bad = rng.choice(INVALID_UTF8)
    return data + rng.choice([ld(1, bad), ld(8, b"x" + bad), ld(10, ld(1, bad + b"y"))])


BAD_VARINTS = [
    key(2, 0) + padded_varint(1, 10),  # 10-byte spelling of 1 (still valid wire)
    key(2, 0) + padded_varint(1, 11),  # 11 bytes: too long
    key(2, 0) + b"\xff" * 9 + b"\x01",  # 2^64 - 1
    key(2, 0) + b"\xff" * 9 + b"\x02",  # over 64 bits
    key(2, 0) + b"\x80" * 10 + b"\x00",
    key(2, 0) + b"\xff",  # cut inside the varint
    key(4, 0) + b"\x80\x80",
    padded_varint((4 << 3) | 0, 5) + b"\x07",  # tag in 5 bytes
    padded_varint((4 << 3) | 0, 6) + b"\x07",  # tag in 6 bytes
    key(8, 2) + padded_varint(1, 5) + b"a",  # length in 5 bytes
    key(8, 2) + padded_varint(1, 6) + b"a",  # length in 6 bytes
    b"\x80\x80\x80\x80\x80\x01",  # tag over 32 bits
    b"\x00\x01",  # field number 0
    b"\x07",  # field 0 wire type 7
    key(8, 2) + varint(1 << 20) + b"short",  # length past the end
    key(10, 2) + b"\xff\xff\xff\xff\x0f",  # huge length, nothing after
]


def with_bad_varint(rng: random.Random, data: bytes) -> bytes:
    return data + rng.choice(BAD_VARINTS)


def order_corpus(rng: random.Random, max_payload: int) -> list[Item]:
    items: list[Item] = []
    for _ in range(90):
        items.append(("valid", "order", order(rng)))
    for v in (0, 2, 3, -1, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        items.append(("version", "order", order(rng, v)))
    items.append(("version", "order", ld(1, b"no version field")))
    items.append(("version", "order", vint(2, 7) + vint(2, 1)))  # last one wins
    items.append(("valid", "order", b""))  # version 0 -> CTXVERSION
    for _ in range(50):
        items.append(("truncation", "order", truncated(rng, order(rng))))
    for _ in range(50):
        items.append(("wire-type", "order", flipped_wire_type(rng, order(rng))))
    for _ in range(50):
        items.append(("unknown", "order", with_unknown(rng, order(rng))))
    for _ in range(40):
        items.append(("utf8", "order", with_bad_utf8(rng, order(rng))))
    for bad in BAD_VARINTS:
        items.append(("varint", "order", order(rng) + bad))
    for _ in range(20):
        items.append(("varint", "order", with_bad_varint(rng, order(rng))))
    for _ in range(40):  # random byte damage
        b = bytearray(order(rng))
        for _ in range(rng.randint(1, 3)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        items.append(("bytes", "order", bytes(b)))
    # size: exactly at the limit, one over, far over
    head = vint(2, 1)
    fill = max_payload - len(head) - 1 - len(varint(max_payload))
    at_limit = head + ld(8, b"z" * fill)
    while len(at_limit) > max_payload:
        fill -= 1
        at_limit = head + ld(8, b"z" * fill)
    items.append(("oversize", "order", at_limit))
    items.append(("oversize", "order", at_limit + b"\x00" * (max_payload + 1 - len(at_limit))))
    items.append(("oversize", "order", head + ld(8, b"z" * (max_payload + 10))))
    items.append(("oversize", "order", order(rng) + ld(8, b"q" * (4 * max_payload))))
    return items


# --------------------------------------------------------------------------- Tree (proto2)
# Tree: 1 version int64, 2 label string, 3 kids repeated Tree, 4 next Tree, 5 leaf Leaf,
# 6 leaves repeated Leaf, 7 level Level, 8 levels repeated Level, 9 plevels packed Level,
# 10 group Box {11 a int32, 12 b string (required), 13 t Tree}, 14 zs repeated sint32,
# 15 f4 packed fixed32, 16 f8 repeated double, 17 blob bytes, 18 u uint32, extensions 100-199.
# Leaf: 1 name string (required), 2 level Level. Level: 0, 1, 5, -3 (closed).

LEVELS_IN = [0, 1, 5, -3]
LEVELS_OUT = [2, 3, 4, -1, -2, 6, 1 << 31, (1 << 32) + 1, -(1 << 31)]


def leaf(name: bytes | None = b"n", level: int | None = None) -> bytes:
    return (ld(1, name) if name is not None else b"") + (
        vint(2, level) if level is not None else b"")


def tree(*parts: bytes, version: int | None = 1) -> bytes:
    return (vint(1, version) if version is not None else b"") + b"".join(parts)


def nest(depth: int, inner: bytes = b"", num: int = 4) -> bytes:
    body = inner
    for _ in range(depth):
        body = ld(num, body)
    return body


def box(depth: int) -> bytes:
    body = ld(12, b"b")
    for _ in range(depth):
        body = grp(10, ld(12, b"b") + ld(13, body))
    return body


def random_tree(rng: random.Random, depth: int = 0) -> bytes:
    out = bytearray()
    if rng.random() < 0.5:
        out += ld(2, text(rng))
    if depth < 3:
        for _ in range(rng.randint(0, 2)):
            out += ld(3, random_tree(rng, depth + 1))
    if rng.random() < 0.4:
        out += ld(5, leaf(text(rng) or b"x", rng.choice([None] + LEVELS_IN)))
    if rng.random() < 0.3:
        out += vint(7, rng.choice(LEVELS_IN))
    if rng.random() < 0.3:
        out += ld(9, b"".join(varint(rng.choice(LEVELS_IN)) for _ in range(rng.randint(0, 3))))
    if rng.random() < 0.3:
        out += grp(10, vint(11, rng.randint(-5, 5)) + ld(12, text(rng)))
    if rng.random() < 0.3:
        out += ld(14, b"".join(varint(zz(rng.randint(-99, 99))) for _ in range(3)))
    if rng.random() < 0.3:
        out += fx64(16, rng.getrandbits(64))
    if rng.random() < 0.2:
        out += ld(17, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 6))))
    return bytes(out)


def tree_corpus(rng: random.Random, max_depth: int) -> list[Item]:
    items: list[Item] = []
    for _ in range(40):
        items.append(("valid", "tree", tree(random_tree(rng))))
    for d in range(max_depth + 4):  # deep nesting through next, kids, groups, leaves
        items.append(("depth", "tree", tree(nest(d))))
        items.append(("depth", "tree", tree(nest(d, num=3))))
        items.append(("depth", "tree", tree(nest(d, ld(5, leaf())))))
        items.append(("required", "tree", tree(nest(d, ld(5, leaf(None))))))
        items.append(("depth", "tree", tree(grp(10, ld(12, b"b") + ld(13, nest(d))))))
        items.append(("depth", "tree", tree(vint(100 + d, 1))))  # extension: unknown
    for d in range(max_depth // 2 + 3):
        items.append(("depth", "tree", tree(box(d))))
        unknown_groups = b""
        for i in reversed(range(d + 2)):
            unknown_groups = grp(150 + i, unknown_groups)
        items.append(("unknown", "tree", tree(unknown_groups)))
    for lvl in LEVELS_IN + LEVELS_OUT:  # closed enum, in every position
        items.append(("enum", "tree", tree(vint(7, lvl))))
        items.append(("enum", "tree", tree(vint(8, lvl))))
        items.append(("enum", "tree", tree(ld(9, varint(1) + varint(lvl)))))
        items.append(("enum", "tree", tree(ld(8, varint(lvl)))))  # packed, declared unpacked
        items.append(("enum", "tree", tree(ld(5, leaf(level=lvl)))))
    items += [
        ("required", "tree", tree(ld(5, leaf(None)))),
        ("required", "tree", tree(ld(5, leaf(None)), ld(5, leaf()))),
        ("required", "tree", tree(ld(5, leaf()), ld(5, leaf(None, 1)))),
        ("required", "tree", tree(ld(6, leaf()), ld(6, leaf(None)))),
        ("required", "tree", tree(grp(10, vint(11, 3)))),
        ("required", "tree", tree(grp(10, vint(11, 3)), grp(10, ld(12, b"b")))),
        ("required", "tree", tree(ld(3, tree(ld(5, leaf(None)), version=None)))),
        ("wire-type", "tree", tree(ld(10, ld(12, b"b")))),  # group as length-delimited
        ("wire-type", "tree", tree(grp(4, b""))),  # message as group
        ("wire-type", "tree", tree(fx32(15, 9))),  # packed fixed32 unpacked: fine
        ("wire-type", "tree", tree(ld(15, b"\x01" * 8))),
        ("wire-type", "tree", tree(ld(15, b"\x01" * 6))),  # packed length not a multiple
        ("wire-type", "tree", tree(ld(16, b"\x02" * 16))),
        ("wire-type", "tree", tree(ld(16, b"\x02" * 9))),
        ("wire-type", "tree", tree(fx64(1, 1), version=None)),  # version as fixed64
        ("varint", "tree", tree(ld(14, b"\x80"))),  # cut varint inside packed
        ("varint", "tree", tree(ld(14, b"\xff" * 10 + b"\x01"))),
        ("varint", "tree", tree(vint(18, 1 << 40))),  # uint32 given 40 bits: truncated, ok
        ("utf8", "tree", tree(ld(17, b"\xff\xfe"))),  # bytes: never checked
        ("group", "tree", tree(key(10, 3) + ld(12, b"b"))),  # unclosed
        ("group", "tree", tree(key(10, 3) + ld(12, b"b") + key(11, 4))),  # wrong end
        ("group", "tree", tree(key(10, 4))),  # end without start
        ("version", "tree", tree(version=None)),
        ("version", "tree", tree(version=2)),
        ("version", "tree", tree(vint(1, 1), version=9)),
    ]
    for s in INVALID_UTF8 + VALID_UTF8:
        items.append(("utf8", "tree", tree(ld(2, s))))
        items.append(("utf8", "tree", tree(ld(3, tree(ld(5, leaf(b"k" + s)), version=None)))))
        items.append(("utf8", "tree", tree(grp(10, ld(12, s)))))
    seeds = [tree(random_tree(rng)) for _ in range(20)] + [x[2] for x in items[:60]]
    for _ in range(80):
        b = bytearray(rng.choice(seeds))
        if not b:
            continue
        op = rng.randrange(3)
        if op == 0:
            items.append(("truncation", "tree", bytes(b[: rng.randrange(len(b))])))
        elif op == 1:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            items.append(("bytes", "tree", bytes(b)))
        else:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
            items.append(("bytes", "tree", bytes(b)))
    return items


def corpus(seed: int, max_payload: int, max_depth: int) -> list[Item]:
    rng = random.Random(seed)
    return order_corpus(rng, max_payload) + tree_corpus(rng, max_depth)
