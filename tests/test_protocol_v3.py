"""Protocol 3 on the native module (docs/PROTOCOL.md, "Storage format", "Commands", "Errors",
"Replication"): the exact v3 bytes (incarnation, floor and field clocks), the clock conflict rule,
INC / CTXGONE (checked before replay), PX and CTX.TOUCH with their absolute-time propagation
(AOF and a real replica), v1/v2 values read and upgraded by their first write, and the syntax of
every new argument (an error, nothing written). The Lua engine's side of the same rules is tested
through the SDK (tests/sdk, tests/lua, tests/test_engines_agree.py)."""

from __future__ import annotations

import ctxvalue
import pytest
import servers as srv
from backends import make_backend
from helpers import assert_error, context_hash, nothing_written, server_time_ms
from wire import f_str, f_varint

INC = "0123456789abcdef"
INC_B = bytes.fromhex(INC)
OTHER = "fedcba9876543210"
PX_MAX = 10**15
AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0)]


@pytest.fixture(scope="module")
def server(module_servers, module_so):
    return module_servers.start_module()


@pytest.fixture
def m(server, pb):
    """The module backend on a flushed server with the "order" schema registered."""
    server.assert_alive()
    server.r.flushall()
    b = make_backend("module", server)
    assert pb.register(b, "order") == 1
    yield b
    server.assert_alive()


@pytest.fixture
def r(m):
    return m.r


def cmd(m, *args):
    return m.r.execute_command(*args)


def stored(r, key) -> ctxvalue.Value:
    raw = r.get(key)
    assert raw is not None and raw[:4] == b"CTX\x03", raw
    return ctxvalue.decode(raw)


def gone_text(stored_inc: str, based_on: str) -> str:
    return ("CTXGONE the context was deleted and re-created (incarnation "
            f"{stored_inc}, this write was based on {based_on})")


# --------------------------------------------------------------------------- the exact bytes


def test_every_write_stores_the_exact_v3_bytes(m, r, pb):
    p1 = pb.order(1, order_id="o-1", base_price=10)
    assert cmd(m, "CTX.CAS", "k", 0, p1, "SCHEMA", "order", "BY", "me", "ID", "w1",
               "INC", INC) == 1
    v = stored(r, "k")
    d1 = ctxvalue.id_digest("w1")
    assert r.get("k") == ctxvalue.encode(1, v.updated_ms, [d1], b"order", b"me", p1,
                                         incarnation=INC_B, floor=1)
    assert len(r.get("k")) == 44 + 8 + 5 + 2 + len(p1)
    # a patch of fields 4 and 5: their clocks move to 2 (deltas above floor 1, ascending bits)
    reply = cmd(m, "CTX.PATCH", "k", 1, f_varint(4, 7) + f_varint(5, 1), "FIELDS", 2, 5, 4,
                "ID", "w2", "INC", INC)
    merged = reply[1]
    v = stored(r, "k")
    d2 = ctxvalue.id_digest("w2")
    assert r.get("k") == ctxvalue.encode(2, v.updated_ms, [d2, d1], b"order", b"", merged,
                                         incarnation=INC_B, floor=1, clocks={3: 1, 4: 1})
    # field 4 again, without an id: a zero digest, field 4's clock at 3, field 5's stays at 2
    merged = cmd(m, "CTX.PATCH", "k", 2, f_varint(4, 8), "FIELDS", 1, 4)[1]
    v = stored(r, "k")
    assert r.get("k") == ctxvalue.encode(3, v.updated_ms, [bytes(8), d2, d1], b"order", b"",
                                         merged, incarnation=INC_B, floor=1,
                                         clocks={3: 2, 4: 1})
    assert (v.clock(4), v.clock(5), v.clock(1), v.clock(35)) == (3, 2, 1, 3)  # 35 shares 4's bit
    # a CTX.CAS is a whole write: floor = 4, no clocks; the incarnation is kept
    p4 = pb.order(4, order_id="o-1")
    assert cmd(m, "CTX.CAS", "k", 3, p4) == 4
    v = stored(r, "k")
    assert r.get("k") == ctxvalue.encode(4, v.updated_ms, [bytes(8), bytes(8), d2, d1],
                                         b"order", b"", p4, incarnation=INC_B, floor=4)
    # a stock client finds the payload at the documented header length
    assert r.getrange("k", v.header_len, -1) == p4


