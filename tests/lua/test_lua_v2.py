"""Protocols 2 and 3 on the Lua engine (lua/cas.lua, get.lua, del.lua through the shipped SDK: RawLua
below is tests/backends.py's LuaBackend with cas.lua's raw replies, from the SDK's own write
path, ids as given), checked against the rules of docs/design/protocol-v2.md on a stock server: the
stored string (storage format v3 since protocol 3: incarnation, floor and field clocks), the
write-id window, replays, the eight-element conflict reply, CTX.PATCH's conflict rule (field
clocks), CTXFIELD, the splice, v1 hashes and v2 strings read and upgraded, KEEPTTL, what reaches
a replica. tests/test_incarnation_clocks_ttl.py has INC, CTXGONE, PX and touch. The module is compared with the same calls in tests/parity (the patch corpus) and
tests/test_engines_agree.py.
"""

from __future__ import annotations

import pytest
import redis

from backends import LuaBackend, _sdk_internals, start_engine_server
from ctxvalue import WHOLE, decode, encode_v2, id_digest
from servers import error_text, wait_replicated
from wire import f_len, f_str, f_varint

ORDER = "ctxlink.example.Order"


class RawLua(LuaBackend):
    """``cas`` returns cas.lua's raw reply through the SDK's write path (``_write_raw``, which
    runs the schema's plan script), with the write id as given: none is none, and a bad one
    reaches the script, which refuses it."""

    def cas(self, key, expected, payload, schema=None, by=None, write_id=None):
        run, write_raw, _, _ = _sdk_internals()
        return run(self.store.client, write_raw(
            self.store._st, key, expected, payload,
            None if schema is None else (schema.decode() if isinstance(schema, bytes) else schema),
            by, write_id))


@pytest.fixture(scope="module")
def stock(module_servers):
    return start_engine_server(module_servers, "lua")


@pytest.fixture
def lua(stock, pb) -> LuaBackend:
    stock.r.flushall()
    b = RawLua(stock)
    assert b.schema_set("order", ORDER, pb.fds("order")) == 1
    return b


def err(fn, *args, **kw) -> str:
    with pytest.raises(redis.ResponseError) as info:
        fn(*args, **kw)
    return error_text(info.value)


def order(version: int, order_id: str = "o-1", **nums) -> bytes:
    """An Order on the wire: order_id (1), version (2), then varint fields by number."""
    out = f_str(1, order_id) + f_varint(2, version)
    for num in sorted(nums):
        out += f_varint(int(num[1:]), nums[num])
    return out


# --------------------------------------------------------------------------- storage

def test_a_write_stores_a_v3_string_with_one_record_per_write(lua):
    assert lua.cas("o:1", 0, order(1), schema="order", by="router", write_id="w1") == 1
    v = decode(lua.r.get("o:1"))
    assert (v.format, v.version, v.schema, v.updated_by, v.payload) == (
        3, 1, b"order", b"router", order(1))
    assert [r.digest for r in v.window] == [id_digest("w1")]
    assert (v.floor, v.clocks) == (1, {}) and len(v.incarnation) == 8
    assert lua.cas("o:1", 1, order(2)) == 2  # no id: a zero digest
    w = decode(lua.r.get("o:1"))
    assert [r.digest for r in w.window] == [bytes(8), id_digest("w1")]
    assert (w.floor, w.clocks, w.incarnation) == (2, {}, v.incarnation)
    assert lua.r.getrange("o:1", w.header_len, -1) == order(2)
    state = lua.get("o:1")
    assert state[:3] == [2, order(2), b"order"] and state[4] == b""
    assert state[5] == v.inc_hex.encode()
    assert abs(state[3] - w.updated_ms) == 0


