"""CTX.PATCH parity: a seeded corpus of patches gives the same replies and byte-identical stored
values (everything but updated_ms and the digests of writes without an id, which the SDK always
gives one) on the module (CTX.PATCH) and on the Lua engine (lua/cas.lua's patch mode, sent by the
SDK's own write path: tests/backends.py). Errors compare code and full text.

Each chain starts from a random current payload (order, kitchen and the version-type schemas
of tests/protos/versions.proto, fields in random order, some repeated), then applies random
patches: random FIELDS subsets (a listed field may be absent from the payload: it is removed),
random READS, bases that are current, stale or ahead, write ids fresh or re-sent, and some
broken inputs (a field outside FIELDS, the version field, a number that is not a field,
malformed wire data, invalid UTF-8).
"""

from __future__ import annotations

import collections
import random
from typing import Any, Callable

import pytest
import redis

from backends import make_backend, start_engine_server
from helpers import blanked
from servers import error_text
from wire import f_varint

SEED = 20261130
CHAINS = 72
STEPS = 7

SCHEMAS = {
    # name: (proto, message type, version field number)
    "order": ("order", "ctxlink.example.Order", 2),
    "kitchen": ("kitchen", "ctxlink.test.Kitchen", 1),
    "sint": ("versions", "ctxlink.test.v.Sint64Version", 1),
    "fixed": ("versions", "ctxlink.test.v.Fixed64Version", 1),
    "sfixed32": ("versions", "ctxlink.test.v.Sfixed32Version", 1),
    "uint32doc": ("versions", "ctxlink.test.v.Int32Version", 1),
}

TEXTS = ["", "a", "o-17", "é€", "中文😀", "x" * 40]


def _text(rng: random.Random) -> str:
    return rng.choice(TEXTS) + rng.choice(TEXTS)


def _int(rng: random.Random) -> int:
    return rng.choice([0, 1, 127, 128, 300, -1, -300, 1 << 40, (1 << 63) - 1])


def _fill(rng: random.Random, msg: Any, num: int, depth: int = 0) -> None:
    """Sets top-level field ``num`` of ``msg`` to a random (possibly default) value."""
    f = msg.DESCRIPTOR.fields_by_number[num]
    name = f.name
    full = msg.DESCRIPTOR.full_name
    if full == "ctxlink.example.Order":
        if num in (1, 8):
            setattr(msg, name, _text(rng))
        elif num == 3:
            msg.status = rng.choice([0, 1, 2, 5, 99])
        elif num == 7:
            msg.inventory_reserved = rng.random() < 0.5
        elif num == 10:
            for _ in range(rng.randint(0, 3)):
                msg.items.add(sku=_text(rng), quantity=rng.choice([0, 1, 7, 4294967295]))
        else:
            setattr(msg, name, _int(rng))
    elif full == "ctxlink.test.Kitchen":
        if num == 2:
            for _ in range(rng.randint(0, 3)):
                msg.counts[_text(rng)] = _int(rng)
        elif num == 3:
            msg.text = _text(rng)
        elif num == 4:
            msg.number = _int(rng)
        elif num in (5, 14) and depth < 2:
            child = msg.child if num == 5 else msg.many.add()
            child.SetInParent()
            for sub in rng.sample(range(2, 15), 3):
                _fill(rng, child, sub, depth + 1)
        elif num in (6, 7):
            getattr(msg, name).extend(_int(rng) for _ in range(rng.randint(0, 4)))
        elif num == 8:
            msg.tags.extend(_text(rng) for _ in range(rng.randint(0, 3)))
        elif num == 9 and depth < 2:
            for _ in range(rng.randint(0, 2)):
                _fill(rng, msg.kids[_text(rng)], rng.choice([3, 4, 8]), depth + 1)
        elif num == 10:
            msg.blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        elif num == 11:
            msg.zz.extend(rng.choice([0, -1, 1, -(1 << 31)]) for _ in range(rng.randint(0, 3)))
        elif num == 12:
            msg.f32.extend(rng.choice([0, 1, 4294967295]) for _ in range(rng.randint(0, 3)))
        elif num == 13:
            msg.dd.extend(rng.choice([0.0, -1.5, 1e300]) for _ in range(rng.randint(0, 3)))
    else:  # the version-type messages: id = 2
        msg.id = _text(rng)


def chunk(rng: random.Random, cls: Any, num: int) -> bytes:
    """The wire occurrences of top-level field ``num`` alone (empty for a default value)."""
    msg = cls()
    _fill(rng, msg, num)
    return msg.SerializeToString()


def version_chunk(cls: Any, vnum: int, version: int) -> bytes:
    msg = cls()
    setattr(msg, msg.DESCRIPTOR.fields_by_number[vnum].name, version)
    return msg.SerializeToString()


def top_fields(cls: Any, vnum: int) -> list[int]:
    return sorted(n for n in cls.DESCRIPTOR.fields_by_number if n != vnum)


def initial(rng: random.Random, cls: Any, vnum: int) -> bytes:
    parts = [chunk(rng, cls, n) for n in top_fields(cls, vnum) if rng.random() < 0.7]
    parts += [chunk(rng, cls, rng.choice(top_fields(cls, vnum)))] if rng.random() < 0.3 else []
    parts.append(version_chunk(cls, vnum, 1))
    rng.shuffle(parts)
    return b"".join(parts)