def test_a_patch_create_has_floor_1_and_the_window_keeps_16_digests(m, r, pb):
    assert cmd(m, "CTX.PATCH", "k", 0, f_str(1, "n"), "FIELDS", 1, 1, "SCHEMA", "order")[0] == 1
    v = stored(r, "k")
    assert (v.floor, v.clocks, len(v.window)) == (1, {}, 1)
    for ver in range(2, 21):
        assert cmd(m, "CTX.PATCH", "k", ver - 1, f_varint(4, ver), "FIELDS", 1, 4,
                   "ID", f"w{ver}")[0] == ver
    v = stored(r, "k")
    assert (v.version, len(v.window), v.oldest_known, v.floor, v.clocks) == (20, 16, 5, 1,
                                                                             {3: 19})
    assert v.record_for("w20") == (20, ctxvalue.Record(ctxvalue.id_digest("w20")))
    assert v.record_for("w4") is None


def test_get_and_conflicts_carry_the_incarnation_last(m, r, pb):
    p1 = pb.order(1)
    cmd(m, "CTX.CAS", "k", 0, p1, "SCHEMA", "order", "BY", "me", "INC", INC.upper())
    assert cmd(m, "CTX.GET", "k") == [1, p1, b"order", stored(r, "k").updated_ms, b"me",
                                      INC.encode()]
    state = cmd(m, "CTX.GET", "k")
    with nothing_written(r):
        assert cmd(m, "CTX.CAS", "k", 5, pb.order(6)) == state
        assert cmd(m, "CTX.CAS", "k", 5, pb.order(6), "ID", "x") == [*state[:5], 1, [],
                                                                     INC.encode()]
        assert cmd(m, "CTX.DEL", "k", 5, "ID", "x") == [*state[:5], 1, [], INC.encode()]
        assert cmd(m, "CTX.PATCH", "k", 0, f_varint(4, 1), "FIELDS", 1, 4) == \
            [*state[:5], 1, [4], INC.encode()]


def test_a_create_without_inc_mints_a_random_nonzero_incarnation(m, r, pb):
    seen = set()
    for i in range(4):
        assert cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order") == 1
        inc = stored(r, "k").incarnation
        assert len(inc) == 8 and inc != bytes(8)
        assert cmd(m, "CTX.GET", "k")[5] == inc.hex().encode()
        seen.add(inc)
        assert cmd(m, "CTX.DEL", "k", 1, "INC", inc.hex()) == 1
    assert len(seen) == 4
    cmd(m, "CTX.PATCH", "p", 0, f_str(1, "x"), "FIELDS", 1, 1, "SCHEMA", "order")
    assert stored(r, "p").incarnation != bytes(8)


# --------------------------------------------------------------------------- the clock rule


def test_the_clock_rule_needs_no_window(m, r, pb):
    """Twenty patches of field 5 push every record of version 1's era out of the window; a patch
    of field 4 based on version 1 still merges (protocol 2 conflicted: the window did not
    reach back), one that reads field 5 conflicts on 5 alone."""
    cmd(m, "CTX.CAS", "k", 0, pb.order(1, base_price=1), "SCHEMA", "order")
    for ver in range(2, 22):
        cmd(m, "CTX.PATCH", "k", ver - 1, f_varint(5, ver), "FIELDS", 1, 5)
    with nothing_written(r):
        reply = cmd(m, "CTX.PATCH", "k", 1, f_varint(4, 2), "FIELDS", 1, 4, "READS", 2, 5, 3)
    assert reply[0] == 21 and reply[5] == 6 and reply[6] == [5] and len(reply) == 8
    # based on 20: field 5's clock is 21 > 20
    assert cmd(m, "CTX.PATCH", "k", 20, f_varint(5, 0), "FIELDS", 1, 5)[6] == [5]
    assert cmd(m, "CTX.PATCH", "k", 1, f_varint(4, 2), "FIELDS", 1, 4)[0] == 22
    # base above the version: every field of U; base 0 on an existing context: likewise
    assert cmd(m, "CTX.PATCH", "k", 99, f_varint(4, 2), "FIELDS", 1, 4, "READS", 1, 9)[6] == \
        [4, 9]
    assert cmd(m, "CTX.PATCH", "k", 0, f_varint(4, 2), "FIELDS", 1, 4)[6] == [4]
    # a whole write after the base makes every field changed
    cmd(m, "CTX.CAS", "k", 22, pb.order(23))
    assert cmd(m, "CTX.PATCH", "k", 22, f_varint(6, 2), "FIELDS", 1, 6, "READS", 1, 9)[6] == \
        [6, 9]
    assert cmd(m, "CTX.PATCH", "k", 23, f_varint(6, 2), "FIELDS", 1, 6)[0] == 24


