"""Payload validation (docs/PROTOCOL.md, "Validation"): tables of bad inputs against a real
server, RedisBloom-style. After every rejected write the stored state must be byte-identical
(and a missing key must stay missing)."""

from __future__ import annotations

import pytest
import redis

import ctxvalue
from backends import make_backend, start_engine_server
from helpers import (assert_error, error_text, key_state,
                     nothing_written)
from wire import (EGROUP, I64, LEN, SGROUP, f_fixed32, f_fixed64, f_group, f_len, f_msg,
                  f_sint, f_str, f_varint, long_varint, packed_varints, tag, unpacked_varints,
                  varint)


def V(v):  # ctxlink.example.Order.version (field 2)
    return f_varint(2, v)


def S(v):  # a valid ctxlink.test.p2.Strict: both required fields
    return f_varint(1, v) + f_str(2, "id-1")


def K(v):  # ctxlink.test.Kitchen.version (field 1)
    return f_varint(1, v)


def item(sku=b"sku", qty=1):
    return f_msg(10, f_len(1, sku) + f_varint(2, qty))


BASE = {"order": V, "strict": S, "kitchen": K, "node": K, "ed": K}

# (id, schema, payload(version), code, field path the message must name or None)
BAD = [
    # ---- malformed wire data
    ("truncated-varint-value", "order", lambda v: V(v) + b"\x18", "CTXINVALID", None),
    ("truncated-varint-continuation", "order", lambda v: V(v) + b"\x20\x80", "CTXINVALID", None),
    ("truncated-tag", "order", lambda v: V(v) + b"\x80", "CTXINVALID", None),
    ("truncated-fixed64", "order", lambda v: V(v) + tag(20, I64) + b"\x00\x00\x00", "CTXINVALID", None),
    ("truncated-fixed32", "order", lambda v: V(v) + tag(20, 5) + b"\x00", "CTXINVALID", None),
    ("string-length-past-end", "order", lambda v: V(v) + b"\x0a\x05abc", "CTXINVALID", None),
    ("huge-length", "order", lambda v: V(v) + b"\x0a" + varint(2**31) + b"abc", "CTXINVALID", None),
    ("negative-length", "order", lambda v: V(v) + b"\x0a" + varint(-1) + b"abc", "CTXINVALID", None),
    ("overlong-varint-11-bytes", "order", lambda v: V(v) + b"\x20" + b"\xff" * 10 + b"\x01", "CTXINVALID", None),
    ("overlong-varint-11-bytes-version", "order", lambda v: b"\x10" + long_varint(v, 11), "CTXINVALID", None),
    ("overlong-length-11-bytes", "order", lambda v: V(v) + b"\x0a" + long_varint(1, 11) + b"a", "CTXINVALID", None),
    ("overlong-tag", "order", lambda v: V(v) + b"\x80" * 5 + b"\x01" + b"\x00", "CTXINVALID", None),
    ("field-number-too-large", "order", lambda v: V(v) + varint((2**29) << 3) + b"\x00", "CTXINVALID", None),
    ("field-number-0-varint", "order", lambda v: V(v) + b"\x00\x01", "CTXINVALID", None),
    ("field-number-0-len", "order", lambda v: V(v) + b"\x02\x00", "CTXINVALID", None),
    ("field-number-0-first", "order", lambda v: b"\x00\x00" + V(v), "CTXINVALID", None),
    ("wire-type-6", "order", lambda v: V(v) + bytes([(4 << 3) | 6]) + b"\x00", "CTXINVALID", None),
    ("wire-type-7", "order", lambda v: V(v) + bytes([(20 << 3) | 7]) + b"\x00", "CTXINVALID", None),
    ("submessage-length-past-end", "order", lambda v: V(v) + tag(10, LEN) + varint(10) + f_str(1, "a"), "CTXINVALID", None),
    ("submessage-inner-truncated", "order", lambda v: V(v) + f_msg(10, b"\x0a\x05ab"), "CTXINVALID", None),
    ("submessage-inner-field-0", "order", lambda v: V(v) + f_msg(10, b"\x00\x01"), "CTXINVALID", None),
    # ---- groups
    ("group-on-string-field", "order", lambda v: V(v) + f_group(1, b""), "CTXINVALID", "order_id"),
    ("unmatched-end-group", "order", lambda v: V(v) + tag(20, EGROUP), "CTXINVALID", None),
    ("unterminated-group", "order", lambda v: V(v) + tag(20, SGROUP) + f_varint(1, 1), "CTXINVALID", None),
    ("mismatched-group-end", "order", lambda v: V(v) + tag(20, SGROUP) + tag(21, EGROUP), "CTXINVALID", None),
    ("end-group-inside-submessage", "order", lambda v: V(v) + f_msg(10, tag(3, EGROUP)), "CTXINVALID", None),
    # ---- wrong wire type on a known field
    ("wrong-wire-type-status", "order", lambda v: V(v) + tag(3, LEN) + b"\x01\x01", "CTXINVALID", "status"),
    ("wrong-wire-type-version", "order", lambda v: f_fixed64(2, v), "CTXINVALID", "version"),
    ("wrong-wire-type-order_id", "order", lambda v: V(v) + f_varint(1, 5), "CTXINVALID", "order_id"),
    ("wrong-wire-type-items", "order", lambda v: V(v) + f_varint(10, 1), "CTXINVALID", "items"),
    ("wrong-wire-type-fixed32-on-int64", "order", lambda v: V(v) + f_fixed32(4, 1), "CTXINVALID", "base_price"),
    ("wrong-wire-type-nested", "order", lambda v: V(v) + f_msg(10, f_varint(1, 1)), "CTXINVALID", "items[0].sku"),
    ("wrong-wire-type-nested-second", "order", lambda v: V(v) + item() + f_msg(10, f_len(2, b"x")), "CTXINVALID", "items[1].quantity"),
    # ---- unknown fields (rejected by default)
    ("unknown-field-varint", "order", lambda v: V(v) + f_varint(99, 1), "CTXINVALID", "99"),
    ("unknown-field-len", "order", lambda v: V(v) + f_len(15, b"abc"), "CTXINVALID", "15"),
    ("unknown-field-group", "order", lambda v: V(v) + f_group(20, f_varint(1, 1)), "CTXINVALID", "20"),
    ("unknown-field-fixed32", "order", lambda v: V(v) + f_fixed32(21, 7), "CTXINVALID", "21"),
    ("unknown-field-fixed64", "order", lambda v: V(v) + f_fixed64(22, 7), "CTXINVALID", "22"),
    ("unknown-field-largest-number", "order", lambda v: V(v) + f_varint(2**29 - 1, 1), "CTXINVALID", str(2**29 - 1)),
    ("unknown-field-nested", "order", lambda v: V(v) + f_msg(10, f_str(1, "a") + f_varint(9, 1)), "CTXINVALID", "items[0]"),
    # ---- UTF-8 (proto3)
    ("invalid-utf8-ff", "order", lambda v: V(v) + f_len(1, b"\xff"), "CTXINVALID", "order_id"),
    ("invalid-utf8-overlong", "order", lambda v: V(v) + f_len(1, b"\xc0\x80"), "CTXINVALID", "order_id"),
    ("invalid-utf8-surrogate", "order", lambda v: V(v) + f_len(1, b"\xed\xa0\x80"), "CTXINVALID", "order_id"),
    ("invalid-utf8-truncated-sequence", "order", lambda v: V(v) + f_len(1, b"ab\xe2\x82"), "CTXINVALID", "order_id"),
    ("invalid-utf8-above-10ffff", "order", lambda v: V(v) + f_len(1, b"\xf4\x90\x80\x80"), "CTXINVALID", "order_id"),
    ("invalid-utf8-lone-continuation", "order", lambda v: V(v) + f_len(1, b"a\x80b"), "CTXINVALID", "order_id"),
    ("invalid-utf8-last_updated_by", "order", lambda v: V(v) + f_len(8, b"\xfe"), "CTXINVALID", "last_updated_by"),
    ("invalid-utf8-nested", "order", lambda v: V(v) + item() + item() + item(b"\xff"), "CTXINVALID", "items[2].sku"),
    # ---- proto2: required, closed enum, UTF-8, extensions, groups
    ("p2-missing-required-top", "strict", lambda v: f_varint(1, v), "CTXINVALID", "id"),
    ("p2-missing-required-version", "strict", lambda v: f_str(2, "id"), "CTXINVALID", "version"),
    ("p2-missing-required-nested", "strict", lambda v: S(v) + f_msg(4, f_varint(2, 1)), "CTXINVALID", "inner.name"),
    ("p2-missing-required-in-repeated", "strict", lambda v: S(v) + f_msg(5, f_str(1, "a")) + f_msg(5, b""), "CTXINVALID", "inners[1].name"),
    ("p2-closed-enum-out-of-range", "strict", lambda v: S(v) + f_varint(3, 7), "CTXINVALID", "color"),
    ("p2-closed-enum-negative", "strict", lambda v: S(v) + f_varint(3, -1), "CTXINVALID", "color"),
    ("p2-invalid-utf8-optional", "strict", lambda v: S(v) + f_len(6, b"\xff"), "CTXINVALID", "note"),
    ("p2-invalid-utf8-required", "strict", lambda v: f_varint(1, v) + f_len(2, b"\xc3\x28"), "CTXINVALID", "id"),
    ("p2-invalid-utf8-nested", "strict", lambda v: S(v) + f_msg(4, f_len(1, b"\xff")), "CTXINVALID", "inner.name"),
    ("p2-extension-is-an-unknown-field", "strict", lambda v: S(v) + f_varint(100, 1), "CTXINVALID", "100"),
    ("p2-group-field-as-length-delimited", "strict", lambda v: S(v) + f_len(9, b""), "CTXINVALID", "grp"),
    ("p2-group-mismatched-end", "strict", lambda v: S(v) + tag(9, SGROUP) + f_varint(10, 1) + tag(8, EGROUP), "CTXINVALID", None),
    ("p2-group-unterminated", "strict", lambda v: S(v) + tag(9, SGROUP) + f_varint(10, 1), "CTXINVALID", None),
    ("p2-unknown-field-inside-group", "strict", lambda v: S(v) + f_group(9, f_varint(11, 1)), "CTXINVALID", None),
    ("p2-packed-truncated", "strict", lambda v: S(v) + tag(8, LEN) + varint(3) + b"\x01", "CTXINVALID", None),
    ("p2-closed-enum-in-unpacked-repeated", "strict", lambda v: S(v) + f_varint(12, 1) + f_varint(12, 9), "CTXINVALID", "colors"),
    ("p2-closed-enum-in-packed-repeated", "strict", lambda v: S(v) + packed_varints(13, [0, 2, 3]), "CTXINVALID", "packed_colors"),
    ("p2-closed-enum-packed-into-unpacked-field", "strict", lambda v: S(v) + packed_varints(12, [1, 5]), "CTXINVALID", "colors"),
    ("p2-closed-enum-as-map-value", "strict", lambda v: S(v) + f_msg(14, f_str(1, "k") + f_varint(2, 7)), "CTXINVALID", "color_map"),
    ("p2-missing-required-in-map-value", "strict", lambda v: S(v) + f_msg(15, f_str(1, "k") + f_msg(2, f_varint(2, 1))), "CTXINVALID", "inner_map"),
    # ---- map, oneof, packed
    ("map-key-invalid-utf8", "kitchen", lambda v: K(v) + f_msg(2, f_len(1, b"\xff") + f_varint(2, 1)), "CTXINVALID", "counts"),
    ("map-value-wrong-wire-type", "kitchen", lambda v: K(v) + f_msg(2, f_str(1, "a") + f_len(2, b"x")), "CTXINVALID", "counts"),
    ("map-message-value-invalid-utf8", "kitchen", lambda v: K(v) + f_msg(9, f_str(1, "k") + f_msg(2, f_len(3, b"\xff"))), "CTXINVALID", "kids"),
    ("oneof-string-invalid-utf8", "kitchen", lambda v: K(v) + f_len(3, b"\xff"), "CTXINVALID", "text"),
    ("repeated-string-invalid-utf8", "kitchen", lambda v: K(v) + f_str(8, "ok") + f_len(8, b"\xff"), "CTXINVALID", "tags"),
    ("packed-length-past-end", "kitchen", lambda v: K(v) + tag(6, LEN) + varint(5) + b"\x01", "CTXINVALID", None),
    ("packed-varint-truncated", "kitchen", lambda v: K(v) + tag(6, LEN) + varint(1) + b"\x80", "CTXINVALID", None),
    ("packed-fixed32-bad-length", "kitchen", lambda v: K(v) + tag(12, LEN) + varint(3) + b"\x01\x02\x03", "CTXINVALID", None),
    ("packed-double-bad-length", "kitchen", lambda v: K(v) + tag(13, LEN) + varint(7) + b"\x00" * 7, "CTXINVALID", None),
    ("repeated-message-wrong-wire-type", "kitchen", lambda v: K(v) + f_varint(14, 1), "CTXINVALID", "many"),
    ("oneof-message-invalid-inside", "kitchen", lambda v: K(v) + f_msg(5, f_len(3, b"\xff")), "CTXINVALID", "child"),
    # ---- editions
    ("ed-utf8-validation-none-is-still-checked", "ed", lambda v: K(v) + f_len(2, b"\xff"), "CTXINVALID", "s"),
    ("ed-closed-enum-out-of-range", "ed", lambda v: K(v) + f_varint(3, 5), "CTXINVALID", "c"),
    ("ed-legacy-required-missing", "ed", lambda v: K(v) + f_group(4, b""), "CTXINVALID", "sub.a"),
    ("ed-delimited-message-sent-length-prefixed", "ed", lambda v: K(v) + f_msg(4, f_varint(1, 3)), "CTXINVALID", "sub"),
]


