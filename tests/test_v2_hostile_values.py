"""Hand-made values planted with SET / HSET (docs/PROTOCOL.md, "Storage format", the type rule):
strings that start with ``CTX\\x03`` or ``CTX\\x02`` and lie about their lengths, windows longer
than the history, versions at the ends of the range, v3 clocks beyond the version, floors of 0 or
above the version, the whole-context bit in cmask, all-zero incarnations, digests of a write id at
and between record starts, v1 hashes with odd fields. Every CTX.* command on them must leave the
server alive, reply with a documented code, and leave the value byte-identical unless it wrote; a
write must produce exactly the value the contract describes (a v3 value, whatever it replaced). Both engines against one Python model (tests/ctxvalue.py), so they agree."""

from __future__ import annotations

import random
import struct

import pytest
import redis

import ctxlink
import ctxvalue
from backends import make_backend, start_engine_server
from helpers import (NO_COMMAND_LINE, assert_error, conflict_state, context_hash, dirty,
                     raw_replies)
from servers import error_text
from wire import f_str, f_varint, long_varint, tag

CODES = ("ERR", "WRONGTYPE", "CTXSCHEMA", "CTXINVALID", "CTXVERSION", "CTXTOOBIG", "CTXFIELD")
WID = b"w"  # the write id whose digest the planted windows hold
VF = 2      # Order's version field (int64)
LUA_EXACT = 2**53


@pytest.fixture
def order(pb, backend):
    assert pb.register(backend, "order") == 1
    return pb.order


# --------------------------------------------------------------------------- the model

def model(raw: bytes) -> ctxvalue.Value | None:
    try:
        return ctxvalue.decode(raw)
    except ValueError:
        return None


def replayed(v: ctxvalue.Value, wid: bytes) -> int | None:
    d = ctxvalue.id_digest(wid)
    if d == b"\0" * 8:
        return None
    for i, rec in enumerate(v.window):
        if rec.digest == d:
            return v.version - i
    return None


def changed(v: ctxvalue.Value, base: int, fields: list[int], reads: list[int]) -> list[int]:
    u = sorted(set(fields) | set(reads))
    if base == v.version:
        return []
    if base > v.version:
        return u
    if v.format == 3:  # the clock rule
        return u if v.floor > base else [f for f in u if v.clock(f) > base]
    if base < v.oldest_known - 1:  # v2: the window-mask rule
        return u
    mask = 0
    for rec in v.window[:v.version - base]:
        mask |= rec.mask
    if mask & ctxvalue.WHOLE:
        return u
    return [f for f in u if mask & ctxvalue.field_bit(f)]


def _varint(b: bytes, pos: int) -> int | None:
    """read_varint of module/core/ctx_value.c: the position after it, or None."""
    for i in range(10):
        if pos >= len(b):
            return None
        c = b[pos]
        pos += 1
        if not c & 0x80:
            return pos
    return None


def _value_of(b: bytes, pos: int) -> tuple[int, int] | None:
    """(tag value, position after) of the varint at pos, bits above 63 dropped."""
    v = 0
    for i in range(10):
        if pos >= len(b):
            return None
        c = b[pos]
        pos += 1
        v |= (c & 0x7F) << (7 * i)
        if not c & 0x80:
            return v & (2**64 - 1), pos
    return None


def _skip(b: bytes, pos: int, num: int, wt: int, depth: int) -> int | None:
    if wt == 0:
        return _varint(b, pos)
    if wt in (1, 5):
        unit = 8 if wt == 1 else 4
        return pos + unit if len(b) - pos >= unit else None
    if wt == 2:
        r = _value_of(b, pos)
        if r is None or r[0] > len(b) - r[1]:
            return None
        return r[1] + r[0]
    if wt == 3:
        if depth >= 100:
            return None
        while True:
            t = _tag(b, pos)
            if t is None:
                return None
            n, w, pos = t
            if w == 4:
                return pos if n == num else None
            pos = _skip(b, pos, n, w, depth + 1)
            if pos is None:
                return None
    return None


def _tag(b: bytes, pos: int):
    r = _value_of(b, pos)
    if r is None or r[0] >> 32 or r[0] >> 3 < 1:
        return None
    return r[0] >> 3, r[0] & 7, r[1]


