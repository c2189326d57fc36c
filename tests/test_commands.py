"""CTX.GET / CTX.CAS / CTX.DEL: reply shapes, storage format, conflicts, the order of checks,
syntax errors, WRONGTYPE, CTXVERSION and CTXTOOBIG (docs/PROTOCOL.md, "Commands")."""

from __future__ import annotations

import pytest

from backends import make_backend, start_engine_server
import ctxvalue
from helpers import (NO_COMMAND_LINE, assert_error, assert_refused_argument, context_hash,
                     key_state, nothing_written, raw_replies, server_time_ms)
from wire import f_str, f_varint

MAX_VERSION = 2**63 - 2


def stored(r, key) -> ctxvalue.Value:
    """The context at ``key`` as stored (storage format v3)."""
    assert r.type(key) == b"string"
    return ctxvalue.decode(r.get(key))


@pytest.fixture
def order(pb, backend):
    """Register the example schema as "order"; returns a payload builder."""
    assert pb.register(backend, "order") == 1
    return pb.order


def create(backend, pb, key="order:1", by=None, **fields):
    payload = pb.order(1, order_id=fields.pop("order_id", "o-1"), **fields)
    assert backend.cas(key, 0, payload, schema="order", by=by) == 1
    return payload


# --------------------------------------------------------------------------- create / update / get


def test_create_replies_1_and_stores_one_v3_string(backend, order, r):
    payload = order(1, order_id="o-1", status=1)
    t0 = server_time_ms(r)
    assert backend.cas("order:1", 0, payload, schema="order", by="router") == 1
    t1 = server_time_ms(r)
    v = stored(r, "order:1")
    assert (v.version, v.schema, v.updated_by, v.payload) == (1, b"order", b"router", payload)
    assert (v.format, v.floor, v.clocks, len(v.window)) == (3, 1, {}, 1)  # a whole write
    assert v.incarnation != bytes(8)
    if raw_replies(backend):  # a command without ID; the SDK sends an id with every write
        assert v.window == (ctxvalue.Record(b"\0" * 8),)
    assert t0 <= v.updated_ms <= t1
    raw = r.get("order:1")
    assert raw == ctxvalue.encode(1, v.updated_ms, v.window, b"order", b"router", payload,
                                  incarnation=v.incarnation)
    # a stock client reads the payload with GETRANGE from the documented header length
    assert r.getrange("order:1", 44 + 8 * 1 + len(b"order") + len(b"router"), -1) == payload


def test_get_returns_version_raw_schema_updated_ms_updated_by(backend, order, r):
    payload = order(1, order_id="o-1", base_price=1000, items=[("sku-1", 2)])
    backend.cas("order:1", 0, payload, schema="order", by="router")
    reply = backend.get("order:1")
    assert isinstance(reply, list) and len(reply) == 6
    version, raw, schema, updated_ms, updated_by, incarnation = reply
    assert version == 1 and isinstance(version, int)
    assert raw == payload
    assert schema == b"order"
    assert isinstance(updated_ms, int) and updated_ms == stored(r, "order:1").updated_ms
    assert updated_by == b"router"
    assert incarnation == stored(r, "order:1").inc_hex.encode() and len(incarnation) == 16


def test_get_of_absent_key_is_nil(backend):
    assert backend.get("order:nope") is None


def test_updated_ms_is_the_server_clock(backend, order, r):
    t0 = server_time_ms(r)
    backend.cas("order:1", 0, order(1), schema="order")
    t1 = server_time_ms(r)
    assert t0 <= backend.get("order:1")[3] <= t1


def test_updated_by_is_empty_when_by_is_absent(backend, order, r):
    backend.cas("order:1", 0, order(1), schema="order")
    assert stored(r, "order:1").updated_by == b""
    assert backend.get("order:1")[4] == b""


def test_every_write_sets_updated_by_so_an_update_without_by_clears_it(backend, order, r):
    backend.cas("order:1", 0, order(1), schema="order", by="router")
    assert backend.cas("order:1", 1, order(2), by=None) == 2
    assert stored(r, "order:1").updated_by == b""


def test_by_is_stored_byte_for_byte(backend, order, r):
    writer = b"agent\x00\xff \xe2\x82\xac"
    assert backend.cas("order:1", 0, order(1), schema="order", by=writer) == 1
    assert stored(r, "order:1").updated_by == writer
    assert backend.get("order:1")[4] == writer