def _field_named(text: str, path: str) -> bool:
    return path in text


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_invalid_payload_is_rejected_and_nothing_is_written(backend, pb, r, case):
    name, schema, build, code, path = case
    pb.register(backend, schema)
    # create: the key stays missing
    with nothing_written(r):
        text = assert_error(code, backend.cas, "k:new", 0, build(1), schema=schema)
    assert r.exists("k:new") == 0
    if path is not None:
        assert _field_named(text, path), f"{code} message does not name {path!r}: {text!r}"
    # update: the stored value is byte-identical
    assert backend.cas("k:old", 0, BASE[schema](1), schema=schema) == 1
    before = key_state(r, "k:old")
    with nothing_written(r):
        text = assert_error(code, backend.cas, "k:old", 1, build(2))
    assert key_state(r, "k:old") == before
    if path is not None:
        assert _field_named(text, path), f"{code} message does not name {path!r}: {text!r}"


GOOD = [
    ("order-minimal", "order", lambda v: V(v)),
    ("order-full", "order", lambda v: f_str(1, "o-1") + V(v) + f_varint(3, 2) + f_varint(4, 1000)
     + f_varint(5, -5) + f_varint(6, 995) + f_varint(7, 1) + f_str(8, "pricing")
     + f_varint(9, 1764100000123) + item(b"sku-1", 2) + item("é€😀".encode(), 3)),
    ("order-open-enum-unknown-value", "order", lambda v: V(v) + f_varint(3, 99)),
    ("order-fields-out-of-order", "order", lambda v: item() + f_str(8, "x") + V(v) + f_str(1, "o")),
    ("order-non-minimal-varint", "order", lambda v: V(v) + b"\x20" + long_varint(5, 10)),
    ("order-empty-submessage", "order", lambda v: V(v) + f_msg(10, b"")),
    ("p2-all-fields", "strict", lambda v: S(v) + f_varint(3, 2) + f_msg(4, f_str(1, "n") + f_varint(2, -3))
     + f_msg(5, f_str(1, "a")) + f_msg(5, f_str(1, "b")) + f_str(6, "note")
     + unpacked_varints(7, [1, -2, 3]) + packed_varints(8, [4, 5, -6])
     + f_group(9, f_varint(10, 7)) + f_len(11, b"\xff\xfe")),
    ("p2-unpacked-field-sent-packed", "strict", lambda v: S(v) + packed_varints(7, [1, 2, 3])),
    ("p2-packed-field-sent-unpacked", "strict", lambda v: S(v) + unpacked_varints(8, [1, 2, 3])),
    ("p2-negative-int32-is-10-bytes", "strict", lambda v: S(v) + f_varint(7, -1)),
    ("p2-empty-group", "strict", lambda v: S(v) + f_group(9, b"")),
    ("p2-bytes-are-not-utf8-checked", "strict", lambda v: S(v) + f_len(11, b"\xc0\x80\xff")),
    ("p2-closed-enums-in-range", "strict", lambda v: S(v) + f_varint(12, 2) + packed_varints(13, [0, 1, 2])
     + packed_varints(12, [1]) + f_msg(14, f_str(1, "k") + f_varint(2, 1))),
    ("p2-map-value-with-required-field", "strict", lambda v: S(v) + f_msg(15, f_str(1, "k") + f_msg(2, f_str(1, "n")))),
    ("kitchen-packed-as-packed", "kitchen", lambda v: K(v) + packed_varints(6, [1, 2, 300])),
    ("kitchen-packed-as-unpacked", "kitchen", lambda v: K(v) + unpacked_varints(6, [1, 2, 300])),
    ("kitchen-unpacked-as-unpacked", "kitchen", lambda v: K(v) + unpacked_varints(7, [1, -2])),
    ("kitchen-unpacked-as-packed", "kitchen", lambda v: K(v) + packed_varints(7, [1, -2])),
    ("kitchen-packed-and-unpacked-mixed", "kitchen", lambda v: K(v) + packed_varints(6, [1]) + f_varint(6, 2) + packed_varints(6, [3])),
    ("kitchen-packed-fixed-and-zigzag", "kitchen", lambda v: K(v) + f_len(12, b"\x01\x00\x00\x00\x02\x00\x00\x00")
     + f_fixed32(12, 3) + f_sint(11, -5) + f_len(13, b"\x00" * 16)),
    ("kitchen-map", "kitchen", lambda v: K(v) + f_msg(2, f_str(1, "a") + f_varint(2, 1)) + f_msg(2, f_str(1, "b") + f_varint(2, 2))),
    ("kitchen-map-entry-without-key-or-value", "kitchen", lambda v: K(v) + f_msg(2, b"") + f_msg(2, f_varint(2, 5))),
    ("kitchen-map-duplicate-key", "kitchen", lambda v: K(v) + f_msg(2, f_str(1, "a")) + f_msg(2, f_str(1, "a") + f_varint(2, 9))),
    ("kitchen-map-of-messages", "kitchen", lambda v: K(v) + f_msg(9, f_str(1, "k") + f_msg(2, f_str(3, "t")))),
    ("kitchen-oneof-several-members", "kitchen", lambda v: K(v) + f_str(3, "t") + f_varint(4, 5) + f_msg(5, f_str(3, "c"))),
    ("kitchen-bytes-are-not-utf8-checked", "kitchen", lambda v: K(v) + f_len(10, b"\xff\xc0\x80")),
    ("kitchen-empty-repeated-strings", "kitchen", lambda v: K(v) + f_str(8, "") * 5),
    ("node-nested", "node", lambda v: K(v) + f_msg(2, f_str(3, "a") + f_msg(2, f_str(3, "b")))),
    ("ed-all-features", "ed", lambda v: K(v) + f_str(2, "ok") + f_varint(3, 1) + f_group(4, f_varint(1, 3))
     + f_varint(5, 1) + f_varint(5, 2)),
    ("ed-expanded-field-sent-packed", "ed", lambda v: K(v) + packed_varints(5, [1, 2])),
]