def test_the_window_keeps_the_newest_16_records(lua):
    lua.cas("o:w", 0, order(1), schema="order", write_id="id-1")
    for v in range(2, 21):
        assert lua.cas("o:w", v - 1, order(v), write_id=f"id-{v}") == v
    value = decode(lua.r.get("o:w"))
    assert len(value.window) == 16 and value.oldest_known == 5
    assert [value.record_for(f"id-{v}")[0] for v in range(5, 21)] == list(range(5, 21))
    assert value.record_for("id-4") is None
    # replays inside the window, a re-sent write that fell out is a conflict
    assert lua.cas("o:w", 19, order(20), write_id="id-20") == [b"replayed", 20]
    assert lua.cas("o:w", 4, order(5), write_id="id-5") == [b"replayed", 5]
    reply = lua.cas("o:w", 3, order(4), write_id="id-4")
    assert reply[0] == 20 and reply[5:] == [5, [], value.inc_hex.encode()]


def test_a_ttl_survives_writes(lua):
    lua.cas("o:t", 0, order(1), schema="order")
    lua.r.pexpire("o:t", 100000)
    lua.cas("o:t", 1, order(2))
    lua.patch("o:t", 2, f_varint(4, 7), [4])
    assert 0 < lua.r.pttl("o:t") <= 100000


def test_v1_hash_is_read_and_replaced_by_the_first_write(lua):
    lua.r.hset("o:v1", mapping={"raw": order(3), "version": 3, "schema": "order",
                                "updated_ms": 1700000000000, "updated_by": "old"})
    assert lua.get("o:v1") == [3, order(3), b"order", 1700000000000, b"old", b""]
    # a write id on a v1 context: empty window, oldest known = version + 1, no incarnation
    reply = lua.cas("o:v1", 2, order(3), write_id="x")
    assert reply == [3, order(3), b"order", 1700000000000, b"old", 4, [], b""]
    assert lua.patch("o:v1", 3, f_varint(4, 9), [4], write_id="p") == [
        4, f_str(1, "o-1") + f_varint(4, 9) + f_varint(2, 4)]
    assert lua.r.type("o:v1") == b"string"
    v = decode(lua.r.get("o:v1"))
    # the upgrade: floor = the old version, the patched field's clock the new one
    assert (v.format, v.version, v.updated_by, len(v.window)) == (3, 4, b"", 1)
    assert (v.floor, v.clocks) == (3, {3: 1}) and v.incarnation != bytes(8)
    assert lua.delete("o:v1", 4, write_id="d") == 1


def test_strings_that_break_the_type_rule_are_wrongtype(lua):
    from ctxvalue import encode
    good = encode(1, 5, [], b"order", b"", order(1))
    good2 = encode_v2(1, 5, [], b"order", b"", order(1))
    bad = {
        "short": b"CTX\x03" + bytes(30),
        "magic": b"CTX\x01" + good[4:],
        "n17": good[:40] + bytes([17]) + good[41:],
        "s0": good[:41] + b"\x00" + good[42:],
        "v0": good[:4] + bytes(8) + good[12:],
        "blen": good[:42] + b"\xff\x00" + good[44:],
        "inc0": good[:20] + bytes(8) + good[28:],
        "floor0": good[:28] + bytes(8) + good[36:],
        "floor2": good[:28] + (2).to_bytes(8, "little") + good[36:],
        "bit31": good[:36] + (1 << 31).to_bytes(4, "little") + good[40:],
        "delta0": encode(3, 5, [], b"order", b"", order(3), floor=1, clocks={4: 0}),
        "delta_past": encode(3, 5, [], b"order", b"", order(3), floor=1, clocks={4: 3}),
        "v2_n17": good2[:20] + bytes([17]) + good2[21:],
        "plain": b"hello",
    }
    for key, raw in bad.items():
        lua.r.set(key, raw)
        for call in (lambda: lua.get(key), lambda: lua.cas(key, 1, order(2)),
                     lambda: lua.delete(key, 1),
                     lambda: lua.patch(key, 1, f_varint(4, 1), [4], schema="order")):
            assert err(call).startswith("WRONGTYPE"), key
        assert lua.r.get(key) == raw
    lua.r.set("ok", good)
    assert lua.get("ok") == [1, order(1), b"order", 5, b"", b"01" * 8]
    lua.r.set("ok3", encode(3, 5, [], b"order", b"", order(3), floor=1, clocks={4: 2, 0: 1}))
    assert lua.get("ok3")[0] == 3
    lua.r.set("ok2", good2)
    assert lua.get("ok2") == [1, order(1), b"order", 5, b"", b""]


