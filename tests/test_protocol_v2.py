"""What protocol 2 introduced and protocol 3 keeps (docs/PROTOCOL.md, "Storage format",
"CTX.CAS", "CTX.PATCH", "CTX.DEL"), on the v3 values both engines now write: write ids and the
16-record window (replays), CTX.PATCH merges and conflicts (decided by the field clocks), v1
hashes read and upgraded, bad arguments leaving the stored value byte-identical, one
``SET ... KEEPTTL`` per write, replicas and AOF restarts remembering the window. Protocol 3's own
rules (INC, PX, CTX.TOUCH, the exact bytes, v2 upgrades): tests/test_protocol_v3.py."""

from __future__ import annotations

import pytest

import ctxvalue
import servers as srv
from backends import make_backend, start_engine_server
from helpers import (SDK_SENDS_IDS, assert_error, assert_refused_argument, conflict_state,
                     context_hash, nothing_written, raw_replies)
from wire import f_len, f_str, f_varint

ORDER = "ctxlink.example.Order"
AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0)]


@pytest.fixture
def order(pb, backend):
    assert pb.register(backend, "order") == 1
    return pb.order


def value(r, key) -> ctxvalue.Value:
    assert r.type(key) == b"string"
    return ctxvalue.decode(r.get(key))


def write_history(backend, order, key, n, first_id="w0"):
    """Creates ``key`` with id ``first_id`` and writes n - 1 more versions (ids w1 ..)."""
    assert backend.cas(key, 0, order(1, order_id="o"), schema="order", write_id=first_id) == 1
    for v in range(2, n + 1):
        assert backend.cas(key, v - 1, order(v, order_id="o"), write_id=f"w{v - 1}") == v


# --------------------------------------------------------------------------- write ids, replays


def test_a_landed_write_resent_with_its_id_is_replayed_even_after_other_writes(backend, order, r):
    assert backend.cas("o:1", 0, order(1), schema="order", write_id="create-1") == 1
    assert backend.cas("o:1", 1, order(2), write_id="second") == 2
    assert backend.patch("o:1", 2, f_varint(4, 7), [4], write_id="patch-3")[0] == 3
    with nothing_written(r):
        assert backend.cas("o:1", 0, order(1), schema="order", write_id="create-1") == \
            [b"replayed", 1]
        assert backend.cas("o:1", 1, order(2), write_id="second") == [b"replayed", 2]
        assert backend.patch("o:1", 2, f_varint(4, 7), [4], write_id="patch-3") == \
            [b"replayed", 3]
    v = value(r, "o:1")
    assert v.record_for("create-1") == (1, ctxvalue.Record(ctxvalue.id_digest("create-1")))
    assert v.record_for("patch-3")[0] == 3
    assert (v.floor, v.clocks, v.clock(4), v.clock(5)) == (2, {3: 1}, 3, 2)


@pytest.mark.parametrize("length", [1, 55, 56, 63, 64])
def test_the_window_holds_the_sha1_prefix_of_the_write_id(backend, order, r, length):
    write_id = bytes(range(256))[-length:]
    assert backend.cas("o:1", 0, order(1), schema="order", write_id=write_id) == 1
    assert value(r, "o:1").window[0].digest == ctxvalue.id_digest(write_id)
    assert backend.cas("o:1", 0, order(1), schema="order", write_id=write_id) == [b"replayed", 1]


@pytest.mark.module_only(SDK_SENDS_IDS)
def test_a_write_without_id_records_a_zero_digest_that_never_matches(backend, order, r):
    assert backend.cas("o:1", 0, order(1), schema="order") == 1
    assert value(r, "o:1").window[0].digest == bytes(8)
    assert backend.cas("o:1", 1, order(2)) == 2


def test_the_window_holds_16_writes_and_the_17th_pushes_the_oldest_out(backend, order, r):
    write_history(backend, order, "o:1", 16)
    v = value(r, "o:1")
    assert (v.version, len(v.window), v.oldest_known) == (16, 16, 1)
    assert backend.cas("o:1", 0, order(1, order_id="o"), schema="order", write_id="w0") == \
        [b"replayed", 1]
    assert backend.cas("o:1", 16, order(17, order_id="o"), write_id="w16") == 17
    v = value(r, "o:1")
    assert (v.version, len(v.window), v.oldest_known) == (17, 16, 2)
    assert v.record_for("w0") is None
    # the oldest id re-sent with its old expected version: a conflict the window cannot explain
    with nothing_written(r):
        reply = backend.cas("o:1", 0, order(1, order_id="o"), schema="order", write_id="w0")
    assert conflict_state(reply) == backend.get("o:1")
    if raw_replies(backend):  # the raw reply's tail (the SDK keeps it: see conflict_state)
        assert len(reply) == 8 and reply[5] == 2 and reply[6] == [] and \
            reply[7] == value(r, "o:1").inc_hex.encode()
        assert reply[5] > 0 + 1  # oldest_known > expected + 1: the outcome is unknown to the SDK
    assert backend.cas("o:1", 1, order(2, order_id="o"), write_id="w1") == [b"replayed", 2]