@pytest.mark.parametrize("case", GOOD, ids=[c[0] for c in GOOD])
def test_valid_payload_is_accepted_and_stored_as_sent(backend, pb, r, case):
    name, schema, build = case
    pb.register(backend, schema)
    p1, p2 = build(1), build(2)
    assert backend.cas("k", 0, p1, schema=schema) == 1
    assert ctxvalue.decode(r.get("k")).payload == p1
    assert backend.cas("k", 1, p2) == 2
    assert backend.get("k")[1] == p2


def test_invalid_utf8_is_rejected_in_proto2_and_proto3_strings_but_not_bytes(backend, pb, r):
    pb.register(backend, "strict")
    pb.register(backend, "order")
    assert_error("CTXINVALID", backend.cas, "a", 0, V(1) + f_len(1, b"\xff"), schema="order")
    assert_error("CTXINVALID", backend.cas, "b", 0, S(1) + f_len(6, b"\xff"), schema="strict")
    assert backend.cas("c", 0, S(1) + f_len(11, b"\xff"), schema="strict") == 1


def test_split_schema_validates_imported_message_types(backend, pb, r):
    pb.register(backend, "invoice")
    money = f_varint(1, 100) + f_str(2, "EUR")
    assert backend.cas("inv:1", 0, f_varint(1, 1) + f_msg(3, money), schema="invoice") == 1
    with nothing_written(r):
        text = assert_error("CTXINVALID", backend.cas, "inv:1", 1,
                            f_varint(1, 2) + f_msg(3, f_len(2, b"\xff")))
    assert "total.currency" in text, text


