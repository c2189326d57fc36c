"""Randomized robustness (seeded, bounded): random bytes and mutations of valid Order payloads
thrown at CTX.CAS. Every reply must be a documented one, the server must keep answering, a
rejected write must leave the stored state untouched, and the verdict must agree with the
Python protobuf parser (upb) used as an oracle for the example schema."""

from __future__ import annotations

import random
import time

import redis
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

import ctxvalue
from helpers import batch_cas, error_text

SEED = 20251125
N_PAYLOADS = 3000
BATCH = 250
TIME_BUDGET = 30.0
CODES = ("CTXINVALID", "CTXVERSION", "CTXTOOBIG")

WORDS = ["o-1", "", "sku", "é", "€", "😀", "pricing", "a" * 40, "\u0000", "ß" * 3]


def random_order(pb, rng: random.Random, version: int) -> bytes:
    m = pb.Order(version=version)
    if rng.random() < 0.8:
        m.order_id = rng.choice(WORDS)
    if rng.random() < 0.5:
        m.status = rng.randrange(0, 8)
    for field in ("base_price", "discount", "final_price", "last_updated_epoch"):
        if rng.random() < 0.4:
            m.__setattr__(field, rng.choice([0, 1, -1, 127, 128, 2**31, -2**63, 2**63 - 1,
                                             rng.randrange(-2**40, 2**40)]))
    if rng.random() < 0.3:
        m.inventory_reserved = True
    if rng.random() < 0.4:
        m.last_updated_by = rng.choice(WORDS)
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        m.items.add(sku=rng.choice(WORDS), quantity=rng.randrange(0, 2**32))
    return m.SerializeToString()


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(11)
    if op == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:  # splice
        b = b[:rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]
    elif op == 3:  # insert random bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif op == 4 and b:  # delete a range
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 4)]
    elif op == 5 and b:  # duplicate a segment
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 8))
        b[j:j] = b[i:j]
    elif op == 6:  # varint extension: same value, more (possibly too many) bytes
        ends = [i for i, x in enumerate(b) if x < 0x80]
        if ends:
            i = rng.choice(ends)
            k = rng.choice([1, 2, 5, 9, 10, 11])
            b[i:i + 1] = bytes([b[i] | 0x80]) + b"\x80" * (k - 1) + b"\x00"
    elif op == 7 and b:  # extreme byte
        b[rng.randrange(len(b))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
    elif op == 8:  # pure random bytes
        b = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    elif op == 9 and b:  # nudge a length / value byte
        i = rng.randrange(len(b))
        b[i] = (b[i] + rng.choice([-2, -1, 1, 2])) & 0xFF
    else:  # append a random field
        b += bytes([rng.randrange(1, 256)]) + bytes(rng.randrange(256) for _ in range(rng.randint(0, 3)))
    return bytes(b)


def has_unknown(msg) -> bool:
    if len(unknown_fields.UnknownFieldSet(msg)):
        return True
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            repeated = getattr(fd, "is_repeated", None)
            if repeated is None:  # protobuf < 5.29
                repeated = fd.label == fd.LABEL_REPEATED
            values = value if repeated else [value]
            if any(has_unknown(v) for v in values):
                return True
    return False


def _read_varint(data: bytes, i: int):
    """(value, next offset, overflows 64 bits) or None when malformed/truncated."""
    value = 0
    for k in range(10):
        if i + k >= len(data):
            return None
        b = data[i + k]
        value |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return value, i + k + 1, k == 9 and b > 1
    return None


def varint_overflows(data: bytes, nested=(10,)) -> bool:
    """True when a varint of the message (or of its ``items``) is 10 bytes long and carries bits
    past 64. The Python parser drops those bits; the module calls the varint malformed, as Go's
    protowire does ("bad varints" in the protocol). Used to align the oracle."""
    i = 0
    while i < len(data):
        r = _read_varint(data, i)
        if r is None:
            return False
        key, i, over = r
        if over:
            return True
        wt = key & 7
        if wt == 0:
            r = _read_varint(data, i)
            if r is None:
                return False
            _, i, over = r
            if over:
                return True
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            r = _read_varint(data, i)
            if r is None:
                return False
            length, i, over = r
            if over:
                return True
            if (key >> 3) in nested and varint_overflows(data[i:i + length], ()):
                return True
            i += length
        else:
            return False
    return False


def oracle(pb, payload: bytes, new_version: int) -> str:
    """'ok', 'version' or 'invalid' for the example schema with default module arguments."""
    try:
        msg = pb.Order.FromString(payload)
    except DecodeError:
        return "invalid"
    if varint_overflows(payload):
        return "invalid"
    if has_unknown(msg):  # also covers a known field with the wrong wire type
        return "invalid"
    return "ok" if msg.version == new_version else "version"


def test_random_payloads_get_documented_replies_and_leave_state_intact(backend, pb, r):
    rng = random.Random(SEED)
    pb.register(backend, "order")
    start = time.monotonic()
    disagreements = []
    seen = {"ok": 0, "CTXINVALID": 0, "CTXVERSION": 0, "CTXTOOBIG": 0}
    for batch_start in range(0, N_PAYLOADS, BATCH):
        create = (batch_start // BATCH) % 2 == 1
        keys = [f"fz:{batch_start + i}" for i in range(BATCH)]
        new_version = 1 if create else 2
        if not create:
            assert batch_cas(backend, r, [(k, 0, pb.order(1, order_id=k), {"schema": "order"})
                                          for k in keys]) == [1] * BATCH
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.dump(k)
        before = pipe.execute()

        payloads = []
        for _ in keys:
            base = random_order(pb, rng, new_version)
            other = random_order(pb, rng, rng.choice([new_version, new_version + 1]))
            p = base
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                p = mutate(rng, p, other)
            payloads.append(p)

        replies = batch_cas(backend, r, [
            (k, 0, p, {"schema": "order"}) if create else (k, 1, p, {})
            for k, p in zip(keys, payloads)])

        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.dump(k)
            pipe.get(k)
        after = pipe.execute()

        for i, (k, p, reply) in enumerate(zip(keys, payloads, replies)):
            dump_after, raw_after = after[2 * i], after[2 * i + 1]
            expected = oracle(pb, p, new_version)
            if isinstance(reply, redis.ResponseError):
                text = error_text(reply)
                code = text.split(" ", 1)[0]
                assert code in CODES, f"undocumented error {text!r} for payload {p.hex()}"
                seen[code] += 1
                assert dump_after == before[i], f"rejected ({text}) but state changed: {p.hex()}"
                verdict = {"CTXINVALID": "invalid", "CTXVERSION": "version"}.get(code, "toobig")
            elif isinstance(reply, int) and not isinstance(reply, bool):
                assert reply == new_version, f"reply {reply} for {p.hex()}"
                assert ctxvalue.decode(raw_after).payload == p
                seen["ok"] += 1
                verdict = "ok"
            else:
                raise AssertionError(f"unexpected reply {reply!r} (no conflict is possible here) "
                                     f"for payload {p.hex()}")
            if verdict != expected:
                disagreements.append((p.hex(), verdict, expected,
                                      error_text(reply) if verdict not in ("ok",) else ""))
        assert r.ping()
        r.delete(*keys)
        assert time.monotonic() - start < TIME_BUDGET, "fuzz run exceeded its time budget"

    assert not disagreements, (
        f"{len(disagreements)} verdicts differ from the protobuf oracle "
        f"(payload hex, module, oracle, message), first ones:\n"
        + "\n".join(map(str, disagreements[:15]))
    )
    print("fuzz outcomes:", seen)
    # the mix actually exercised both outcomes
    assert seen["ok"] > 50 and seen["CTXINVALID"] > 500, seen
