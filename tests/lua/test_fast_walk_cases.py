"""Hand-made payloads at the fast walk's edges (lua/cas.lua, ``fwalk``): overlong tags and
lengths, 9-, 10- and 11-byte varints, a nested message whose length is right but whose content
ends mid-field, mid-tag or mid-varint, lengths that run past a nested message's end, groups, packed and
unpacked closed enums, map entries, unknown fields under both settings, nesting exactly at and one
past ``max_depth``, the version field twice, inside a nested message, on a two-byte tag, with
another wire type. Each goes through the shipped cas script, the same script without the fast
walk, and the module's CTX.CAS: the same reply or the same error text.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from test_fast_walk import FAST_LINE, _replies, proto2_fds
from test_lua_plan import plan_of
from wire import (
    f_fixed32,
    f_group,
    f_len,
    f_str,
    f_varint,
    long_varint,
    packed_varints,
    tag,
    varint,
)

from ctxlink.embedded import EmbeddedRedis, find_module

_F = descriptor_pb2.FieldDescriptorProto
V = f_varint(1, 1)

#: ARGV[16] of cas.lua: the incarnation a create (or an upgrade) gives the context
FRESH = "00000000000000a1"


def map_fds() -> bytes:
    """``t.map.M``: int64 version = 1, map<string, int32> m = 2, string s = 3 (proto3)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="map.proto", package="t.map", syntax="proto3")
    m = fdp.message_type.add(name="M")
    entry = m.nested_type.add(name="MEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT32)
    m.field.add(name="version", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    m.field.add(name="m", number=2, label=_F.LABEL_REPEATED, type=_F.TYPE_MESSAGE,
                type_name=".t.map.M.MEntry")
    m.field.add(name="s", number=3, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


def chain(depth: int) -> bytes:
    """``next`` nested ``depth`` levels below the root (each level holds a label)."""
    inner = f_str(2, "x")
    for _ in range(depth):
        inner = f_len(4, inner)
    return V + inner


def node_cases() -> list[bytes]:
    long_ascii = "a" * 60
    return [
        V,
        b"",  # no version field
        b"\x88\x00\x01",  # the version's tag overlong (two bytes)
        V + b"\x92\x00\x02hi",  # label's tag overlong
        V + tag(2, 2) + b"\x82\x00hi",  # label's length overlong
        V + tag(2, 2) + b"\x82\x80\x00hi",  # label's length in three bytes
        tag(1, 0) + long_varint(1, 9),
        tag(1, 0) + long_varint(1, 10),
        tag(1, 0) + long_varint(1, 10)[:-1] + b"\x81\x00",  # 11 bytes
        V + f_varint(18, 1 << 32),  # uint32 field, value past 32 bits
        V + f_len(4, tag(2, 2) + b"\x05ab"),  # nested content ends mid-value
        V + f_len(4, V + b"\xa0") + b"\x01",  # nested content ends mid-tag; the tag's
        V + f_len(4, V + b"\xa0") + b"\x01\x08\x01",  # 2nd byte is outside
        V + f_len(4, tag(2, 2)) + b"\x00",  # nested content ends after a tag
        # nested content ends inside a varint of 2, 3, 4 or 5 bytes whose last byte, outside,
        # starts a valid field of the parent
        *(V + f_len(4, V + tag(1, 0) + b"\x81" * k) + V for k in (1, 2, 3, 4)),
        V + f_len(4, f_len(4, f_str(2, "abc"))[:-1]) + b"c",  # inner length past its parent
        V + f_len(4, b""),  # empty nested message
        V + f_str(2, ""),
        V + f_varint(1, 5),  # the version twice: the last one counts
        f_varint(1, 5) + V,
        f_len(4, f_varint(1, 7)) + V,  # a nested message's field 1 is not the version
        V + f_len(4, f_varint(1, 1 << 40)),
        tag(1, 1) + b"\x01" * 8,  # the version with another wire type
        V + tag(1, 2) + b"\x01\x01",
        V + f_varint(7, 5) + f_varint(7, 300) + f_varint(8, 1),  # closed enum values
        V + f_varint(7, 2),  # not in the enum
        V + f_varint(7, -3) + f_varint(8, -3),  # negative: ten bytes
        V + tag(7, 0) + b"\x85\x00",  # an enum value in an overlong varint
        V + packed_varints(9, [0, 1, 5, 300]),
        V + packed_varints(9, [0, 2]),
        V + packed_varints(8, [1, 5]),  # packed on the wire for an unpacked field: allowed
        V + f_group(10, f_varint(11, 3)),
        V + f_group(10, f_varint(11, 3) + f_len(13, V)),
        V + tag(10, 3) + f_varint(11, 3),  # group without its end
        V + f_varint(50, 1),  # unknown field
        V + f_len(4, f_varint(50, 1) + f_str(2, "x")),  # unknown field, nested
        V + f_varint(200, 3) + f_str(300, "far") + f_len(5000, V),  # sparse numbers
        V + f_str(2, long_ascii) + f_len(4, f_str(2, long_ascii + "é")),
        V + f_str(2, long_ascii + "é") + f_len(4, f_str(2, long_ascii)),
        V + f_str(2, "é" * 30) + f_str(17, b"\xff".decode("latin-1")),
        V + f_len(2, b"\xff") + f_str(2, "ok"),  # invalid UTF-8, then a good string
        V + f_len(17, b"\xff" * 70),  # bytes: anything
        V + tag(16, 1) + b"\x00" * 7,  # fixed64 truncated
        V + tag(16, 1) + b"\x00" * 8,
        V + b"\x80",  # a lone tag byte
        V + b"\x00",  # field 0
        V + tag(3, 7),  # wire type 7
        *(chain(d) for d in (2, 3, 4, 5, 6, 7)),
    ]


def fixed_cases() -> list[bytes]:
    fv = f_fixed32(19, 1)
    return [
        fv,
        fv + fv,
        f_fixed32(19, 2) + fv,
        fv + f_fixed32(19, 2),
        fv[:-1],
        f_varint(19, 1),
        b"\x98\x81\x00" + (1).to_bytes(4, "little"),  # a three-byte tag for field 19 wt 5
        bytes([0x9d, 0x01]) + (1).to_bytes(4, "little") + f_len(4, fv),
        fv + f_varint(1, 3),
    ]


def map_cases() -> list[bytes]:
    entry = f_str(1, "k") + f_varint(2, 3)
    return [
        V + f_len(2, entry) + f_len(2, entry),  # duplicate keys
        V + f_len(2, f_varint(2, 3)),  # no key
        V + f_len(2, b""),
        V + f_len(2, f_str(1, "k") + f_varint(3, 1)),  # unknown field in an entry
        V + f_len(2, f_len(1, b"\xc3")),  # invalid UTF-8 key
        V + f_len(2, f_str(1, "k") + tag(2, 0) + varint(-1)),
        V + f_str(3, "") + f_varint(1, 0) + V,  # proto3: a zero written out, then the version
    ]


LIMITS = {"reject": (4, "reject"), "allow": (3, "allow")}


@pytest.mark.parametrize("mode", sorted(LIMITS))
def test_hand_made_payloads_agree_between_the_fast_walk_the_generic_walk_and_the_module(mode):
    max_depth, unknown = LIMITS[mode]
    args = ["max-depth", str(max_depth), "unknown-fields", unknown]
    p2 = proto2_fds()
    schemas = [("node", p2, "t.fast.Node", node_cases()),
               ("fixed", p2, "t.fast.Fixed", fixed_cases()),
               ("map", map_fds(), "t.map.M", map_cases())]
    verdicts: dict[str, tuple[int, int]] = {}
    with EmbeddedRedis(module=find_module(), module_args=args) as server:
        r = server.client()
        for name, fds, type_name, items in schemas:
            assert r.execute_command("CTX.SCHEMA.SET", name, type_name, fds) == 1
            script = plan_of(fds, type_name).source.decode()
            assert script.count(FAST_LINE) == 1
            fast = r.script_load(script)
            slow = r.script_load(script.replace(FAST_LINE, "if true then"))

            def lua(sha: str, prefix: str, name: str = name) -> Any:
                def send(pipe: Any, i: int, payload: bytes) -> None:
                    pipe.evalsha(sha, 1, f"{prefix}:{name}:{i}", 0, payload, 1, "", 1 << 20,
                                 max_depth, unknown, name, "", f"id-{i}", "cas", "", "", "",
                                 "", FRESH)
                return send

            def module(pipe: Any, i: int, payload: bytes, name: str = name) -> None:
                pipe.execute_command("CTX.CAS", f"m:{name}:{i}", 0, payload, "SCHEMA", name,
                                     "ID", f"id-{i}", "INC", FRESH)

            got_fast = _replies(r, lua(fast, "f"), items)
            got_slow = _replies(r, lua(slow, "g"), items)
            got_mod = _replies(r, module, items)
            for k, item in enumerate(items):
                assert got_fast[k] == got_slow[k], (name, k, item.hex(), got_fast[k], got_slow[k])
                assert got_fast[k] == got_mod[k], (name, k, item.hex(), got_fast[k], got_mod[k])
                if got_fast[k][0] == "ok":
                    assert r.get(f"f:{name}:{k}")[24:] == r.get(f"m:{name}:{k}")[24:]
            verdicts[name] = sum(1 for o in got_fast if o[0] == "ok"), len(items)
    # both verdicts for every schema
    assert all(0 < oks < n for oks, n in verdicts.values()), verdicts