# --------------------------------------------------------------------------- CTX.CAS v2

def test_cas_argument_errors(lua):
    # cas.lua: ARGV[10] "" is "no id" (a patch without id sends it); the SDK refuses an empty id
    assert err(lua.cas, "o:e", 0, order(1), schema="order", write_id="x" * 65) == \
        "ERR write id must be 1 to 64 bytes"
    assert lua.cas("o:e", 0, order(1), schema="order", write_id="x" * 64) == 1
    assert err(lua.cas, "o:e", 1, order(2), by="b" * 65536) == \
        "ERR writer id is longer than 65535 bytes"
    assert lua.cas("o:e", 1, order(2), by="b" * 65535) == 2
    # del.lua's own checks (the SDK refuses such an id or INC before sending: ArgumentError)
    from ctxlink._lua import _evalsha

    run = _sdk_internals()[0]
    with pytest.raises(redis.ResponseError, match="^write id must be 1 to 64 bytes$"):
        run(lua.store.client, _evalsha(lua.store._st, "del", ("o:e",), (2, "x" * 65),
                                       write=True))
    for inc in ("0" * 16, "abc", "g" * 16, "0123456789abcdef0"):
        with pytest.raises(redis.ResponseError, match="^INC must be 16 hex digits, not all zero$"):
            run(lua.store.client, _evalsha(lua.store._st, "del", ("o:e",), (2, "d", inc),
                                           write=True))
    assert lua.get("o:e")[0] == 2


def test_replay_comes_before_the_version_check_and_writes_nothing(lua):
    assert lua.cas("o:r", 0, order(1), schema="order", write_id="a") == 1
    before = lua.r.get("o:r")
    assert lua.cas("o:r", 0, order(1), schema="order", write_id="a") == [b"replayed", 1]
    assert lua.cas("o:r", 7, b"\xff", write_id="a") == [b"replayed", 1]  # no validation
    assert lua.r.get("o:r") == before
    # without an id, or with another one, the same call is a conflict
    assert lua.cas("o:r", 0, order(1), schema="order")[:2] == [1, order(1)]
    reply = lua.cas("o:r", 0, order(1), schema="order", write_id="b")
    assert len(reply) == 8 and reply[5:7] == [1, []] and len(reply[7]) == 16
    assert lua.cas("o:none", 3, order(4), write_id="z") is None


# --------------------------------------------------------------------------- CTX.PATCH

def test_patch_merges_top_level_fields_and_sets_the_version(lua):
    cur = f_str(1, "o-1") + f_varint(2, 1) + f_varint(4, 100) + f_str(8, "me") + f_varint(4, 5)
    lua.cas("o:p", 0, cur, schema="order")
    reply = lua.patch("o:p", 1, f_varint(4, 7) + f_varint(5, 2), [4, 5], reads=[8],
                      by="pricing", write_id="p1")
    merged = f_str(1, "o-1") + f_str(8, "me") + f_varint(4, 7) + f_varint(5, 2) + f_varint(2, 2)
    assert reply == [2, merged]
    v = decode(lua.r.get("o:p"))
    assert (v.payload, v.updated_by) == (merged, b"pricing")
    assert (v.floor, v.clocks) == (1, {3: 1, 4: 1})  # fields 4 and 5 at version 2
    assert v.clock(4) == v.clock(5) == 2 and v.clock(8) == 1
    assert v.window[0].digest == id_digest("p1")
    assert lua.patch("o:p", 1, f_varint(4, 7) + f_varint(5, 2), [4, 5], write_id="p1") == \
        [b"replayed", 2]
    # FIELDS without the payload holding them: the field is removed
    assert lua.patch("o:p", 2, b"", [5]) == [3, f_str(1, "o-1") + f_str(8, "me")
                                             + f_varint(4, 7) + f_varint(2, 3)]