def top_fields(b: bytes) -> list[tuple[int, bytes]] | None:
    out, pos = [], 0
    while pos < len(b):
        t = _tag(b, pos)
        if t is None or t[1] == 4:
            return None
        end = _skip(b, t[2], t[0], t[1], 0)
        if end is None:
            return None
        out.append((t[0], b[pos:end]))
        pos = end
    return out


def splice(cur: bytes, patch: bytes, fields: list[int], version: int) -> bytes | None:
    kept = top_fields(cur)
    if kept is None:
        return None
    return (b"".join(raw for num, raw in kept if num not in fields and num != VF) + patch
            + f_varint(VF, version))


def after_patch(v: ctxvalue.Value, wid: bytes, field: int) -> tuple:
    """(floor, clocks, window) of the v3 value a patch of ``field`` on ``v`` stores."""
    window = (ctxvalue.Record(ctxvalue.id_digest(wid)),) + tuple(
        ctxvalue.Record(rec.digest) for rec in v.window[:15])
    bit = (field - 1) % ctxvalue.FIELD_BITS
    if v.format == 2:
        return v.version, {bit: 1}, window
    clocks = dict(v.clocks)
    delta = v.version + 1 - v.floor
    if delta > ctxvalue.DELTA_MAX:
        return v.version + 1, {}, window
    clocks[bit] = delta
    return v.floor, clocks, window


def state(v: ctxvalue.Value) -> list:
    """CTX.GET's reply for ``v``."""
    return [v.version, v.payload, v.schema, v.updated_ms, v.updated_by, v.inc_hex.encode()]


# --------------------------------------------------------------------------- hostile values

def hostile_v2(rng: random.Random) -> bytes:
    sane = rng.random() < 0.5  # half of them honest headers, so writes get through too
    n = rng.randrange(17) if sane else rng.choice([0, 1, 2, 3, 15, 16, 16, 17, 40, 255])
    version = rng.choice([n, n + 1, n + 5, LUA_EXACT - 1]) if sane else rng.choice(
        [0, 1, 2, 3, 5, 15, 16, 17, 40, LUA_EXACT - 1, LUA_EXACT, 2**62, 2**63, 2**64 - 1])
    version = max(version, 1) if sane else version
    schema = b"order" if sane else rng.choice([b"order", b"order", b"", b"x" * 128, b"x" * 129,
                                               b"nope", b"bad name!"])
    by = rng.choice([b"", b"agent", b"\0\xff" * 3])
    rest = rng.choice([
        f_str(1, "o") + f_varint(VF, version % 2**63) + f_varint(4, 7),
        f_varint(5, 1) + f_varint(4, 2) + f_varint(5, 3),            # a field twice
        tag(10, 3) + f_varint(1, 1) + tag(10, 4),                     # a group at the top
        tag(10, 3) + f_varint(1, 1),                                  # an unclosed group
        tag(4, 0) + long_varint(1, 10)[:-1] + b"\x81" + f_varint(5, 1),
        b"\x20",                                                      # truncated varint
        bytes(rng.randrange(256) for _ in range(rng.randrange(12))),
        b"",
    ])
    recs = b""
    for i in range(min(n, 20)):
        digest = ctxvalue.id_digest(WID) if rng.random() < 0.15 else (
            b"\0" * 8 if rng.random() < 0.3 else rng.randbytes(8))
        mask = rng.choice([0, ctxvalue.WHOLE, ctxvalue.field_bit(4), ctxvalue.field_bit(5),
                           ctxvalue.field_bit(1) | ctxvalue.field_bit(8), rng.getrandbits(32)])
        recs += digest + struct.pack("<I", mask)
    if recs and rng.random() < 0.3:  # the digest between record starts: never a match
        at = rng.randrange(1, max(2, len(recs) - 8))
        if at % 12:
            recs = recs[:at] + ctxvalue.id_digest(WID) + recs[at + 8:]
    b_field = len(by) if sane or rng.random() < 0.7 else rng.choice([len(by) + 1, 65535])
    raw = (b"CTX\x02" + struct.pack("<QQBBH", version, rng.getrandbits(52), n, len(schema) % 256,
                                    b_field) + recs + schema + by + rest)
    if not sane and rng.random() < 0.3:
        raw = raw[:rng.randrange(4, len(raw) + 1)]
    return raw