def test_update_increments_version_and_keeps_the_stored_schema(backend, order, r):
    backend.cas("order:1", 0, order(1), schema="order", by="router")
    p2 = order(2, order_id="o-1", status=2)
    assert backend.cas("order:1", 1, p2, by="checker") == 2
    p3 = order(3, order_id="o-1", status=3)
    assert backend.cas("order:1", 2, p3, schema="order", by="pricing") == 3
    version, raw, schema, _, by, _ = backend.get("order:1")
    assert (version, raw, schema, by) == (3, p3, b"order", b"pricing")
    v = stored(r, "order:1")
    assert (v.version, v.schema, len(v.window)) == (3, b"order", 3)


def test_raw_is_stored_exactly_as_sent(backend, order, r):
    # fields out of order, a repeated scalar field twice (last one wins): not canonical, but
    # valid; the stored bytes must be the client's bytes, never a re-encoding.
    payload = f_str(1, "late") + f_varint(4, 5) + f_varint(2, 1) + f_str(1, "o-1") + f_varint(4, 7)
    assert backend.cas("order:1", 0, payload, schema="order") == 1
    assert stored(r, "order:1").payload == payload
    assert backend.get("order:1")[1] == payload


def test_version_field_uses_the_last_occurrence(backend, order):
    # protobuf semantics: for a repeated occurrence of a singular field the last one wins
    assert backend.cas("order:1", 0, f_varint(2, 7) + f_varint(2, 1), schema="order") == 1
    assert_error("CTXVERSION", backend.cas, "order:2", 0, f_varint(2, 1) + f_varint(2, 7),
                 schema="order")


def test_hash_written_with_plain_hset_is_a_context(backend, order, r):
    payload = order(4, order_id="o-9")
    r.hset("order:9", mapping=context_hash(payload, 4, "order", 123, "redis-cli"))
    assert backend.get("order:9") == [4, payload, b"order", 123, b"redis-cli", b""]
    assert backend.cas("order:9", 4, order(5, order_id="o-9")) == 5


def test_hash_with_only_a_version_field_is_a_context(backend, order, r):
    r.hset("order:1", "version", 2)
    assert backend.cas("order:1", 1, order(2), schema="order")[0] == 2  # conflict, not WRONGTYPE
    assert backend.delete("order:1", 2) == 1


def test_context_whose_stored_schema_is_missing_is_a_schema_error_not_wrongtype(backend, order, r):
    """A hash with a usable ``version`` is a context (step 2 passes); on an update the stored
    schema must still be registered (step 4), so an absent ``schema`` field is CTXSCHEMA."""
    r.hset("order:1", "version", 1)
    assert backend.get("order:1")[0] == 1  # CTX.GET treats it as a context
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 1, order(2))
        assert_error("CTXSCHEMA", backend.cas, "order:1", 1, order(2), schema="order")
    r.hset("order:2", mapping={"version": 1, "raw": order(1), "schema": "",
                               "updated_ms": 1, "updated_by": ""})
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:2", 1, order(2))


def test_cas_at_the_largest_expected_version(backend, order, r):
    # 2^63 - 2 on the module; 2^53 - 2 on the Lua engine, whose numbers are doubles
    # (PROTOCOL.md, "Lua engine"; headers of lua/cas.lua and lua/del.lua)
    MAX_VERSION = backend.max_version
    payload = order(MAX_VERSION, order_id="big")
    r.hset("order:big", mapping=context_hash(payload, MAX_VERSION, "order", 1))
    new = order(MAX_VERSION + 1, order_id="big")
    assert backend.cas("order:big", MAX_VERSION, new) == MAX_VERSION + 1
    assert backend.get("order:big")[0] == MAX_VERSION + 1
    with nothing_written(r):
        assert_refused_argument(
            backend, f"ERR expected_version must be an integer from 0 to {MAX_VERSION}",
            backend.cas, "order:big", MAX_VERSION + 1, order(0), schema="order")


# --------------------------------------------------------------------------- conflicts


def test_stale_version_is_a_conflict_with_current_state(backend, pb, order, r):
    create(backend, pb)
    backend.cas("order:1", 1, order(2), by="checker")
    current = backend.get("order:1")
    with nothing_written(r):
        reply = backend.cas("order:1", 1, order(2, order_id="other"), by="late")
    assert reply == current