# --------------------------------------------------------------------------- depth


def node_chain(nested: int, version: int, field: int = 2, leaf: bytes = b"") -> bytes:
    """A Node (or Kitchen with field=5) with ``nested`` levels of submessages below the root.
    Built without quadratic copying (very deep payloads are hundreds of KB)."""
    prefixes = []
    length = len(leaf)
    for _ in range(nested):
        p = tag(field, LEN) + varint(length)
        prefixes.append(p)
        length += len(p)
    return f_varint(1, version) + b"".join(reversed(prefixes)) + leaf


def test_node_chain_builder():
    Node_depth = node_chain(2, 1, leaf=f_str(3, "x"))
    assert Node_depth == f_varint(1, 1) + f_msg(2, f_msg(2, f_str(3, "x")))


# max-depth counts nesting levels; whether the root counts as one is not pinned down by the
# protocol, so the tests stay clear of the boundary: limit-1 nested submessages are fine under
# either reading, limit+1 are too deep under either reading.

def test_recursive_message_within_max_depth_is_accepted(backend, pb, r):
    pb.register(backend, "node")
    assert backend.cas("n", 0, node_chain(31, 1, leaf=f_str(3, "leaf")), schema="node") == 1


@pytest.mark.parametrize("nested", [33, 100, 1000, 100000])
def test_nesting_past_max_depth_is_invalid(backend, pb, r, nested):
    pb.register(backend, "node")
    pb.register(backend, "kitchen")
    with nothing_written(r):
        assert_error("CTXINVALID", backend.cas, "n", 0, node_chain(nested, 1), schema="node")
        assert_error("CTXINVALID", backend.cas, "k", 0, node_chain(nested, 1, field=5),
                     schema="kitchen")
    assert r.ping()