def hostile_v3(rng: random.Random) -> bytes:
    sane = rng.random() < 0.5
    n = rng.randrange(17) if sane else rng.choice([0, 1, 2, 3, 15, 16, 16, 17, 40, 255])
    version = rng.choice([n, n + 1, n + 5, 2**32 + 9, LUA_EXACT - 1]) if sane else rng.choice(
        [0, 1, 2, 3, 5, 15, 16, 17, 40, LUA_EXACT - 1, LUA_EXACT, 2**62, 2**63, 2**64 - 1])
    version = max(version, 1) if sane else version
    if sane:
        floor = rng.choice([1, version, rng.randint(1, max(1, version)), max(1, version - 3)])
        room = min(version - floor, ctxvalue.DELTA_MAX)
        bits = rng.sample(range(31), rng.randrange(4)) if room else []
        deltas = {b: rng.randint(1, room) for b in bits}
        cmask = sum(1 << b for b in bits)
        inc = rng.randbytes(7) + b"\x01"
    else:
        floor = rng.choice([0, 1, version, version + 1, 2**64 - 1, rng.getrandbits(64)])
        bits = rng.sample(range(32), rng.randrange(5))
        deltas = {b: rng.choice([0, 1, 2, 2**32 - 1, max(0, min(version - floor + 1, 2**32 - 1)),
                                 rng.getrandbits(32)]) for b in bits}
        cmask = sum(1 << b for b in bits)
        inc = rng.choice([bytes(8), rng.randbytes(8), b"\0" * 7 + b"\1"])
    schema = b"order" if sane else rng.choice([b"order", b"order", b"", b"x" * 128, b"x" * 129,
                                               b"nope", b"bad name!"])
    by = rng.choice([b"", b"agent", b"\0\xff" * 3])
    rest = rng.choice([
        f_str(1, "o") + f_varint(VF, version % 2**63) + f_varint(4, 7),
        f_varint(5, 1) + f_varint(4, 2) + f_varint(5, 3),
        tag(10, 3) + f_varint(1, 1) + tag(10, 4),
        b"\x20",
        bytes(rng.randrange(256) for _ in range(rng.randrange(12))),
        b"",
    ])
    recs = b""
    for _ in range(min(n, 20)):
        recs += ctxvalue.id_digest(WID) if rng.random() < 0.15 else (
            b"\0" * 8 if rng.random() < 0.3 else rng.randbytes(8))
    if recs and rng.random() < 0.3:  # the digest between record starts: never a match
        at = rng.randrange(1, max(2, len(recs) - 8))
        if at % 8:
            recs = recs[:at] + ctxvalue.id_digest(WID) + recs[at + 8:]
    k_lie = 0 if sane or rng.random() < 0.6 else rng.choice([-1, 1])
    dbytes = b"".join(struct.pack("<I", deltas[b]) for b in sorted(deltas))
    if k_lie < 0:
        dbytes = dbytes[:-4]
    elif k_lie > 0:
        dbytes += struct.pack("<I", 1)
    b_field = len(by) if sane or rng.random() < 0.7 else rng.choice([len(by) + 1, 65535])
    raw = (b"CTX\x03" + struct.pack("<QQ8sQIBBH", version, rng.getrandbits(52), inc,
                                    floor % 2**64, cmask, n, len(schema) % 256, b_field)
           + dbytes + recs + schema + by + rest)
    if not sane and rng.random() < 0.3:
        raw = raw[:rng.randrange(4, len(raw) + 1)]
    return raw


def plant(r: redis.Redis, key: str, raw: bytes) -> None:
    r.delete(key)
    r.set(key, raw)


def assert_reply_ok(reply) -> None:
    if isinstance(reply, ctxlink.ArgumentError):  # see call()
        assert "on the Lua engine" in str(reply), reply
    elif isinstance(reply, redis.ResponseError):
        code = error_text(reply).split(" ", 1)[0]
        assert code in CODES, error_text(reply)


def call(fn, *args, **kwargs):
    """The reply, or the error reply; also the SDK's ArgumentError for a version beyond the Lua
    engine's documented 2^53 - 2 limit, refused before sending."""
    try:
        return fn(*args, **kwargs)
    except (redis.ResponseError, ctxlink.ArgumentError) as e:
        return e


def exact(engine: str, v: ctxvalue.Value) -> bool:
    return engine == "module" or v.version < LUA_EXACT