def test_future_version_is_a_conflict_with_current_state(backend, pb, order, r):
    create(backend, pb)
    current = backend.get("order:1")
    with nothing_written(r):
        assert backend.cas("order:1", 5, order(6)) == current


def test_create_on_an_existing_key_is_a_conflict(backend, pb, order, r):
    create(backend, pb, by="router")
    current = backend.get("order:1")
    with nothing_written(r):
        assert backend.cas("order:1", 0, order(1, order_id="dup"), schema="order") == current


def test_update_of_an_absent_key_is_a_nil_conflict(backend, order, r):
    with nothing_written(r):
        assert backend.cas("order:404", 5, order(6), schema="order") is None
    assert r.exists("order:404") == 0


def test_conflict_is_reported_before_the_schema_checks(backend, pb, order, r):
    create(backend, pb)
    current = backend.get("order:1")
    with nothing_written(r):
        # create without SCHEMA on an existing key: conflict, not "schema required"
        assert backend.cas("order:1", 0, order(1)) == current
        # update with a different SCHEMA but a stale version: conflict, not "mismatch"
        assert backend.cas("order:1", 7, order(8), schema="nosuch") == current
        # absent key, no SCHEMA: nil conflict, not "schema required"
        assert backend.cas("order:2", 3, order(4)) is None


def test_conflict_is_reported_before_validation_and_version_checks(backend, pb, order, r):
    create(backend, pb)
    current = backend.get("order:1")
    with nothing_written(r):
        assert backend.cas("order:1", 0, b"\xff\xff\xff garbage") == current
        assert backend.cas("order:1", 3, order(99)) == current
        assert backend.cas("order:2", 3, b"\xff") is None


# --------------------------------------------------------------------------- schema checks


def test_schema_is_required_on_create(backend, order, r):
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 0, order(1))
    assert r.exists("order:1") == 0


def test_unknown_schema_on_create_is_rejected(backend, order, r):
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 0, order(1), schema="nosuch")


def test_schema_is_checked_before_validation_on_create(backend, order, r):
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 0, b"\xff garbage")
        assert_error("CTXSCHEMA", backend.cas, "order:1", 0, b"\xff garbage", schema="nosuch")


def test_schema_mismatch_on_update_is_rejected(backend, pb, order, r):
    pb.register(backend, "order", name="order2")
    create(backend, pb)
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 1, order(2), schema="order2")
    assert backend.cas("order:1", 1, order(2), schema="order") == 2


# --------------------------------------------------------------------------- CTXVERSION


@pytest.mark.parametrize("expected,payload_version", [
    (0, 2), (0, 0), (0, -1), (1, 1), (1, 3), (1, 0), (1, 2**63 - 1),
], ids=lambda v: str(v))
def test_payload_version_must_be_expected_plus_one(backend, pb, order, r, expected, payload_version):
    if expected:
        create(backend, pb)
    with nothing_written(r):
        assert_error("CTXVERSION", backend.cas, "order:1", expected, order(payload_version),
                     schema="order")


def test_missing_version_field_is_a_version_error(backend, order, r):
    with nothing_written(r):
        assert_error("CTXVERSION", backend.cas, "order:1", 0, f_str(1, "no version"),
                     schema="order")
        assert_error("CTXVERSION", backend.cas, "order:1", 0, b"", schema="order")


def test_validation_is_checked_before_the_version(backend, order, r):
    bad = f_varint(2, 99) + f_str(1, "x")[:-1]  # wrong version and truncated
    with nothing_written(r):
        assert_error("CTXINVALID", backend.cas, "order:1", 0, bad, schema="order")


# --------------------------------------------------------------------------- WRONGTYPE

NON_CONTEXTS = {
    "string": lambda r, k: r.set(k, "x"),
    "list": lambda r, k: r.rpush(k, "a"),
    "set": lambda r, k: r.sadd(k, "a"),
    "zset": lambda r, k: r.zadd(k, {"a": 1}),
    "hash-without-version": lambda r, k: r.hset(k, mapping={"raw": "x", "schema": "order"}),
    "hash-version-abc": lambda r, k: r.hset(k, mapping={"version": "abc", "raw": "x"}),
    "hash-version-0": lambda r, k: r.hset(k, mapping={"version": "0", "raw": "x"}),
    "hash-version-negative": lambda r, k: r.hset(k, mapping={"version": "-1", "raw": "x"}),
    "hash-version-float": lambda r, k: r.hset(k, mapping={"version": "1.5", "raw": "x"}),
    "hash-version-empty": lambda r, k: r.hset(k, mapping={"version": "", "raw": "x"}),
}