def test_field_numbers_above_31_share_a_bit_and_can_only_over_report(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order")
    cmd(m, "CTX.PATCH", "k", 1, f_varint(4, 1), "FIELDS", 1, 4)
    v = stored(r, "k")
    # field 35 maps to field 4's bit: a READS of it counts as changed (a spurious conflict)
    assert v.clock(35) == v.clock(4) == 2
    assert ctxvalue.field_bit(35) == ctxvalue.field_bit(4)


def test_a_delta_that_would_overflow_32_bits_resets_the_floor(m, r, pb):
    big = 2**32 + 5
    raw = ctxvalue.encode(big, 0, [], b"order", b"", pb.order(big), incarnation=INC_B, floor=6,
                          clocks={4: 2**32 - 1})
    r.set("k", raw)
    assert cmd(m, "CTX.GET", "k")[0] == big
    # field 5's clock is floor + 2^32 - 1 = version: a patch of field 4 based on version - 1 merges
    assert cmd(m, "CTX.PATCH", "k", big - 1, f_varint(4, 1), "FIELDS", 1, 4)[0] == big + 1
    v = stored(r, "k")
    # delta big + 1 - 6 = 2^32 > 0xFFFFFFFF: floor = the new version, no clocks (every field changed)
    assert (v.floor, v.clocks) == (big + 1, {})
    assert cmd(m, "CTX.PATCH", "k", big, f_varint(6, 1), "FIELDS", 1, 6)[6] == [6]


# --------------------------------------------------------------------------- INC and CTXGONE


def test_inc_must_match_the_stored_incarnation(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC, "ID", "c")
    assert cmd(m, "CTX.CAS", "k", 1, pb.order(2), "INC", INC.upper()) == 2
    assert cmd(m, "CTX.PATCH", "k", 2, f_varint(4, 1), "FIELDS", 1, 4, "INC", INC)[0] == 3
    with nothing_written(r):
        for args in (["CTX.CAS", "k", 3, pb.order(4), "INC", OTHER],
                     ["CTX.CAS", "k", 1, pb.order(2), "INC", OTHER, "ID", "c"],  # not replayed
                     ["CTX.PATCH", "k", 3, f_varint(4, 2), "FIELDS", 1, 4, "INC", OTHER],
                     ["CTX.PATCH", "k", 1, f_varint(4, 2), "FIELDS", 1, 4, "INC", OTHER],
                     ["CTX.DEL", "k", 3, "INC", OTHER],
                     ["CTX.DEL", "k", 1, "INC", OTHER, "ID", "d"]):
            assert assert_error("CTXGONE", cmd, m, *args) == gone_text(INC, OTHER)
    # a re-send carrying the right incarnation is replayed as before
    assert cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC, "ID", "c") == \
        [b"replayed", 1]
    assert cmd(m, "CTX.DEL", "k", 3, "INC", INC) == 1


def test_ctxgone_is_checked_before_replay_after_a_re_create(m, r, pb):
    """A write that landed on the first context, re-sent after it was deleted and created again
    with the same write id in the successor's window: CTXGONE, never "replayed"."""
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC, "ID", "same")
    cmd(m, "CTX.DEL", "k", 1)
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", OTHER, "ID", "x")
    cmd(m, "CTX.CAS", "k", 1, pb.order(2), "INC", OTHER, "ID", "same")
    with nothing_written(r):
        assert assert_error("CTXGONE", cmd, m, "CTX.CAS", "k", 1, pb.order(2), "INC", INC,
                            "ID", "same") == gone_text(OTHER, INC)