@pytest.fixture(scope="module")
def shallow_server(engine, module_servers, module_so):
    return start_engine_server(module_servers, engine, {"max-depth": 4})


@pytest.fixture
def shallow(engine, shallow_server, pb):
    shallow_server.r.flushall()
    b = make_backend(engine, shallow_server)
    pb.register(b, "node")
    pb.register(b, "kitchen")
    pb.register(b, "order")
    yield b
    shallow_server.assert_alive()


def test_max_depth_argument_bounds_nesting(shallow, pb):
    r = shallow.r
    assert shallow.cas("n", 0, node_chain(3, 1), schema="node") == 1
    assert shallow.cas("n", 1, node_chain(2, 2)) == 2
    with nothing_written(r):
        assert_error("CTXINVALID", shallow.cas, "n", 2, node_chain(5, 3))
        assert_error("CTXINVALID", shallow.cas, "m", 0, node_chain(5, 1), schema="node")
        assert_error("CTXINVALID", shallow.cas, "k", 0, node_chain(5, 1, field=5), schema="kitchen")
        assert_error("CTXINVALID", shallow.cas, "n", 2, node_chain(40, 3))
    # the example schema (one level of nesting) is unaffected
    assert shallow.cas("o", 0, pb.order(1, items=[("a", 1)]), schema="order") == 1