@pytest.mark.module_only("the raw reply's shape: the SDK surfaces a conflict's state "
                         "(CasResult.current) and uses oldest_known itself (tests/sdk)")
def test_a_conflict_has_eight_elements_with_id_and_six_without(backend, order, r):
    p1 = order(1)
    backend.cas("o:1", 0, p1, schema="order", by="me")
    inc = value(r, "o:1").inc_hex.encode()
    with_id = backend.cas("o:1", 0, order(1), schema="order", write_id="x")
    without = backend.cas("o:1", 0, order(1), schema="order")
    assert without[:3] == [1, p1, b"order"] and without[4] == b"me" and len(without) == 6
    assert without[5] == inc and len(inc) == 16
    assert with_id[:5] == without[:5] and with_id[5:] == [1, [], inc]
    assert backend.cas("absent", 3, order(4), write_id="x") is None
    assert backend.delete("absent", 3, write_id="x") is None
    assert backend.delete("o:1", 7, write_id="d") == [*without[:5], 1, [], inc]
    assert backend.delete("o:1", 1, write_id="d") == 1


def test_a_conflict_carries_the_current_state_with_or_without_id(backend, order, r):
    """What both engines surface of a conflict (the module's eight-element shape: above)."""
    backend.cas("o:1", 0, order(1), schema="order", by="me")
    current = backend.get("o:1")
    with nothing_written(r):
        assert conflict_state(backend.cas("o:1", 0, order(1), schema="order",
                                          write_id="x")) == current
        assert conflict_state(backend.cas("o:1", 0, order(1), schema="order")) == current
        assert conflict_state(backend.delete("o:1", 7, write_id="d")) == current
        assert conflict_state(backend.delete("o:1", 7)) == current
        assert backend.cas("absent", 3, order(4), write_id="x") is None
        assert backend.delete("absent", 3, write_id="x") is None


def test_the_ttl_of_a_context_survives_writes(backend, order, r):
    backend.cas("o:1", 0, order(1), schema="order")
    r.pexpire("o:1", 100_000)
    backend.cas("o:1", 1, order(2), write_id="a")       # the value grows
    backend.patch("o:1", 2, f_varint(4, 1), [4])
    assert 90_000 < r.pttl("o:1") <= 100_000
    for v in range(4, 20):                                # a full window: same size, shrinking
        assert backend.cas("o:1", v - 1, order(v), write_id=f"w{v}") == v
    assert backend.cas("o:1", 19, f_varint(2, 20)) == 20
    assert 90_000 < r.pttl("o:1") <= 100_000
    # a v1 hash replaced by its first v3 write keeps its TTL too
    r.hset("v1", mapping=context_hash(order(1), 1, "order", 5, "x"))
    r.pexpire("v1", 100_000)
    assert backend.cas("v1", 1, order(2)) == 2
    assert r.type("v1") == b"string" and 90_000 < r.pttl("v1") <= 100_000
    r.persist("o:1")
    assert backend.cas("o:1", 20, order(21)) == 21
    assert r.pttl("o:1") == -1


# --------------------------------------------------------------------------- CTX.PATCH


def test_patches_of_disjoint_fields_merge(backend, order, r):
    backend.cas("o:1", 0, order(1, order_id="o-1", status=1, base_price=100), schema="order")
    v2 = backend.patch("o:1", 1, f_varint(4, 10), [4], reads=[3], by="pricing", write_id="a")
    expected2 = f_str(1, "o-1") + f_varint(3, 1) + f_varint(4, 10) + f_varint(2, 2)
    assert v2 == [2, expected2]
    # written against version 1 too, but field 5 and the field it reads did not change since
    v3 = backend.patch("o:1", 1, f_varint(5, 3), [5], reads=[8], by="discounts", write_id="b")
    expected3 = f_str(1, "o-1") + f_varint(3, 1) + f_varint(4, 10) + f_varint(5, 3) + \
        f_varint(2, 3)
    assert v3 == [3, expected3]
    v = value(r, "o:1")
    assert (v.version, v.payload, v.updated_by) == (3, expected3, b"discounts")
    # the create set the floor; each patch moved the clocks of the fields it wrote
    assert (v.floor, v.clock(4), v.clock(5), v.clock(3), v.clock(8)) == (1, 2, 3, 1, 1)
    assert backend.get("o:1")[:3] == [3, expected3, b"order"]