def check_untouched(r, key, before, d0, what):
    assert r.get(key) == before, f"{what} changed the value"
    assert dirty(r) == d0, f"{what} counted a write"


# --------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("fmt", [2, 3])
def test_hostile_strings_get_documented_replies_and_stay_byte_identical(backend, order, r, fmt):
    rng = random.Random(20261130 + fmt)
    engine = backend.engine
    make = hostile_v3 if fmt == 3 else hostile_v2
    seen = dict.fromkeys(("wrongtype", "replayed", "conflict", "patched", "refused"), 0)
    for round_ in range(400):
        raw = make(rng)
        key = f"h:{round_}"
        plant(r, key, raw)
        v = model(raw)
        d0 = dirty(r)

        # CTX.GET
        got = call(backend.get, key)
        if v is None:
            assert isinstance(got, redis.ResponseError) and \
                error_text(got).startswith("WRONGTYPE"), (raw, got)
        elif exact(engine, v):
            assert got == state(v), raw
        check_untouched(r, key, raw, d0, "CTX.GET")

        # CTXGONE (module command line): a wrong INC with a base >= 1, before replay
        if raw_replies(backend):
            got = call(backend.command, "CTX.CAS", key, 1, order(2), "INC", "77" * 8, "ID", WID)
            code = "WRONGTYPE" if v is None else "CTXGONE"
            assert error_text(got).startswith(code + " "), (raw, got)
            check_untouched(r, key, raw, d0, "CTX.CAS INC")

        # CTX.CAS with the planted id (replay) and a stale version (conflict)
        expected = (v.version - 1) if v else 1
        got = call(backend.cas, key, max(expected, 0), order(max(expected, 0) + 1), write_id=WID)
        assert_reply_ok(got)
        if v is None:
            assert error_text(got).startswith("WRONGTYPE"), (raw, got)
        elif exact(engine, v):
            rv = replayed(v, WID)
            if rv is not None:
                assert got == [b"replayed", rv], raw
            elif v.version > 1:
                assert conflict_state(got) == state(v), raw
                if raw_replies(backend):  # the tail the SDK keeps (helpers.conflict_state)
                    assert got[5:] == [v.oldest_known, [], v.inc_hex.encode()], raw
        if not (isinstance(got, int) and not isinstance(got, bool)):
            check_untouched(r, key, raw, d0, "CTX.CAS")
        plant(r, key, raw)
        d0 = dirty(r)

        # CTX.DEL with a wrong version
        wrong = 0 if v is None or not exact(engine, v) else (
            v.version - 1 if v.version > 1 else 2)
        got = call(backend.delete, key, wrong, write_id="d")
        assert_reply_ok(got)
        if v is None:
            assert error_text(got).startswith("WRONGTYPE"), (raw, got)
        elif exact(engine, v):
            assert conflict_state(got) == state(v), raw
            if raw_replies(backend):
                assert got[5:] == [v.oldest_known, [], v.inc_hex.encode()], raw
        check_untouched(r, key, raw, d0, "CTX.DEL")

        # CTX.PATCH: field 4, reading 5, from a base in and around the window
        if v is not None and not exact(engine, v):
            continue
        base = 0 if v is None else max(0, min(v.version + rng.choice([-17, -16, -3, -1, 0, 0, 1]),
                                              2**63 - 2, LUA_EXACT - 2))
        wid = rng.choice([WID, b"p"])
        patch = rng.choice([f_varint(4, 9), b"", f_varint(4, 1) + f_varint(4, 2)])
        got = call(backend.patch, key, base, patch, [4], reads=[5], write_id=wid)
        assert_reply_ok(got)
        if v is None:
            assert error_text(got).startswith("WRONGTYPE"), (raw, got)
            check_untouched(r, key, raw, d0, "CTX.PATCH")
            seen["wrongtype"] += 1
            continue
        rv = replayed(v, wid)
        ch = changed(v, base, [4], [5])
        if rv is not None:
            assert got == [b"replayed", rv], raw
            seen["replayed"] += 1
        elif ch:
            seen["conflict"] += 1
            assert got == [*state(v)[:5], v.oldest_known, ch, v.inc_hex.encode()], (raw, base)
        elif isinstance(got, list) and isinstance(got[0], int):
            # success: exactly the contract's value
            merged = splice(v.payload, patch, [4], v.version + 1)
            assert got == [v.version + 1, merged], (raw, base, got)
            new = ctxvalue.decode(r.get(key))
            assert (new.format, new.version, new.schema, new.updated_by, new.payload) == \
                (3, v.version + 1, v.schema, b"", merged)
            assert (new.floor, new.clocks, new.window) == after_patch(v, wid, 4), raw
            if v.format == 3:
                assert new.incarnation == v.incarnation
            else:
                assert new.incarnation != bytes(8)
            seen["patched"] += 1
            continue
        else:
            assert isinstance(got, redis.ResponseError), (raw, got)
            seen["refused"] += 1
            if splice(v.payload, patch, [4], v.version + 1) is None:
                assert error_text(got).split()[0] in ("CTXINVALID", "CTXSCHEMA"), got
        check_untouched(r, key, raw, d0, "CTX.PATCH")
    assert min(seen.values()) >= 5, seen  # the generator reaches every outcome