# --------------------------------------------------------------------------- unknown-fields allow


@pytest.fixture(scope="module")
def lenient_server(engine, module_servers, module_so):
    return start_engine_server(module_servers, engine, {"unknown-fields": "allow"})


@pytest.fixture
def lenient(engine, lenient_server, pb):
    lenient_server.r.flushall()
    b = make_backend(engine, lenient_server)
    for s in ("order", "strict", "kitchen", "ed"):
        pb.register(b, s)
    yield b
    lenient_server.assert_alive()


UNKNOWN_OK = [
    ("unknown-varint", "order", lambda v: V(v) + f_varint(99, 1)),
    ("unknown-len", "order", lambda v: V(v) + f_len(15, b"\xff not utf8 \x00")),
    ("unknown-group", "order", lambda v: V(v) + f_group(20, f_varint(1, 1) + f_group(21, b""))),
    ("unknown-fixed32", "order", lambda v: V(v) + f_fixed32(21, 7)),
    ("unknown-fixed64", "order", lambda v: V(v) + f_fixed64(22, 7)),
    ("unknown-nested", "order", lambda v: V(v) + f_msg(10, f_str(1, "a") + f_varint(9, 1))),
    ("unknown-before-version", "order", lambda v: f_varint(50, 1) + V(v)),
    ("extension", "strict", lambda v: S(v) + f_varint(100, 1)),
    ("unknown-in-group", "strict", lambda v: S(v) + f_group(9, f_varint(11, 1))),
]