def test_inc_is_not_checked_on_a_create_nor_on_an_absent_key(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC)
    with nothing_written(r):
        # expected 0 on an existing context: the version conflict, carrying the incarnation
        reply = cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", OTHER)
        assert len(reply) == 6 and reply[5] == INC.encode()
        reply = cmd(m, "CTX.PATCH", "k", 0, f_str(1, "x"), "FIELDS", 1, 1, "SCHEMA", "order",
                    "INC", OTHER, "ID", "z")
        assert reply[6] == [1] and reply[7] == INC.encode()
        # absent with a base >= 1: nil, INC not checked
        assert cmd(m, "CTX.CAS", "nope", 3, pb.order(4), "INC", OTHER) is None
        assert cmd(m, "CTX.PATCH", "nope", 3, f_varint(4, 1), "FIELDS", 1, 4, "INC", OTHER) \
            is None
        assert cmd(m, "CTX.DEL", "nope", 3, "INC", OTHER) is None


def test_a_v1_or_v2_value_has_no_incarnation_so_any_inc_is_gone(m, r, pb):
    r.hset("v1", mapping=context_hash(pb.order(2), 2, "order", 5, "x"))
    r.set("v2", ctxvalue.encode_v2(2, 5, [(b"\1" * 8, 1 << 31)], b"order", b"", pb.order(2)))
    for key in ("v1", "v2"):
        assert cmd(m, "CTX.GET", key)[5] == b""
        with nothing_written(r):
            assert assert_error("CTXGONE", cmd, m, "CTX.CAS", key, 2, pb.order(3),
                                "INC", INC) == gone_text("none", INC)
            assert_error("CTXGONE", cmd, m, "CTX.DEL", key, 2, "INC", INC)
        assert cmd(m, "CTX.CAS", key, 2, pb.order(3)) == 3  # without INC: the upgrade


# --------------------------------------------------------------------------- v1/v2 upgrades


def test_a_patch_upgrades_a_v2_value_keeping_its_digests(m, r, pb):
    d = [ctxvalue.id_digest(f"w{i}") for i in (5, 4, 3)]
    p5 = pb.order(5, order_id="o", base_price=1)
    r.set("k", ctxvalue.encode_v2(5, 9, [(d[0], ctxvalue.field_bit(4)), (d[1], 1 << 31),
                                        (d[2], 1 << 31)], b"order", b"old", p5))
    # read as v2: the window-mask rule decides (record 5 wrote field 4 only)
    with nothing_written(r):
        assert cmd(m, "CTX.PATCH", "k", 4, f_varint(4, 9), "FIELDS", 1, 4)[6] == [4]
        assert cmd(m, "CTX.PATCH", "k", 3, f_varint(6, 9), "FIELDS", 1, 6)[6] == [6]
        assert cmd(m, "CTX.CAS", "k", 3, pb.order(4), "ID", "w4") == [b"replayed", 4]
    merged = cmd(m, "CTX.PATCH", "k", 4, f_varint(6, 9), "FIELDS", 1, 6, "ID", "w6")[1]
    v = stored(r, "k")
    assert v.incarnation != bytes(8)
    assert r.get("k") == ctxvalue.encode(6, v.updated_ms, [ctxvalue.id_digest("w6"), *d],
                                         b"order", b"", merged, incarnation=v.incarnation,
                                         floor=5, clocks={5: 1})
    # every field counts as changed at the upgrade's base: a patch based on 4 conflicts
    assert cmd(m, "CTX.PATCH", "k", 4, f_varint(7, 1), "FIELDS", 1, 7)[6] == [7]
    assert cmd(m, "CTX.PATCH", "k", 5, f_varint(7, 1), "FIELDS", 1, 7)[0] == 7
    assert cmd(m, "CTX.CAS", "k", 4, pb.order(5), "ID", "w5") == [b"replayed", 5]


def test_a_cas_upgrades_v1_and_v2_values_with_floor_the_new_version(m, r, pb):
    r.hset("v1", mapping=context_hash(pb.order(2), 2, "order", 5, "x"))
    r.set("v2", ctxvalue.encode_v2(2, 5, [(b"\1" * 8, 1 << 31), (b"\2" * 8, 1 << 31)],
                                   b"order", b"", pb.order(2)))
    for key, window in (("v1", [bytes(8)]), ("v2", [bytes(8), b"\1" * 8, b"\2" * 8])):
        assert cmd(m, "CTX.CAS", key, 2, pb.order(3), "BY", "up") == 3
        v = stored(r, key)
        assert r.get(key) == ctxvalue.encode(3, v.updated_ms, window, b"order", b"up",
                                             pb.order(3), incarnation=v.incarnation, floor=3)
        assert v.incarnation != bytes(8)


# --------------------------------------------------------------------------- PX and CTX.TOUCH