@pytest.mark.parametrize("kind", list(NON_CONTEXTS))
def test_existing_key_that_is_not_a_context_is_wrongtype(backend, order, r, kind):
    NON_CONTEXTS[kind](r, "k")
    with nothing_written(r):
        assert_error("WRONGTYPE", backend.get, "k")
        assert_error("WRONGTYPE", backend.cas, "k", 0, order(1), schema="order")
        assert_error("WRONGTYPE", backend.cas, "k", 1, order(2), schema="order")
        assert_error("WRONGTYPE", backend.cas, "k", 7, order(8))
        assert_error("WRONGTYPE", backend.delete, "k", 0)
        assert_error("WRONGTYPE", backend.delete, "k", 1)


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_syntax_is_checked_before_the_key_type(backend, order, r):
    r.set("k", "x")
    with nothing_written(r):
        assert_error("ERR", backend.command, "CTX.CAS", "k", "abc", order(1), "SCHEMA", "order")
        assert_error("ERR", backend.command, "CTX.CAS", "k", "0", order(1), "BOGUS", "x")
        assert_error("ERR", backend.command, "CTX.DEL", "k", "-1")


# --------------------------------------------------------------------------- ERR


@pytest.mark.parametrize("args", [
    ("CTX.GET",),
    ("CTX.GET", "a", "b"),
    ("CTX.CAS",),
    ("CTX.CAS", "k"),
    ("CTX.CAS", "k", "0"),
    ("CTX.DEL",),
    ("CTX.DEL", "k"),
    ("CTX.DEL", "k", "1", "extra"),
    ("CTX.SCHEMA.SET",),
    ("CTX.SCHEMA.SET", "n"),
    ("CTX.SCHEMA.SET", "n", "ctxlink.example.Order"),
    ("CTX.SCHEMA.GET",),
    ("CTX.SCHEMA.GET", "a", "b"),
    ("CTX.SCHEMA.LIST", "x"),
    ("CTX.SCHEMA.DEL",),
    ("CTX.SCHEMA.DEL", "a", "b"),
], ids=lambda a: "_".join(a))
@pytest.mark.module_only(NO_COMMAND_LINE)
def test_wrong_arity_is_err(backend, r, args):
    with nothing_written(r):
        assert_error("ERR", backend.command, *args)


BAD_VERSIONS = ["-1", "abc", "1.5", "", "1e3", "0x10", " 1", "1 ", "9223372036854775807",
                "9223372036854775808", "18446744073709551616", "-9223372036854775808"]


@pytest.mark.parametrize("bad", BAD_VERSIONS, ids=repr)
@pytest.mark.module_only(NO_COMMAND_LINE)
def test_expected_version_that_is_not_an_integer_in_range_is_err(backend, pb, order, r, bad):
    create(backend, pb)
    with nothing_written(r):
        assert_error("ERR", backend.command, "CTX.CAS", "order:1", bad, order(2))
        assert_error("ERR", backend.command, "CTX.CAS", "order:new", bad, order(1),
                     "SCHEMA", "order")
        assert_error("ERR", backend.command, "CTX.DEL", "order:1", bad)
        assert_error("ERR", backend.command, "CTX.DEL", "order:new", bad)


def test_largest_expected_version_is_accepted_syntactically(backend, order, r):
    MAX_VERSION = backend.max_version  # 2^53 - 2 on the Lua engine, see above
    with nothing_written(r):
        assert backend.cas("order:1", MAX_VERSION, order(1), schema="order") is None
        assert backend.delete("order:1", MAX_VERSION) is None