@pytest.mark.parametrize("case", UNKNOWN_OK, ids=[c[0] for c in UNKNOWN_OK])
def test_unknown_fields_are_accepted_with_unknown_fields_allow(lenient, case):
    name, schema, build = case
    r = lenient.r
    assert lenient.cas("k", 0, build(1), schema=schema) == 1
    assert ctxvalue.decode(r.get("k")).payload == build(1)  # kept byte for byte
    assert lenient.cas("k", 1, build(2)) == 2


STILL_BAD = [c for c in BAD if not c[0].startswith(("unknown-field", "p2-extension",
                                                    "p2-unknown-field-inside-group"))]


@pytest.mark.parametrize("case", STILL_BAD, ids=[c[0] for c in STILL_BAD])
def test_unknown_fields_allow_still_rejects_everything_else(lenient, case):
    name, schema, build, code, path = case
    r = lenient.r
    with nothing_written(r):
        assert_error(code, lenient.cas, "k:new", 0, build(1), schema=schema)
    assert lenient.cas("k:old", 0, BASE[schema](1), schema=schema) == 1
    before = key_state(r, "k:old")
    assert_error(code, lenient.cas, "k:old", 1, build(2))
    assert key_state(r, "k:old") == before


# --------------------------------------------------------------------------- big and expensive


def filled(prefix: bytes, element: bytes, size: int) -> bytes:
    n = (size - len(prefix)) // len(element)
    payload = prefix + element * n
    assert len(payload) == size, "pick an element size that divides the remainder"
    return payload


MIB = 1 << 20


@pytest.mark.parametrize("schema,element", [
    ("kitchen", f_str(8, "")),      # repeated string tags: 2 bytes per empty string
    ("kitchen", f_msg(14, b"")),    # repeated Kitchen many: 2 bytes per empty message
    ("node", f_msg(2, b"")),        # repeated Node children
], ids=["empty-strings", "empty-kitchens", "empty-nodes"])
def test_one_mib_of_empty_repeated_elements_does_not_hurt_the_server(backend, pb, r, schema, element):
    pb.register(backend, schema)
    payload = filled(K(1), element, MIB)
    r.execute_command("MEMORY", "PURGE")
    before = r.info("memory")["used_memory"]
    c = backend.server.client()
    try:
        reply = backend.with_client(c).cas("big", 0, payload, schema=schema)
        assert reply == 1
        outcome = "accepted"
    except redis.ResponseError as e:
        outcome = error_text(e)
        assert outcome.startswith(("CTXTOOBIG", "CTXINVALID")), outcome
        assert r.exists("big") == 0
    finally:
        c.close()
        c.connection_pool.disconnect()
    assert r.ping()
    if outcome == "accepted":
        assert ctxvalue.decode(r.get("big")).payload == payload
        r.delete("big")
    r.execute_command("MEMORY", "PURGE")
    after = r.info("memory")["used_memory"]
    assert after - before < 2 * MIB, f"{outcome}: used_memory grew by {after - before} bytes"


def test_many_rejected_large_payloads_do_not_leak(backend, pb, r):
    pb.register(backend, "kitchen")
    bad = filled(K(1), f_str(8, ""), MIB - 2) + b"\x42\xff"  # ends with a truncated string
    before = r.info("memory")["used_memory"]
    for _ in range(20):
        assert_error("CTXINVALID", backend.cas, "big", 0, bad, schema="kitchen")
    r.execute_command("MEMORY", "PURGE")
    after = r.info("memory")["used_memory"]
    assert after - before < 2 * MIB, f"used_memory grew by {after - before} bytes"