def test_px_sets_the_expiry_and_its_absence_keeps_it(m, r, pb):
    assert cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order") == 1
    assert r.pttl("k") == -1  # a create without PX has none
    assert cmd(m, "CTX.CAS", "k", 1, pb.order(2), "PX", 100_000) == 2
    assert 90_000 < r.pttl("k") <= 100_000
    assert cmd(m, "CTX.PATCH", "k", 2, f_varint(4, 1), "FIELDS", 1, 4)[0] == 3
    assert 90_000 < r.pttl("k") <= 100_000
    assert cmd(m, "CTX.PATCH", "k", 3, f_varint(4, 2), "FIELDS", 1, 4, "PX", 5_000_000)[0] == 4
    assert 4_900_000 < r.pttl("k") <= 5_000_000
    assert cmd(m, "CTX.CAS", "new", 0, pb.order(1), "SCHEMA", "order", "PX", 50_000,
               "ID", "n") == 1
    assert 40_000 < r.pttl("new") <= 50_000
    # a grown value (the key re-inserted) keeps an expiry set by PX earlier
    assert cmd(m, "CTX.CAS", "new", 1, pb.order(2, order_id="x" * 500)) == 2
    assert 40_000 < r.pttl("new") <= 50_000
    # the largest PX
    assert cmd(m, "CTX.CAS", "new", 2, pb.order(3), "PX", PX_MAX) == 3
    assert r.pttl("new") > PX_MAX - 100_000


def test_a_replay_or_a_conflict_with_px_changes_nothing(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "ID", "c")
    with nothing_written(r):
        assert cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "ID", "c",
                   "PX", 1000) == [b"replayed", 1]
        assert cmd(m, "CTX.CAS", "k", 7, pb.order(8), "PX", 1000)[0] == 1
        assert cmd(m, "CTX.PATCH", "k", 0, f_varint(4, 1), "FIELDS", 1, 4, "PX", 1000)[6] == [4]
        assert_error("CTXVERSION", cmd, m, "CTX.CAS", "k", 1, pb.order(9), "PX", 1000)
    assert r.pttl("k") == -1