@pytest.mark.parametrize("encode", [ctxvalue.encode, ctxvalue.encode_v2], ids=["v3", "v2"])
def test_a_window_longer_than_the_history_is_not_a_context(backend, order, r, encode):
    # version 1 with 16 records: version - i and version - n + 1 would leave 1 .. version
    d = ctxvalue.id_digest(WID)
    raw = encode(1, 0, [(b"\1" * 8, 0), (d, 0)] + [(b"\0" * 8, 0)] * 14, b"order", b"",
                          f_varint(VF, 1))
    r.set("k", raw)
    assert_error("WRONGTYPE", backend.get, "k")
    assert_error("WRONGTYPE", backend.cas, "k", 0, order(1), write_id=WID)
    assert_error("WRONGTYPE", backend.patch, "k", 0, f_varint(4, 1), [4], write_id=WID)
    assert_error("WRONGTYPE", backend.delete, "k", 1)
    assert r.get("k") == raw
    # n == version is a context (a create, then n - 1 more writes)
    r.set("k", encode(2, 0, [(b"\1" * 8, 0), (d, 0)], b"order", b"", f_varint(VF, 2)))
    assert backend.cas("k", 0, order(1), write_id=WID) == [b"replayed", 1]


@pytest.mark.parametrize("encode", [ctxvalue.encode, ctxvalue.encode_v2], ids=["v3", "v2"])
@pytest.mark.parametrize("version", [2**63, 2**64 - 1])
def test_a_version_beyond_the_signed_64_bit_range_is_not_a_context(backend, order, r, version,
                                                                   encode):
    r.set("k", encode(version, 0, [(b"\0" * 8, 0)], b"order", b"", b""))
    assert_error("WRONGTYPE", backend.get, "k")
    assert_error("WRONGTYPE", backend.cas, "k", 0, order(1))


def test_a_tenth_varint_byte_with_its_continuation_bit_is_malformed_in_the_splice(
        backend, order, r):
    assert backend.cas("k", 0, order(1, order_id="o"), schema="order") == 1
    before = r.get("k")
    # field 4 with 10 varint bytes, the 10th 0x81, then field 5 (not in FIELDS): the module's
    # splice stops at the varint (CTXINVALID); read as ending there, field 5 would be CTXFIELD
    bad = tag(4, 0) + b"\xff" * 9 + b"\x81" + f_varint(5, 1)
    text = assert_error("CTXINVALID", backend.patch, "k", 1, bad, [4])
    assert text == "CTXINVALID payload is not valid protobuf wire format"
    assert r.get("k") == before


def test_a_v1_hash_with_an_empty_schema_field_has_no_schema(backend, order, r):
    r.hset("k", mapping=context_hash(b"", 3, "", 5))
    text = assert_error("CTXSCHEMA", backend.patch, "k", 3, f_varint(4, 1), [4])
    assert text == "CTXSCHEMA the context has no schema field"
    text = assert_error("CTXSCHEMA", backend.cas, "k", 3, order(4))
    assert text == "CTXSCHEMA the context has no schema field"
    assert r.type("k") == b"hash"