def test_patch_conflicts_only_on_fields_it_reads_or_writes(lua):
    lua.cas("o:c", 0, order(1), schema="order")          # v1: whole (create)
    lua.patch("o:c", 1, f_varint(4, 1), [4])              # v2: field 4
    lua.patch("o:c", 2, f_varint(5, 1), [5])              # v3: field 5
    # based on v2: only field 5 changed since
    assert lua.patch("o:c", 2, f_varint(6, 1), [6], reads=[4])[0] == 4
    reply = lua.patch("o:c", 2, f_varint(6, 2), [6], reads=[5, 4], write_id="k")
    assert reply[0] == 4 and reply[5:7] == [1, [5, 6]]
    # a patch conflict always has eight elements (an id or not)
    assert lua.patch("o:c", 2, f_varint(6, 2), [6], reads=[5])[5:7] == [1, [5, 6]]
    # based on v0 of a present key: the floor (the create) is above it
    assert lua.patch("o:c", 0, f_varint(9, 1), [9], write_id="q")[5:7] == [1, [9]]
    # a base newer than the context
    assert lua.patch("o:c", 9, f_varint(9, 1), [9], reads=[7], write_id="q")[5:7] == [1, [7, 9]]
    # a CTX.CAS in between is the whole context (the floor moves to its version)
    lua.cas("o:c", 4, order(5))
    assert lua.patch("o:c", 4, f_varint(9, 1), [9], write_id="q")[5:7] == [1, [9]]
    # absent key: nil unless base 0 (a create)
    assert lua.patch("o:none", 1, f_varint(4, 1), [4], schema="order") is None
    assert lua.patch("o:new", 0, f_varint(4, 1), [4], schema="order") == [
        1, f_varint(4, 1) + f_varint(2, 1)]
    new = decode(lua.r.get("o:new"))
    assert (new.floor, new.clocks) == (1, {})


def test_patch_beyond_the_window_conflicts_only_on_changed_fields(lua):
    lua.cas("o:old", 0, order(1), schema="order")
    for v in range(2, 20):
        lua.patch("o:old", v - 1, f_varint(5, v), [5])
    value = decode(lua.r.get("o:old"))
    assert value.oldest_known == 4 and value.clock(5) == 19 and value.clock(6) == 1
    assert lua.patch("o:old", 3, f_varint(6, 1), [6])[0] == 20       # window reaches v4
    # the clocks reach back further than the window: field 7 did not change since v2
    assert lua.patch("o:old", 2, f_varint(7, 2), [7], write_id="x")[0] == 21
    assert lua.patch("o:old", 2, f_varint(6, 2), [6], write_id="y")[5:7] == [6, [6]]
    assert lua.patch("o:old", 2, f_varint(9, 1), [9], reads=[5], write_id="z")[5:7] == [
        6, [5]]


def test_patch_field_errors(lua):
    lua.cas("o:f", 0, order(1), schema="order")
    before = lua.r.get("o:f")
    cases = [
        (([77], None), "CTXFIELD field 77 is not a field of 'ctxlink.example.Order'"),
        (([4], [2]), "CTXFIELD field 2 is the version field"),
        (([2], None), "CTXFIELD field 2 is the version field"),
        (([4, 78], [79]), "CTXFIELD field 78 is not a field of 'ctxlink.example.Order'"),
    ]
    for (fields, reads), text in cases:
        assert err(lua.patch, "o:f", 1, b"", fields, reads=reads) == text
    assert err(lua.patch, "o:f", 1, f_varint(5, 1), [4]) == \
        "CTXFIELD payload holds field 5, which is not in FIELDS"
    assert err(lua.patch, "o:f", 1, f_varint(4, 1) + f_varint(2, 2), [4]) == \
        "CTXFIELD payload holds field 2, which is not in FIELDS"
    assert err(lua.patch, "o:f", 1, f_varint(4, 1) + b"\x20", [4]) == \
        "CTXINVALID payload is not valid protobuf wire format"
    assert err(lua.patch, "o:f", 1, b"\x22\x01\xff", [4]) == \
        "CTXINVALID field 'base_price' (4): wire type 2, expected 0"
    assert err(lua.patch, "o:f", 1, f_len(8, b"\xff"), [8]).startswith("CTXINVALID")
    assert lua.r.get("o:f") == before