@pytest.mark.parametrize("options", [
    ["BOGUS", "x"],
    ["SCHEMA", "order", "SCHEMA", "order"],
    ["SCHEMA", "order", "schema", "order"],
    ["BY", "a", "BY", "b"],
    ["SCHEMA", "order", "BY", "a", "by", "a"],
    ["SCHEMA"],
    ["BY"],
    ["SCHEMA", "order", "BY"],
    ["BY", "a", "SCHEMA"],
    ["FORCE"],
    ["VERSIONFIELD", "version"],
    ["SCHEMA", "order", "extra"],
], ids=lambda o: "_".join(o))
@pytest.mark.module_only(NO_COMMAND_LINE)
def test_unknown_repeated_or_valueless_option_is_err(backend, pb, order, r, options):
    with nothing_written(r):
        assert_error("ERR", backend.command, "CTX.CAS", "order:1", "0", order(1), *options)
    create(backend, pb)
    with nothing_written(r):
        # syntax comes before the version check: no conflict reply for a stale version
        assert_error("ERR", backend.command, "CTX.CAS", "order:1", "0", order(1), *options)
        assert_error("ERR", backend.command, "CTX.CAS", "order:1", "1", order(2), *options)


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_options_are_case_insensitive_and_in_any_order(backend, order, r):
    assert backend.command("CTX.CAS", "order:1", "0", order(1), "by", "router", "schema", "order") == 1
    assert backend.command("CTX.CAS", "order:1", "1", order(2), "Schema", "order", "bY", "x") == 2
    assert stored(r, "order:1").updated_by == b"x"
    assert backend.command("CTX.CAS", "order:1", "2", order(3), "BY", "y") == 3


# --------------------------------------------------------------------------- CTX.DEL


def test_del_with_the_current_version_deletes_and_replies_1(backend, pb, order, r):
    create(backend, pb)
    backend.cas("order:1", 1, order(2))
    assert backend.delete("order:1", 2) == 1
    assert r.exists("order:1") == 0
    assert backend.get("order:1") is None


def test_del_of_an_absent_key_is_nil(backend, order, r):
    with nothing_written(r):
        assert backend.delete("order:404", 0) is None
        assert backend.delete("order:404", 3) is None


def test_del_with_a_stale_version_is_a_conflict_with_current_state(backend, pb, order, r):
    create(backend, pb)
    backend.cas("order:1", 1, order(2), by="x")
    current = backend.get("order:1")
    with nothing_written(r):
        assert backend.delete("order:1", 1) == current
        assert backend.delete("order:1", 3) == current
        assert backend.delete("order:1", 0) == current


def test_deleted_context_can_be_created_again_from_version_0(backend, pb, order):
    create(backend, pb)
    assert backend.delete("order:1", 1) == 1
    assert backend.cas("order:1", 1, order(2)) is None
    assert backend.cas("order:1", 0, order(1), schema="order") == 1


# --------------------------------------------------------------------------- CTXTOOBIG

SMALL = 256


@pytest.fixture(scope="module")
def small_server(engine, module_servers, module_so):
    return start_engine_server(module_servers, engine, {"max-payload-bytes": SMALL})


@pytest.fixture
def small(engine, small_server, pb):
    small_server.r.flushall()
    b = make_backend(engine, small_server)
    pb.register(b, "order")
    yield b
    small_server.assert_alive()


def sized_order(pb, version: int, size: int) -> bytes:
    for n in range(size):
        p = pb.order(version, order_id="x" * n)
        if len(p) == size:
            return p
    raise AssertionError(f"cannot build an order of {size} bytes")


def test_payload_over_max_payload_bytes_is_toobig(small, pb):
    r = small.r
    with nothing_written(r):
        assert_error("CTXTOOBIG", small.cas, "order:1", 0, sized_order(pb, 1, SMALL + 1),
                     schema="order")
    assert small.cas("order:1", 0, sized_order(pb, 1, SMALL), schema="order") == 1
    state = key_state(r, "order:1")
    assert_error("CTXTOOBIG", small.cas, "order:1", 1, sized_order(pb, 2, SMALL + 1))
    assert_error("CTXTOOBIG", small.cas, "order:1", 1, b"\x00" * (1 << 20))
    assert key_state(r, "order:1") == state


def test_size_is_checked_before_validation(small, pb):
    with nothing_written(small.r):
        assert_error("CTXTOOBIG", small.cas, "order:1", 0, b"\xff" * (SMALL + 1), schema="order")