V1_HASHES = [
    ({b"version": b"3", b"raw": b"", b"schema": b"order"}, 3),               # no updated_ms
    ({b"version": b"3", b"schema": b"order", b"updated_ms": b"x", b"extra": b"1"}, 3),
    ({b"version": b"007", b"schema": b"order"}, None),
    ({b"version": b"+5", b"schema": b"order"}, None),
    ({b"version": b" 5", b"schema": b"order"}, None),
    ({b"version": b"5.0", b"schema": b"order"}, None),
    ({b"version": b"0", b"schema": b"order"}, None),
    ({b"version": b"-1", b"schema": b"order"}, None),
    ({b"raw": b"", b"schema": b"order"}, None),
]


@pytest.mark.module_only(reason="Lua numbers are doubles: 2^63 - 1 reads as 2^63 there")
def test_a_context_at_the_largest_version_conflicts_or_refuses_the_next(backend, order, r):
    top = 2**63 - 1
    raw = ctxvalue.encode(top, 7, [b"\1" * 8], b"order", b"", f_varint(VF, top),
                          floor=top - 1, clocks={7: 1})  # the last write: a patch of field 8
    r.set("k", raw)
    assert backend.get("k")[0] == top
    assert backend.cas("k", top - 1, order(1), write_id="i") == \
        [top, f_varint(VF, top), b"order", 7, b"", top, [], b"01" * 8]
    assert assert_error("CTXVERSION", backend.patch, "k", top - 1, f_varint(4, 1), [4]) == \
        "CTXVERSION version 9223372036854775808 does not fit the version field"
    assert r.get("k") == raw


@pytest.mark.engine_texts_differ("versions past 2^53: a documented Lua-only limit")
def test_a_stale_patch_on_a_context_at_2_53_never_writes_the_same_version_twice(
        backend, order, r):
    # CAS cannot get past 2^53 - 1 on the Lua engine, a patch from a stale base can: there
    # 2^53 + 1 rounds to 2^53, so the Lua engine refuses instead of storing the version again
    rec = (b"\1" * 8, ctxvalue.field_bit(8))
    raw = ctxvalue.encode(2**53, 7, [rec, rec, rec], b"order", b"", f_varint(VF, 2**53),
                          floor=2**53 - 2, clocks={7: 2})  # two patches of field 8
    r.set("k", raw)
    if backend.engine == "lua":
        assert_error("CTXVERSION", backend.patch, "k", 2**53 - 2, f_varint(4, 1), [4])
        assert r.get("k") == raw
    else:
        assert backend.patch("k", 2**53 - 2, f_varint(4, 1), [4]) == \
            [2**53 + 1, f_varint(4, 1) + f_varint(VF, 2**53 + 1)]


@pytest.mark.parametrize("fields,version", V1_HASHES)
def test_v1_hashes_follow_the_type_rule_and_convert_on_write(backend, order, r, fields, version):
    r.hset("k", mapping=fields)
    r.pexpire("k", 100000)
    if version is None:
        assert_error("WRONGTYPE", backend.get, "k")
        assert_error("WRONGTYPE", backend.patch, "k", 3, f_varint(4, 1), [4])
        assert r.hgetall("k") == fields
        return
    assert backend.get("k") == [version, fields.get(b"raw", b""), b"order", 0, b"", b""]
    assert backend.patch("k", version, f_varint(4, 1), [4], write_id="x") == \
        [version + 1, f_varint(4, 1) + f_varint(VF, version + 1)]
    new = ctxvalue.decode(r.get("k"))
    assert (new.version, new.floor, new.clocks) == (version + 1, version, {3: 1})
    assert 0 < r.pttl("k") <= 100000


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_an_option_keyword_with_a_nul_byte_is_a_syntax_error(backend, order, r):
    b = backend
    assert assert_error("ERR", b.command, "CTX.CAS", "k", "0", order(1), "ID\0x", "i") == \
        "ERR syntax error"
    assert assert_error("ERR", b.command, "CTX.PATCH", "k", "0", b"", "FIELDS\0", "1", "4") == \
        "ERR syntax error"
    assert assert_error("ERR", b.command, "CTX.DEL", "k", "0", "id\0", "i") == "ERR syntax error"
    assert r.exists("k") == 0


def test_a_merged_payload_over_the_limit_is_ctxtoobig(backend, order, r):
    # the limit: the module's argument, ctxlink.connect(max_payload_bytes=...) on the Lua engine;
    # both default to 1 MiB
    assert backend.cas("k", 0, order(1, order_id="o" * 1000), schema="order") == 1
    before = r.get("k")
    big = f_str(8, "x" * (1048576 - 500))
    text = assert_error("CTXTOOBIG", backend.patch, "k", 1, big, [8])
    assert text.startswith("CTXTOOBIG payload is ") and text.endswith("the limit is 1048576")
    assert r.get("k") == before