def test_a_patch_conflicts_when_a_field_it_reads_changed(backend, order, r):
    p1 = order(1, order_id="o-1", base_price=100)
    backend.cas("o:1", 0, p1, schema="order")
    assert backend.patch("o:1", 1, f_varint(4, 10), [4])[0] == 2
    with nothing_written(r):
        reply = backend.patch("o:1", 1, f_varint(6, 90), [6], reads=[5, 4], write_id="c")
    assert len(reply) == 8 and reply[0] == 2 and reply[5] == 1 and reply[6] == [4]
    # written fields too; `changed` ascending, each number once
    reply = backend.patch("o:1", 1, f_varint(4, 1) + f_varint(6, 1), [6, 4], reads=[4, 1])
    assert reply[6] == [4]


def test_a_patch_from_before_a_whole_write_or_the_future_conflicts_on_every_field(backend, order,
                                                                                r):
    write_history(backend, order, "o:1", 17)  # CTX.CAS writes: floor 17
    reply = backend.patch("o:1", 0, f_varint(4, 1), [4], reads=[8])
    assert reply[5] == 2 and reply[6] == [4, 8]
    assert backend.patch("o:1", 99, f_varint(4, 1), [4])[6] == [4]
    assert backend.patch("absent", 3, f_varint(4, 1), [4]) is None


def test_a_patch_on_version_0_creates_the_context(backend, order, r):
    reply = backend.patch("o:new", 0, f_str(1, "n"), [1], schema="order", write_id="c")
    assert reply == [1, f_str(1, "n") + f_varint(2, 1)]
    assert (value(r, "o:new").floor, value(r, "o:new").clocks) == (1, {})
    assert backend.patch("o:new", 0, f_str(1, "n"), [1], schema="order")[6] == [1]


# --------------------------------------------------------------------------- v1 hashes


def test_a_v1_hash_context_is_read_and_its_first_write_converts_it(backend, order, r):
    p = order(4, order_id="o-9", base_price=5)
    r.hset("o:9", mapping=context_hash(p, 4, "order", 123, "old"))
    assert backend.get("o:9") == [4, p, b"order", 123, b"old", b""]  # no incarnation yet
    reply = backend.cas("o:9", 3, order(4), write_id="x")
    assert conflict_state(reply) == [4, p, b"order", 123, b"old", b""]
    if raw_replies(backend):
        assert reply[5:] == [5, [], b""]  # n = 0
    assert backend.patch("o:9", 4, f_varint(5, 2), [5], write_id="p") [0] == 5
    v = value(r, "o:9")
    assert (v.version, v.schema, len(v.window), v.format) == (5, b"order", 1, 3)
    assert (v.floor, v.clock(5), v.clock(4)) == (4, 5, 4)  # upgraded by a patch: floor = 4
    assert v.payload == f_str(1, "o-9") + f_varint(4, 5) + f_varint(5, 2) + f_varint(2, 5)
    assert backend.patch("o:9", 4, f_varint(5, 2), [5], write_id="p") == [b"replayed", 5]


def test_strings_that_break_the_type_rule_are_wrongtype(backend, order, r):
    good = ctxvalue.encode(1, 0, [], b"order", b"", f_varint(2, 1))
    bad = {
        "short": b"CTX\x03",
        "magic": b"CTX\x01" + good[4:],
        "version-0": ctxvalue.encode(0, 0, [], b"order", b"", b""),
        "lengths": good[:44 + 3],
        "window-17": good[:40] + bytes([17]) + good[41:],
        "schema-0": good[:41] + b"\x00" + good[42:],
        "integer": b"12345",
    }
    for name, raw in bad.items():
        r.set(name, raw)
        with nothing_written(r):
            assert_error("WRONGTYPE", backend.get, name)
            assert_error("WRONGTYPE", backend.cas, name, 1, order(2), write_id="i")
            assert_error("WRONGTYPE", backend.patch, name, 1, f_varint(4, 1), [4])
            assert_error("WRONGTYPE", backend.delete, name, 1)
    r.set("hand-made", good)
    assert backend.get("hand-made")[:3] == [1, f_varint(2, 1), b"order"]


# --------------------------------------------------------------------------- bad arguments