def test_ctx_touch(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order")
    before = r.get("k")
    assert cmd(m, "CTX.TOUCH", "k", 100_000) == 1
    assert 90_000 < r.pttl("k") <= 100_000 and r.get("k") == before
    assert cmd(m, "CTX.TOUCH", "k", PX_MAX) == 1
    assert cmd(m, "CTX.TOUCH", "absent", 1000) == 0 and not r.exists("absent")
    r.hset("v1", mapping=context_hash(pb.order(2), 2, "order", 5, "x"))
    assert cmd(m, "CTX.TOUCH", "v1", 100_000) == 1 and r.type("v1") == b"hash"
    assert 90_000 < r.pttl("v1") <= 100_000
    r.set("plain", "hello")
    r.set("bad", b"CTX\x03" + bytes(60))
    with nothing_written(r):
        assert_error("WRONGTYPE", cmd, m, "CTX.TOUCH", "plain", 1000)
        assert_error("WRONGTYPE", cmd, m, "CTX.TOUCH", "bad", 1000)
    assert r.pttl("plain") == -1
    # TOUCH with a short time: the key goes away
    assert cmd(m, "CTX.TOUCH", "k", 1) == 1
    srv.wait_for(lambda: not r.exists("k"), what="expiry")


def test_ctx_touch_is_the_protocol_probe(m, r):
    # (Redis 6.2 names the command as the client typed it)
    assert assert_error("ERR", cmd, m, "CTX.TOUCH").lower() == \
        "err wrong number of arguments for 'ctx.touch' command"
    assert r.info("ctx")["ctx_protocol"] == 3


# --------------------------------------------------------------------------- syntax


BAD_MS = ["0", "-1", str(PX_MAX + 1), "x", "1.5", "", " 1", "9" * 30]
BAD_INC = ["", "0" * 16, "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg",
           "0x23456789abcdef", " 123456789abcdef"]


def test_bad_px_and_inc_are_refused_and_nothing_written(m, r, pb):
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC)
    px_err = "ERR PX must be an integer from 1 to 1000000000000000"
    inc_err = "ERR INC must be 16 hex digits, not all zero"
    with nothing_written(r):
        for bad in BAD_MS:
            assert assert_error("ERR", cmd, m, "CTX.CAS", "k", 1, pb.order(2), "PX", bad) == \
                px_err
            assert assert_error("ERR", cmd, m, "CTX.PATCH", "k", 1, f_varint(4, 1),
                                "FIELDS", 1, 4, "PX", bad) == px_err
            assert assert_error("ERR", cmd, m, "CTX.TOUCH", "k", bad) == \
                "ERR milliseconds must be an integer from 1 to 1000000000000000"
        for bad in BAD_INC:
            assert assert_error("ERR", cmd, m, "CTX.CAS", "k", 1, pb.order(2), "INC", bad) == \
                inc_err
            assert assert_error("ERR", cmd, m, "CTX.PATCH", "k", 1, f_varint(4, 1),
                                "FIELDS", 1, 4, "INC", bad) == inc_err
            assert assert_error("ERR", cmd, m, "CTX.DEL", "k", 1, "INC", bad) == inc_err
            assert assert_error("ERR", cmd, m, "CTX.CAS", "new", 0, pb.order(1),
                                "SCHEMA", "order", "INC", bad) == inc_err
        for args in (["CTX.CAS", "k", 1, pb.order(2), "PX", 5, "PX", 5],
                     ["CTX.CAS", "k", 1, pb.order(2), "INC", INC, "INC", INC],
                     ["CTX.CAS", "k", 1, pb.order(2), "PX"],
                     ["CTX.CAS", "k", 1, pb.order(2), "INC"],
                     ["CTX.PATCH", "k", 1, b"", "FIELDS", 1, 4, "PX", 5, "PX", 5],
                     ["CTX.PATCH", "k", 1, b"", "FIELDS", 1, 4, "INC", INC, "INC", INC],
                     ["CTX.DEL", "k", 1, "INC", INC, "INC", INC],
                     ["CTX.DEL", "k", 1, "PX", 5],
                     ["CTX.DEL", "k", 1, "INC"],
                     ["CTX.DEL", "k", 1, "ID", "x", "INC"]):
            assert assert_error("ERR", cmd, m, *args) == "ERR syntax error"
        assert assert_error("ERR", cmd, m, "CTX.TOUCH", "k").lower() == \
            "err wrong number of arguments for 'ctx.touch' command"
        assert_error("ERR", cmd, m, "CTX.TOUCH", "k", 5, 5)
    # the syntax is checked before the key: WRONGTYPE never masks a bad argument
    r.set("plain", "x")
    with nothing_written(r):
        assert assert_error("ERR", cmd, m, "CTX.CAS", "plain", 1, b"", "PX", 0) == px_err
        assert assert_error("ERR", cmd, m, "CTX.TOUCH", "plain", 0).startswith("ERR millis")
    assert cmd(m, "CTX.DEL", "k", 1, "ID", "x", "INC", INC) == 1