def patch_args(rng: random.Random, key: str, cls: Any, vnum: int, current: int,
               ids: list[str]) -> dict:
    """The arguments of one backend.patch call (key, base, payload, fields, reads, by,
    write_id)."""
    fields = top_fields(cls, vnum)
    F = rng.sample(fields, rng.randint(1, min(4, len(fields))))
    R = rng.sample(fields, rng.randint(0, min(3, len(fields))))
    parts = [chunk(rng, cls, n) for n in F if rng.random() < 0.8]
    if rng.random() < 0.2:
        parts.append(chunk(rng, cls, rng.choice(F)))  # a second occurrence
    rng.shuffle(parts)
    payload = b"".join(parts)
    roll = rng.random()
    if roll < 0.04:
        outside = [n for n in fields if n not in F]
        if outside:
            n = rng.choice(outside)
            payload += chunk(rng, cls, n) or f_varint(n, 1)
    elif roll < 0.07:
        payload += version_chunk(cls, vnum, current + 1)
    elif roll < 0.09:
        F = F + [99]
    elif roll < 0.11:
        R = R + [vnum]
    elif roll < 0.14 and payload:
        payload = payload[:-1]
    elif roll < 0.16:
        payload += rng.choice([b"\x07", b"\x0c", b"\xff", b"\x80"])
    elif roll < 0.18:
        payload += bytes([(rng.choice(F) << 3 | 2) & 0x7F]) + b"\x01\xff"
    b = rng.random()
    base = (current if b < 0.7 else max(0, current - rng.randint(1, 3)) if b < 0.9
            else 0 if b < 0.95 else current + 1)
    args: dict[str, Any] = {"key": key, "base": base, "payload": payload, "fields": F}
    if R or rng.random() < 0.1:
        args["reads"] = R
    if rng.random() < 0.3:
        args["by"] = _text(rng)
    i = rng.random()
    if i < 0.5:
        ids.append(f"{key}:{len(ids)}")
        args["write_id"] = ids[-1]
    elif i < 0.65 and ids:
        args["write_id"] = rng.choice(ids)
    return args


def normalized(reply: Any) -> Any:
    """A conflict reply with the server clock and the incarnation (each engine minted its own
    at the create; tests/test_incarnation_clocks_ttl.py compares values under one) blanked."""
    if isinstance(reply, list) and len(reply) in (6, 8) and isinstance(reply[3], int):
        assert len(reply[-1]) in (0, 16), reply
        return [reply[0], reply[1], reply[2], "<ms>", *reply[4:-1], "<inc>"]
    return reply


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", normalized(call()))
    except redis.ResponseError as exc:
        return ("error", error_text(exc))


def stored(r: redis.Redis, key: str) -> Any:
    raw = r.get(key)
    return None if raw is None else blanked(raw)


@pytest.fixture(scope="module")
def engines(module_servers, module_so, pb):
    out = {}
    for engine in ("module", "lua"):
        b = make_backend(engine, start_engine_server(module_servers, engine))
        for name, (proto, mtype, _) in SCHEMAS.items():
            assert b.schema_set(name, mtype, pb.fds(proto)) == 1
        out[engine] = b
    return out


def test_patch_corpus_gives_identical_replies_and_stored_values(engines, pb):
    rng = random.Random(SEED)
    names = list(SCHEMAS)
    diverged = []
    kinds: collections.Counter = collections.Counter()
    for c in range(CHAINS):
        name = names[c % len(names)]
        proto, mtype, vnum = SCHEMAS[name]
        cls = pb.cls(proto, mtype)
        key = f"pp:{name}:{c}"
        first = initial(rng, cls, vnum)
        for b in engines.values():
            assert b.cas(key, 0, first, schema=name) == 1
        current, ids = 1, []
        if rng.random() < 0.15:  # a create by patch instead
            key += ":p"
            current = 0
        for step in range(STEPS):
            args = patch_args(rng, key, cls, vnum, current, ids)
            if current == 0:
                args["schema"] = name
            got = {e: outcome(lambda b=b: b.patch(**args)) for e, b in engines.items()}
            values = {e: stored(b.r, key) for e, b in engines.items()}
            status, reply = got["module"]
            kind = (str(reply).split(" ")[0] if status == "error" else "nil" if reply is None
                    else "replayed" if reply[0] == b"replayed" else
                    "merged" if len(reply) == 2 else "conflict")
            kinds[kind] += 1
            if got["module"] != got["lua"] or values["module"] != values["lua"]:
                diverged.append((key, step, args, got, values))
                break
            if kind == "merged":
                current = reply[0]
    print(f"\npatch parity: {CHAINS} chains x {STEPS} steps; module outcomes {dict(kinds)}")
    assert not diverged, "\n".join(map(str, diverged[:10]))
    assert kinds["merged"] > 150 and kinds["conflict"] > 10 and kinds["replayed"] > 5
    assert kinds["CTXFIELD"] > 5 and kinds["CTXINVALID"] > 5