BAD = [
    ("cas-empty-id", "cas", (1, "ORDER2"), {"write_id": ""},
     "ERR write id must be 1 to 64 bytes"),
    ("cas-65-byte-id", "cas", (1, "ORDER2"), {"write_id": "x" * 65},
     "ERR write id must be 1 to 64 bytes"),
    ("cas-long-by", "cas", (1, "ORDER2"), {"by": "b" * 65536},
     "ERR writer id is longer than 65535 bytes"),
    ("patch-empty-id", "patch", (1, f_varint(4, 1), [4]), {"write_id": ""},
     "ERR write id must be 1 to 64 bytes"),
    ("patch-duplicate-field", "patch", (1, f_varint(4, 1), [4, 5, 4]), {},
     "ERR field 4 is listed twice in FIELDS"),
    ("patch-duplicate-read", "patch", (1, f_varint(4, 1), [4]), {"reads": [8, 3, 3]},
     "ERR field 3 is listed twice in READS"),
    ("patch-field-0", "patch", (1, b"", [0]), {},
     "ERR field numbers must be integers from 1 to 536870911"),
    ("patch-field-too-big", "patch", (1, b"", [536870912]), {},
     "ERR field numbers must be integers from 1 to 536870911"),
    ("patch-no-fields", "patch", (1, b"", []), {},
     "ERR FIELDS needs a count from 1 to the field numbers that follow"),
    ("patch-unknown-field", "patch", (1, f_varint(77, 1), [77]), {},
     "CTXFIELD field 77 is not a field of 'ctxlink.example.Order'"),
    ("patch-unknown-read", "patch", (1, f_varint(4, 1), [4]), {"reads": [12]},
     "CTXFIELD field 12 is not a field of 'ctxlink.example.Order'"),
    ("patch-version-in-fields", "patch", (1, f_varint(2, 9), [2]), {},
     "CTXFIELD field 2 is the version field"),
    ("patch-version-in-reads", "patch", (1, f_varint(4, 1), [4]), {"reads": [2]},
     "CTXFIELD field 2 is the version field"),
    ("patch-payload-field-not-in-fields", "patch", (1, f_varint(4, 1) + f_varint(5, 1), [4]), {},
     "CTXFIELD payload holds field 5, which is not in FIELDS"),
    ("patch-bad-wire", "patch", (1, b"\x20", [4]), {},
     "CTXINVALID payload is not valid protobuf wire format"),
    ("patch-bad-utf8", "patch", (1, f_len(8, b"\xff"), [8]), {},
     "CTXINVALID field 'last_updated_by' (8): invalid UTF-8"),
    ("patch-schema-mismatch", "patch", (1, f_varint(4, 1), [4]), {"schema": "other"},
     "CTXSCHEMA schema mismatch: the context uses 'order', not 'other'"),
    ("del-empty-id", "delete", (1,), {"write_id": ""}, "ERR write id must be 1 to 64 bytes"),
]


# refused by the SDK before sending (ArgumentError), by the module's command line (ERR)
SDK_REFUSES = {"cas-empty-id", "cas-65-byte-id", "cas-long-by", "patch-empty-id", "del-empty-id"}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_arguments_are_refused_and_leave_the_value_byte_identical(backend, order, r, case):
    label, method, args, kwargs, error = case
    backend.cas("o:1", 0, order(1, order_id="o-1", base_price=3), schema="order", write_id="c")
    args = tuple(order(2) if a == "ORDER2" else a for a in args)
    before = r.get("o:1")
    with nothing_written(r):
        if label in SDK_REFUSES:
            assert_refused_argument(backend, error, getattr(backend, method), "o:1", *args,
                                    **kwargs)
        else:
            assert assert_error(error.split()[0], getattr(backend, method), "o:1", *args,
                                **kwargs) == error
    assert r.get("o:1") == before


@pytest.mark.module_only(reason="arity and option parsing of the module command")
def test_patch_syntax_errors(backend, order, r):
    b = backend
    assert_error("ERR", b.command, "CTX.PATCH")
    assert assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"", "SCHEMA", "order") == \
        "ERR FIELDS is required"
    assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"")  # FIELDS is required
    assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"", "FIELDS", "2", "4")
    assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"", "FIELDS", "1", "4", "FIELDS", "1",
                 "5")
    assert_error("ERR", b.command, "CTX.PATCH", "k", "x", b"", "FIELDS", "1", "4")
    assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"", "FIELDS", "1", "4", "NOPE", "1")
    assert_error("ERR", b.command, "CTX.DEL", "k", "1", "ID")
    assert_error("ERR", b.command, "CTX.DEL", "k", "1", "BY", "x")