def test_info_counts_touches_and_gone_writes(m, r, pb):
    i0 = r.info("ctx")
    cmd(m, "CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "INC", INC)
    cmd(m, "CTX.TOUCH", "k", 1000)
    cmd(m, "CTX.TOUCH", "absent", 1000)
    assert_error("CTXGONE", cmd, m, "CTX.CAS", "k", 1, pb.order(2), "INC", OTHER)
    i1 = r.info("ctx")
    assert i1["ctx_touch_ok"] - i0["ctx_touch_ok"] == 1
    assert i1["ctx_gone"] - i0["ctx_gone"] == 1


# --------------------------------------------------------------------------- propagation


def _needs_redis_7(server) -> None:
    """PEXPIRETIME and the AOF layout AofTail reads are Redis 7's (make asan runs Redis 6.2)."""
    if int(server.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("PEXPIRETIME and the multi-part AOF: Redis 7")


def _writes(tail):
    return [c for c in tail.commands() if c[0].upper() not in (b"MULTI", b"EXEC")]


def test_px_propagates_set_pxat_and_touch_pexpireat(servers, pb):
    p = servers.start_module(appendonly=True, config=AOF)
    _needs_redis_7(p)
    b = make_backend("module", p)
    pb.register(b, "order")
    tail = srv.AofTail(p)
    for args in (["CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "PX", 60_000],
                 ["CTX.PATCH", "k", 1, f_varint(4, 1), "FIELDS", 1, 4, "PX", 70_000],
                 ["CTX.CAS", "k", 2, pb.order(3, order_id="y" * 300), "PX", 80_000],
                 # a smaller value: rewritten in place, propagated from the built buffer
                 ["CTX.CAS", "k", 3, pb.order(4), "PX", 85_000]):
        tail.mark()
        t0 = server_time_ms(p.r)
        p.r.execute_command(*args)
        t1 = server_time_ms(p.r)
        cmds = _writes(tail)
        assert len(cmds) == 1 and len(cmds[0]) == 5, cmds
        assert [cmds[0][0].upper(), cmds[0][1], cmds[0][3].upper()] == [b"SET", b"k", b"PXAT"]
        assert cmds[0][2] == p.r.get("k")
        at = int(cmds[0][4])
        assert t0 + args[-1] <= at <= t1 + args[-1]
        assert p.r.execute_command("PEXPIRETIME", "k") == at
    tail.mark()
    t0 = server_time_ms(p.r)
    assert p.r.execute_command("CTX.TOUCH", "k", 90_000) == 1
    t1 = server_time_ms(p.r)
    cmds = _writes(tail)
    assert len(cmds) == 1 and [c.upper() for c in cmds[0][:2]] == [b"PEXPIREAT", b"K"]
    assert t0 + 90_000 <= int(cmds[0][2]) <= t1 + 90_000
    # no propagation without a change
    tail.mark()
    p.r.execute_command("CTX.TOUCH", "absent", 1000)
    assert _writes(tail) == []
    # the AOF replayed: the same absolute expiry
    at = p.r.execute_command("PEXPIRETIME", "k")
    p2 = servers.restart(p)
    assert p2.r.execute_command("PEXPIRETIME", "k") == at


def test_a_replica_gets_the_same_absolute_expiry(servers, pb):
    p = servers.start_module()
    _needs_redis_7(p)
    b = make_backend("module", p)
    pb.register(b, "order")
    rep = servers.replica(p)
    p.r.execute_command("CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order", "PX", 600_000,
                        "INC", INC)
    p.r.execute_command("CTX.PATCH", "k", 1, f_varint(4, 1), "FIELDS", 1, 4)
    p.r.execute_command("CTX.CAS", "t", 0, pb.order(1), "SCHEMA", "order")
    p.r.execute_command("CTX.TOUCH", "t", 700_000)
    srv.wait_replicated(p, rep)
    for key in ("k", "t"):
        assert rep.r.get(key) == p.r.get(key)
        assert rep.r.execute_command("PEXPIRETIME", key) == \
            p.r.execute_command("PEXPIRETIME", key) > 0
    assert rep.r.execute_command("CTX.GET", "k")[5] == INC.encode()


REDIS62 = srv.REPO_ROOT / "build/_deps/redis-6.2/src/redis-server"


@pytest.mark.skipif(not REDIS62.exists(), reason=f"{REDIS62} is missing: run `make redis62`")
@pytest.mark.skipif(bool(__import__("os").environ.get("CTX_SAN_LOGS")),
                    reason="starts a plain Redis 6.2 (a sanitizer build of the module needs the "
                           "wrapper); make asan runs the whole file on 6.2 anyway")
def test_px_keepttl_and_touch_on_redis_6_2(pb, module_so):
    """Redis 6.2 has no RM_SetAbsExpire / RM_GetAbsExpire: the relative fallbacks."""
    from ctxlink.embedded import EmbeddedRedis

    with EmbeddedRedis(module=module_so, binary=str(REDIS62)) as server:
        r = server.client()
        r.execute_command("CTX.SCHEMA.SET", "order", "ctxlink.example.Order", pb.fds("order"))
        assert r.execute_command("CTX.CAS", "k", 0, pb.order(1), "SCHEMA", "order",
                                 "PX", 100_000) == 1
        assert 90_000 < r.pttl("k") <= 100_000
        # the value grows (the key is re-inserted): the expiry is restored
        assert r.execute_command("CTX.CAS", "k", 1, pb.order(2, order_id="z" * 400)) == 2
        assert 90_000 < r.pttl("k") <= 100_000
        assert r.execute_command("CTX.PATCH", "k", 2, f_varint(4, 1), "FIELDS", 1, 4,
                                 "PX", 200_000)[0] == 3
        assert 190_000 < r.pttl("k") <= 200_000
        assert r.execute_command("CTX.TOUCH", "k", 300_000) == 1
        assert 290_000 < r.pttl("k") <= 300_000
        assert r.execute_command("CTX.GET", "k")[5] != b""
        r.close()