def test_schema_and_conflicts_are_checked_before_size(small, pb):
    big = b"\xff" * (SMALL + 1)
    r = small.r
    with nothing_written(r):
        assert_error("CTXSCHEMA", small.cas, "order:1", 0, big)
        assert_error("CTXSCHEMA", small.cas, "order:1", 0, big, schema="nosuch")
        assert small.cas("order:1", 4, big) is None
    small.cas("order:1", 0, pb.order(1), schema="order")
    current = small.get("order:1")
    with nothing_written(r):
        assert small.cas("order:1", 0, big) == current
        assert_error("CTXSCHEMA", small.cas, "order:1", 1, big, schema="other")


def test_default_max_payload_bytes_is_1_mib(backend, order, r):
    with nothing_written(r):
        assert_error("CTXTOOBIG", backend.cas, "order:1", 0, b"\x00" * (1048576 + 1),
                     schema="order")
    # exactly 1 MiB is not over the limit: it reaches validation (and is accepted here)
    payload = order(1, order_id="x" * (1048576 - 2 - 1 - 3))
    assert len(payload) == 1048576
    assert backend.cas("order:1", 0, payload, schema="order") == 1


# --------------------------------------------------------------------------- writes count as changes


def test_successful_writes_mark_the_dataset_dirty(backend, pb, order, r):
    from helpers import dirty
    d0 = dirty(r)
    backend.cas("order:1", 0, order(1), schema="order")
    d1 = dirty(r)
    assert d1 > d0
    backend.cas("order:1", 1, order(2))
    d2 = dirty(r)
    assert d2 > d1
    backend.delete("order:1", 2)
    assert dirty(r) > d2


def _keyspace_events(backend, r, action) -> list[tuple[bytes, bytes]]:
    """(key, event) pairs fired while ``action`` runs."""
    r.config_set("notify-keyspace-events", "KA")
    sub = backend.server.client()
    p = sub.pubsub()
    try:
        p.psubscribe("__keyspace@0__:*")
        for _ in range(50):
            m = p.get_message(timeout=0.2)
            if m is not None and m["type"] == "psubscribe":
                break
        else:
            raise AssertionError("PSUBSCRIBE was not confirmed")
        action()
        r.set("__marker__", 1)
        events = []
        while True:
            m = p.get_message(timeout=5.0)
            assert m is not None, f"keyspace marker not seen, events so far: {events}"
            if m["type"] != "pmessage":
                continue
            key = m["channel"].split(b":", 1)[1]
            if key == b"__marker__":
                return events
            events.append((key, m["data"]))
    finally:
        r.config_set("notify-keyspace-events", "")
        p.close()
        sub.close()


def test_successful_writes_fire_the_set_and_del_keyspace_events(backend, pb, order, r):
    def ops():
        backend.cas("order:1", 0, order(1), schema="order")
        backend.cas("order:1", 1, order(2))
        backend.delete("order:1", 2)
    assert _keyspace_events(backend, r, ops) == [
        (b"order:1", b"set"), (b"order:1", b"set"), (b"order:1", b"del")]


def test_rejected_and_conflicting_writes_fire_no_keyspace_event(backend, pb, order, r):
    create(backend, pb)

    def ops():
        backend.cas("order:1", 0, order(1), schema="order")
        backend.cas("order:2", 4, order(5))
        backend.delete("order:1", 9)
        backend.delete("order:2", 1)
        backend.get("order:1")
        for args in [("order:1", 1, f_str(1, "x")), ("order:1", 1, order(5)),
                     ("order:3", 0, order(1))]:
            try:
                backend.cas(*args)
            except Exception:
                pass
    assert _keyspace_events(backend, r, ops) == []


def test_write_commands_are_refused_when_out_of_memory(backend, pb, order, r):
    """CTX.CAS, CTX.DEL and CTX.SCHEMA.SET are deny-oom; reads still work."""
    create(backend, pb)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        assert_error("OOM", backend.cas, "order:1", 1, order(2))
        assert_error("OOM", backend.cas, "order:2", 0, order(1), schema="order")
        assert_error("OOM", backend.delete, "order:1", 1)
        assert_error("OOM", backend.schema_set, "x", "ctxlink.example.Order", pb.fds("order"))
        assert backend.get("order:1")[0] == 1
        assert backend.schema_list() == [b"order"]
    finally:
        r.config_set("maxmemory", 0)
    assert backend.cas("order:1", 1, order(2)) == 2