# --------------------------------------------------------------------------- propagation, replicas


def test_a_write_propagates_exactly_one_set_keepttl(servers, engine, pb):
    p = start_engine_server(servers, engine, appendonly=True, config=AOF)
    b = make_backend(engine, p)
    pb.register(b, "order")
    tail = srv.AofTail(p)
    for write in (lambda: b.cas("o:1", 0, pb.order(1), schema="order", write_id="a"),
                  lambda: b.patch("o:1", 1, f_varint(4, 3), [4], write_id="b"),
                  lambda: b.cas("o:1", 2, pb.order(3), write_id="c")):
        tail.mark()
        write()
        cmds = [c for c in tail.commands() if c[0].upper() not in (b"MULTI", b"EXEC")]
        assert len(cmds) == 1, cmds
        assert [cmds[0][0].upper(), cmds[0][1], cmds[0][3].upper()] == [b"SET", b"o:1",
                                                                          b"KEEPTTL"]
        assert cmds[0][2] == p.r.get("o:1") and len(cmds[0]) == 4
    tail.mark()
    b.cas("o:1", 2, pb.order(3), write_id="c")  # replay: nothing written
    b.patch("o:1", 0, f_varint(4, 3), [4])      # conflict
    assert [c for c in tail.commands() if c[0].upper() not in (b"MULTI", b"EXEC")] == []


def test_replica_is_identical_and_remembers_the_window_after_promotion(servers, engine, pb):
    p = start_engine_server(servers, engine)
    b = make_backend(engine, p)
    pb.register(b, "order")
    rep = servers.replica(p, module=engine == "module")
    b.cas("o:1", 0, pb.order(1, base_price=1), schema="order", write_id="a")
    b.patch("o:1", 1, f_varint(4, 3), [4], write_id="b")
    p.r.hset("v1", mapping=context_hash(pb.order(1), 1, "order", 5, "x"))
    b.patch("v1", 1, f_varint(5, 3), [5], write_id="c")
    srv.wait_replicated(p, rep)
    assert p.digest() == rep.digest()
    assert rep.r.get("o:1") == p.r.get("o:1")
    assert rep.r.execute_command("REPLICAOF", "NO", "ONE") in (b"OK", True)
    srv.wait_for(lambda: rep.info("replication")["role"] == "master", what="promotion")
    rb = make_backend(engine, rep)
    assert rb.patch("o:1", 1, f_varint(4, 3), [4], write_id="b") == [b"replayed", 2]
    assert rb.cas("o:1", 0, pb.order(1, base_price=1), schema="order", write_id="a") == \
        [b"replayed", 1]
    assert rb.patch("v1", 1, f_varint(5, 3), [5], write_id="c") == [b"replayed", 2]


def test_replays_are_recognised_after_an_aof_restart(servers, engine, pb):
    p = start_engine_server(servers, engine, appendonly=True, config=AOF)
    b = make_backend(engine, p)
    pb.register(b, "order")
    b.cas("o:1", 0, pb.order(1), schema="order", write_id="a")
    b.patch("o:1", 1, f_varint(4, 3), [4], write_id="b")
    before = p.r.get("o:1")
    p2 = servers.restart(p)
    assert p2.r.get("o:1") == before
    b2 = make_backend(engine, p2)
    assert b2.cas("o:1", 0, pb.order(1), schema="order", write_id="a") == [b"replayed", 1]
    assert b2.patch("o:1", 1, f_varint(4, 3), [4], write_id="b") == [b"replayed", 2]


# --------------------------------------------------------------------------- INFO


@pytest.mark.module_only(reason="INFO ctx is the native module's")
def test_info_shows_protocol_3_and_counts_patches_and_replays(backend, order, r):
    def info():
        return {k: v for k, v in r.info("ctx").items()}
    i0 = info()
    assert i0["ctx_protocol"] == 3
    backend.cas("o:1", 0, order(1), schema="order", write_id="a")
    backend.patch("o:1", 1, f_varint(4, 3), [4])
    backend.cas("o:1", 0, order(1), schema="order", write_id="a")
    assert_error("CTXFIELD", backend.patch, "o:1", 2, b"", [77])
    i1 = info()
    assert i1["ctx_patch_ok"] - i0["ctx_patch_ok"] == 1
    assert i1["ctx_replays"] - i0["ctx_replays"] == 1
    assert i1["ctx_rejected_field"] - i0["ctx_rejected_field"] == 1