def test_patch_too_big_counts_the_merged_payload(lua, stock, module_servers, pb):
    small = RawLua(start_engine_server(module_servers, "lua",
                                           limits={"max-payload-bytes": 64}))
    small.schema_set("order", ORDER, pb.fds("order"))
    small.cas("o:b", 0, f_varint(2, 1) + f_str(8, "x" * 40), schema="order")
    assert err(small.patch, "o:b", 1, f_str(1, "y" * 20), [1]).startswith("CTXTOOBIG")
    assert small.patch("o:b", 1, f_str(1, "y" * 10), [1])[0] == 2


# --------------------------------------------------------------------------- replication

def test_writes_reach_a_replica_as_set_keepttl(lua, stock, module_servers):
    replica = module_servers.start(module=False, replicaof=("127.0.0.1", stock.port))
    try:
        lua.cas("o:repl", 0, order(1), schema="order", write_id="a")
        lua.r.pexpire("o:repl", 500000)
        lua.patch("o:repl", 1, f_varint(4, 1), [4], write_id="b")
        wait_replicated(stock, replica)
        assert replica.r.get("o:repl") == lua.r.get("o:repl")
        assert replica.r.pttl("o:repl") > 0
        assert replica.digest() == stock.digest()
    finally:
        replica.stop()


def test_scripts_stay_under_the_big_argument_size():
    """Redis keeps a SCRIPT LOAD argument of 32 KB or more in the client's query buffer (no
    copy); after a large payload on that connection, the cached script then holds a buffer of
    the payload's size (seen: +1.3 MB of used_memory_scripts after a 1 MiB rejected write).
    What is loaded is the assembled script (ctxlink._scripts: comments and header blocks left
    out; the sources in lua/ are never sent as they are); tests/lua/test_lua_plan.py checks the
    plan scripts of a small and a 240-field schema."""
    from ctxlink._scripts import load_scripts
    for name, script in load_scripts().items():
        assert len(script.source) < 28 * 1024, name


def test_replay_matches_a_digest_only_at_a_record_start(lua):
    """The digest bytes may also occur across two records (v3) or a record's digest and mask
    (v2): not a replay."""
    import struct

    from ctxvalue import encode
    d = id_digest("needle")
    lua.r.set("o:m", encode(7, 1, [b"\0\0\0\0" + d[:4], d[4:] + b"\0\0\0\0"], b"order", b"",
                            order(7)))
    reply = lua.cas("o:m", 6, order(7), write_id="needle")
    assert reply[0] == 7 and reply[5:7] == [6, []]
    lua.r.set("o:m", encode(7, 1, [bytes(8), d], b"order", b"", order(7)))
    assert lua.cas("o:m", 6, order(7), write_id="needle") == [b"replayed", 6]
    spanning = (b"\0\0\0\0" + d[:4], struct.unpack("<I", d[4:])[0])
    lua.r.set("o:m", encode_v2(7, 1, [spanning, (bytes(8), WHOLE)], b"order", b"", order(7)))
    reply = lua.cas("o:m", 6, order(7), write_id="needle")
    assert reply[0] == 7 and reply[5:] == [6, [], b""]
    lua.r.set("o:m", encode_v2(7, 1, [spanning, (d, WHOLE)], b"order", b"", order(7)))
    assert lua.cas("o:m", 6, order(7), write_id="needle") == [b"replayed", 6]


@pytest.mark.parametrize("mtype,top", [("Int32Version", 2**31 - 1), ("Sfixed32Version", 2**31 - 1)])
def test_patch_version_must_fit_a_32_bit_version_field(lua, pb, mtype, top):
    from ctxvalue import encode
    cls = pb.cls("versions", f"ctxlink.test.v.{mtype}")
    lua.schema_set("v32", f"ctxlink.test.v.{mtype}", pb.fds("versions"))
    lua.r.set("o:32", encode(top, 1, [], b"v32", b"", cls(version=top, id="a").SerializeToString()))
    assert err(lua.patch, "o:32", top, f_str(2, "b"), [2]) == \
        f"CTXVERSION version {top + 1} does not fit the version field"
    lua.r.set("o:32", encode(top - 1, 1, [], b"v32", b"",
                             cls(version=top - 1).SerializeToString()))
    assert lua.patch("o:32", top - 1, f_str(2, "b"), [2]) == [
        top, f_str(2, "b") + cls(version=top).SerializeToString()]