@pytest.mark.skipif(not __import__("os").environ.get("CTX_BIG_TESTS"),
                    reason="sends a 512 MiB payload (about 2 GB of server memory); CTX_BIG_TESTS=1")
def test_a_value_over_redis_512_mib_string_limit_is_ctxtoobig_not_a_crash(servers, pb):
    # max-payload-bytes may be 512 MiB, Redis strings (RM_StringTruncate) may not exceed it:
    # payload + header + BY over 512 MiB must be refused before the key is touched.
    limit = 512 << 20
    p = start_engine_server(servers, "module", limits={"max-payload-bytes": limit})
    b = make_backend("module", p)
    pb.register(b, "order")
    assert b.cas("k", 0, pb.order(1), schema="order") == 1
    before = p.r.get("k")
    body = f_varint(VF, 2)
    big = f_str(1, "x" * (limit - len(body) - 6)) + body
    assert len(big) <= limit
    text = assert_error("CTXTOOBIG", b.cas, "k", 1, big, by="b" * 65535)
    assert "512" in text, text
    assert p.r.get("k") == before
    assert p.r.ping()


# v3 values each break one rule of the type rule (docs/PROTOCOL.md): WRONGTYPE everywhere
def _v3(**kw) -> bytes:
    base = dict(version=5, updated_ms=0, window=[b"\1" * 8], schema=b"order", updated_by=b"",
                payload=f_varint(VF, 5), incarnation=b"\1" * 8, floor=2, clocks={3: 3})
    base.update(kw)
    return ctxvalue.encode(base.pop("version"), base.pop("updated_ms"), base.pop("window"),
                           base.pop("schema"), base.pop("updated_by"), base.pop("payload"),
                           **base)


GOOD_V3 = _v3()
BAD_V3 = {
    "floor-0": _v3(floor=0),
    "floor-above-version": _v3(floor=6, clocks={}),
    "delta-0": _v3(clocks={3: 0}),
    "delta-beyond-version": _v3(clocks={3: 4}),
    "delta-max": _v3(clocks={3: 2**32 - 1}),
    "cmask-bit-31": _v3(clocks={31: 1}),
    "zero-incarnation": _v3(incarnation=bytes(8)),
    "k-lies-short": GOOD_V3[:44],
    "window-lies": GOOD_V3[:40] + bytes([3]) + GOOD_V3[41:],
    "by-lies": GOOD_V3[:42] + b"\xff\xff" + GOOD_V3[44:],
    "schema-129": _v3(schema=b"x" * 129),
    "header-only-39": GOOD_V3[:39],
    "window-beyond-version": _v3(version=1, floor=1, clocks={}, window=[b"\1" * 8] * 2),
    "version-2^63": _v3(version=2**63),
    "magic-04": b"CTX\x04" + GOOD_V3[4:],
}


@pytest.mark.parametrize("name", sorted(BAD_V3))
def test_a_v3_value_breaking_one_rule_is_wrongtype_and_untouched(backend, order, r, name):
    raw = BAD_V3[name]
    with pytest.raises(ValueError):
        ctxvalue.decode(raw)
    r.set("k", raw)
    d0 = dirty(r)
    assert_error("WRONGTYPE", backend.get, "k")
    assert_error("WRONGTYPE", backend.cas, "k", 5, order(6), write_id=WID)
    assert_error("WRONGTYPE", backend.patch, "k", 4, f_varint(4, 1), [4], write_id="p")
    assert_error("WRONGTYPE", backend.delete, "k", 5)
    if raw_replies(backend):  # module-only commands (not compared with the Lua run's texts)
        for args in (["CTX.TOUCH", "k", 1000], ["CTX.CAS", "k", 5, order(6), "INC", "11" * 8]):
            got = call(backend.command, *args)
            assert error_text(got).startswith("WRONGTYPE "), got
    check_untouched(r, "k", raw, d0, name)
    # the same value with that one rule kept is a context
    r.set("good", GOOD_V3)
    assert backend.get("good") == [5, f_varint(VF, 5), b"order", 0, b"", b"01" * 8]
