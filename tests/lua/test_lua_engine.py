"""The Lua engine's scripts (lua/*.lua, assembled by ctxlink._scripts with the validation plan
the C core generates) against the module, on real servers.

One stock redis-server runs the scripts (SCRIPT LOAD + EVALSHA, the plan script regenerated
after "CTXSCHEMA stale", as the SDK does); two servers with the module (unknown-fields reject /
allow, both with a small max-payload-bytes and max-depth) give the reference answers. The parity
corpus sends every payload to CTX.CAS and to cas.lua and wants the same decision, the same error
text and the same stored value.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sdk"))

from ctxlink._native import digest as _digest  # noqa: E402
from ctxlink._scripts import Script, entry_script, load_scripts  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402

LUA_DIR = ROOT / "lua"
MAX_PAYLOAD = 2048
MAX_DEPTH = 8
ORDER = "ctxlink.example.Order"
TREE = "ctxlink.test.lua.Tree"
CODES = ("ERR", "WRONGTYPE", "CTXSCHEMA", "CTXINVALID", "CTXVERSION", "CTXTOOBIG")


# --------------------------------------------------------------------------- wire writing

from wire import (  # noqa: E402  (tests/wire.py: the suite's one wire encoder)
    f_fixed32,
    f_fixed64,
    f_group,
    f_len,
    f_varint,
    long_varint,
    tag,
    tag_offsets,
    varint,
    zigzag,
)


# --------------------------------------------------------------------------- fixtures

def _compile(include: Path, name: str, out: Path) -> bytes:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{include}",
                    "--include_imports", f"--descriptor_set_out={out}", name],
                   check=True, capture_output=True, cwd=include)
    return out.read_bytes()


@pytest.fixture(scope="module")
def fds(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("luaprotos")
    return {
        "order": _compile(ROOT / "proto", "order.proto", d / "order.pb"),
        "tree": _compile(Path(__file__).resolve().parent, "tree.proto", d / "tree.pb"),
    }


@pytest.fixture(scope="module")
def stock():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def modules():
    limits = ["max-payload-bytes", str(MAX_PAYLOAD), "max-depth", str(MAX_DEPTH)]
    with EmbeddedRedis(module=find_module(), module_args=limits) as rej, \
            EmbeddedRedis(module=find_module(),
                          module_args=limits + ["unknown-fields", "allow"]) as allow:
        yield {"reject": rej, "allow": allow}


def registry_digest(mtype: str, vfield: str, fds: bytes) -> str:
    return _digest(mtype, vfield, fds)


class Lua:
    """The scripts on one connection, called the way the SDK calls them: cas with the plan
    script of the entry it read (regenerated after "CTXSCHEMA stale <name>")."""

    def __init__(self, r: redis.Redis):
        self.r = r
        self.scripts = load_scripts(LUA_DIR)
        self.plans: dict[str, Script] = {}
        self.stale = 0  # how many "stale" replies were answered with a new plan

    def run(self, script: Script, keys: list, args: list) -> Any:
        try:
            return self.r.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            assert self.r.script_load(script.source) == script.sha
            return self.r.evalsha(script.sha, len(keys), *keys, *args)

    def call(self, script: str, keys: list, args: list) -> Any:
        return self.run(self.scripts[script], keys, args)

    def plan(self, name: str) -> Script:
        entry = self.r.hmget(f"__ctx:schema:{name}", "type", "fds", "vfield", "digest")
        self.plans[name] = entry_script(*entry, directory=LUA_DIR)
        return self.plans[name]

    def schema_set(self, name: str, mtype: str, fds: bytes, vfield: str = "version",
                   seen: int = 0, compat: str = "WIRE_JSON") -> Any:
        return self.call("schema_set", [f"__ctx:schema:{name}", "__ctx:schemas"],
                         [name, mtype, fds, vfield, compat, seen])

    def cas(self, key: str, expected: Any, payload: bytes, schema: str | None = None,
            by: str = "", unknown: str = "reject", stored_schema: str | None = None) -> Any:
        name = schema or stored_schema or ""
        # ARGV 9..16: no slot tag, no id, CTX.CAS, no FIELDS/READS, no INC, no PX, and the
        # incarnation a create gives the context (the SDK's os.urandom(8))
        argv = [expected, payload, 1 if schema else 0, by, MAX_PAYLOAD, MAX_DEPTH, unknown, name,
                "", "", "cas", "", "", "", "", os.urandom(8).hex()]
        script = self.plans.get(name) or self.plan(name)
        for _ in range(3):
            try:
                return self.run(script, [key], argv)
            except redis.ResponseError as e:
                if str(e) != f"CTXSCHEMA stale {name}":
                    raise
                self.stale += 1
                script = self.plan(name)
        raise AssertionError("stale three times in a row")

    def get(self, key: str) -> Any:
        return self.call("get", [key], [])

    def delete(self, key: str, expected: Any) -> Any:
        return self.call("del", [key], [expected])


def module_cas(r: redis.Redis, key: str, expected: Any, payload: bytes,
               schema: str | None = None, by: str = "") -> Any:
    args: list[Any] = ["CTX.CAS", key, expected, payload]
    if schema:
        args += ["SCHEMA", schema]
    if by:
        args += ["BY", by]
    return r.execute_command(*args)


# The documented Lua-only limit (docs/PROTOCOL.md, "Lua engine"): versions are doubles, so the
# largest expected version is 2^53 - 2; the texts differ only in that number.
LUA_LIMITS = {"from 0 to 9007199254740990": "from 0 to 9223372036854775806"}


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", reply) or ("err", the whole error text: code and message; the Lua-only version
    limit written as the module's)."""
    try:
        return ("ok", fn())
    except redis.ResponseError as e:
        text = str(e)
        for lua_text, module_text in LUA_LIMITS.items():
            text = text.replace(lua_text, module_text)
        return ("err", text)


@pytest.fixture(scope="module")
def lua(stock) -> Lua:
    return Lua(stock.client())


@pytest.fixture(scope="module")
def registered(lua, modules, fds):
    for server in modules.values():
        r = server.client()
        assert r.execute_command("CTX.SCHEMA.SET", "order", ORDER, fds["order"]) == 1
        assert r.execute_command("CTX.SCHEMA.SET", "tree", TREE, fds["tree"]) == 1
    assert lua.schema_set("order", ORDER, fds["order"]) == 1
    assert lua.schema_set("tree", TREE, fds["tree"]) == 1
    return True


# --------------------------------------------------------------------------- registry

def test_plan_digest_equals_the_digest_the_module_writes(modules, registered, fds):
    r = modules["reject"].client()
    assert r.hget("__ctx:schema:order", "digest").decode() == registry_digest(
        ORDER, "version", fds["order"])
    assert r.hget("__ctx:schema:tree", "digest").decode() == registry_digest(
        TREE, "version", fds["tree"])


def test_schema_set_writes_the_same_entry_as_the_module(lua, modules, registered):
    r = modules["reject"].client()
    for name in ("order", "tree"):
        mod = r.hgetall(f"__ctx:schema:{name}")
        mine = lua.r.hgetall(f"__ctx:schema:{name}")
        assert mine == mod, name  # no plan field: nothing executable is stored
    assert sorted(lua.r.smembers("__ctx:schemas")) == sorted(r.smembers("__ctx:schemas"))


def test_same_definition_again_keeps_the_revision_and_writes_nothing(lua, registered, fds):
    before = lua.r.hgetall("__ctx:schema:order")
    dirty = lua.r.info("persistence")["rdb_changes_since_last_save"]
    assert lua.schema_set("order", ORDER, fds["order"], seen=0) == 1
    assert lua.r.hgetall("__ctx:schema:order") == before
    assert lua.r.info("persistence")["rdb_changes_since_last_save"] == dirty


def test_schema_set_refuses_a_stale_revision_and_bumps_a_current_one(lua, modules, fds):
    m = modules["reject"].client()
    name = "rev-test"
    assert lua.schema_set(name, ORDER, fds["order"]) == 1
    assert m.execute_command("CTX.SCHEMA.SET", name, ORDER, fds["order"]) == 1
    # a different definition (other version field) of the same name
    with pytest.raises(redis.ResponseError, match="^CTXSCHEMA concurrent registration"):
        lua.schema_set(name, ORDER, fds["order"], vfield="base_price", seen=0)
    assert lua.schema_set(name, ORDER, fds["order"], vfield="base_price", seen=1) == 2
    assert m.execute_command("CTX.SCHEMA.SET", name, ORDER, fds["order"], "FORCE",
                             "VERSIONFIELD", "base_price") == 2
    for field in ("type", "fds", "revision", "vfield", "digest"):
        assert lua.r.hget(f"__ctx:schema:{name}", field) == m.hget(f"__ctx:schema:{name}",
                                                                     field)


def test_invalid_schema_name_is_ctxschema(lua, fds):
    with pytest.raises(redis.ResponseError, match="^CTXSCHEMA invalid schema name"):
        lua.call("schema_set", ["__ctx:schema:bad name", "__ctx:schemas"],
                 ["bad name", ORDER, fds["order"], "version", "WIRE_JSON", 0])


def test_schema_get_list_del_reply_like_the_module(lua, modules, registered, fds):
    m = modules["reject"].client()
    for name in ("zeta", "Alpha", "a.b", "a-b", "a:b", "B_1"):
        lua.schema_set(name, ORDER, fds["order"])
        m.execute_command("CTX.SCHEMA.SET", name, ORDER, fds["order"])
    assert lua.call("schema_list", ["__ctx:schemas"], []) == m.execute_command(
        "CTX.SCHEMA.LIST")
    assert lua.call("schema_get", ["__ctx:schema:zeta"], []) == m.execute_command(
        "CTX.SCHEMA.GET", "zeta")
    assert lua.call("schema_get", ["__ctx:schema:nope"], []) is None
    for name in ("zeta", "zeta", "never"):
        assert lua.call("schema_del", [f"__ctx:schema:{name}", "__ctx:schemas"],
                        [name]) == m.execute_command("CTX.SCHEMA.DEL", name)
    assert lua.call("schema_list", ["__ctx:schemas"], []) == m.execute_command(
        "CTX.SCHEMA.LIST")


# --------------------------------------------------------------------------- data commands

def order_payload(version: int, **fields) -> bytes:
    """An Order written by hand (fields in number order, as protobuf writes them)."""
    out = b""
    if "order_id" in fields:
        out += f_len(1, fields["order_id"].encode())
    if version:
        out += f_varint(2, version)
    if fields.get("status"):
        out += f_varint(3, fields["status"])
    for num, name in ((4, "base_price"), (5, "discount"), (6, "final_price")):
        if fields.get(name):
            out += f_varint(num, fields[name])
    if fields.get("inventory_reserved"):
        out += f_varint(7, 1)
    if fields.get("last_updated_by"):
        out += f_len(8, fields["last_updated_by"].encode())
    if fields.get("last_updated_epoch"):
        out += f_varint(9, fields["last_updated_epoch"])
    for sku, qty in fields.get("items", ()):
        item = (f_len(1, sku.encode()) if sku else b"") + (f_varint(2, qty) if qty else b"")
        out += f_len(10, item)
    return out


def stored_without_ms(r: redis.Redis, key: str) -> Any:
    """What a server stores for a context, its clock blanked: a v3 value with updated_ms and
    the incarnation (minted by each server) zeroed (bytes 12..27), a v2 value with updated_ms
    zeroed (bytes 12..19), a v1 hash without ``updated_ms``."""
    if r.type(key) == b"hash":
        h = r.hgetall(key)
        h.pop(b"updated_ms", None)
        return h
    raw = r.get(key)
    if raw is not None and raw[:4] == b"CTX\x03":
        return raw[:12] + bytes(16) + raw[28:]
    return raw[:12] + bytes(8) + raw[20:] if raw is not None else None


def both(lua: Lua, mod: redis.Redis, fn_lua, fn_mod):
    return outcome(fn_lua), outcome(fn_mod)


def strip_ms(state):
    """A state reply without what differs between two servers: updated_ms, and the
    incarnation each minted (16 hex digits on both)."""
    if isinstance(state, list) and len(state) in (6, 8):
        assert len(state[-1]) == 16
        return [state[0], state[1], state[2], "ms", *state[4:-1], "inc"]
    return state


def test_create_get_conflict_update_delete_like_the_module(lua, modules, registered):
    m = modules["reject"].client()
    key = "order:flow"
    v1 = order_payload(1, order_id="o-1", status=1, items=[("sku-1", 2)])
    v2 = order_payload(2, order_id="o-1", status=2, items=[("sku-1", 2)])
    steps = [
        (lambda: lua.get(key), lambda: m.execute_command("CTX.GET", key)),
        (lambda: lua.cas(key, 0, v1), lambda: module_cas(m, key, 0, v1)),  # schema required
        (lambda: lua.cas(key, 0, v1, schema="order", by="router"),
         lambda: module_cas(m, key, 0, v1, schema="order", by="router")),
        (lambda: lua.get(key), lambda: m.execute_command("CTX.GET", key)),
        (lambda: lua.cas(key, 0, v1, schema="order"),
         lambda: module_cas(m, key, 0, v1, schema="order")),  # conflict: state
        (lambda: lua.cas("order:none", 5, v1, schema="order"),
         lambda: module_cas(m, "order:none", 5, v1, schema="order")),  # conflict: nil
        (lambda: lua.cas(key, 1, v2, schema="tree"),
         lambda: module_cas(m, key, 1, v2, schema="tree")),  # mismatch
        (lambda: lua.cas(key, 1, v1, stored_schema="order"),
         lambda: module_cas(m, key, 1, v1)),  # CTXVERSION
        (lambda: lua.cas(key, 1, v2, stored_schema="order", by="pricing"),
         lambda: module_cas(m, key, 1, v2, by="pricing")),
        (lambda: lua.get(key), lambda: m.execute_command("CTX.GET", key)),
        (lambda: lua.delete(key, 1), lambda: m.execute_command("CTX.DEL", key, 1)),
        (lambda: lua.delete(key, 2), lambda: m.execute_command("CTX.DEL", key, 2)),
        (lambda: lua.delete(key, 2), lambda: m.execute_command("CTX.DEL", key, 2)),
        (lambda: lua.get(key), lambda: m.execute_command("CTX.GET", key)),
    ]
    for i, (fl, fm) in enumerate(steps):
        a, b = outcome(fl), outcome(fm)
        assert (a[0], strip_ms(a[1])) == (b[0], strip_ms(b[1])), f"step {i}: {a} vs {b}"


def test_wrongtype_and_bad_versions_like_the_module(lua, modules, registered):
    m = modules["reject"].client()
    p = order_payload(1)
    for r in (lua.r, m):
        r.set("str", "x")
        r.hset("nover", "a", "b")
        r.hset("badver", mapping={"version": "01", "schema": "order"})
        r.hset("zerover", mapping={"version": "0", "schema": "order"})
        r.hset("noschema", mapping={"version": "1"})
    cases = []
    for key in ("str", "nover", "badver", "zerover"):
        cases.append((lambda k=key: lua.get(k), lambda k=key: m.execute_command("CTX.GET", k)))
        cases.append((lambda k=key: lua.cas(k, 0, p, schema="order"),
                      lambda k=key: module_cas(m, k, 0, p, schema="order")))
        cases.append((lambda k=key: lua.delete(k, 1),
                      lambda k=key: m.execute_command("CTX.DEL", k, 1)))
    cases.append((lambda: lua.cas("noschema", 1, order_payload(2), stored_schema="order"),
                  lambda: module_cas(m, "noschema", 1, order_payload(2))))
    for bad in ("-1", "abc", "01", "+1", "", "1.5", " 1"):
        cases.append((lambda b=bad: lua.cas("fresh", b, p, schema="order"),
                      lambda b=bad: module_cas(m, "fresh", b, p, schema="order")))
        cases.append((lambda b=bad: lua.delete("fresh", b),
                      lambda b=bad: m.execute_command("CTX.DEL", "fresh", b)))
    cases.append((lambda: lua.cas("fresh", 0, p, schema="nosuch"),
                  lambda: module_cas(m, "fresh", 0, p, schema="nosuch")))
    for i, (fl, fm) in enumerate(cases):
        a, b = outcome(fl), outcome(fm)
        assert a == b, f"case {i}: lua {a} vs module {b}"


def test_every_version_field_type_decodes_like_the_module(lua, modules, tmp_path):
    """All ten integer version field types (tests/lua/vkinds.proto), odd values included."""
    vfds = _compile(Path(__file__).resolve().parent, "vkinds.proto", tmp_path / "vkinds.pb")
    m = modules["reject"].client()
    varint_kinds = {"VInt32", "VInt64", "VUint32", "VUint64"}
    values = [1, 2, 0, -1, -2, 3, (1 << 32) + 1, (1 << 32) + 3, (1 << 31) + 1, 1 << 31,
              (1 << 63), (1 << 63) + 1, (1 << 64) - 1, (1 << 64) - 2, 1 << 53, (1 << 53) + 1,
              (1 << 52) + 1]
    n = 0
    for msg in ("VInt32", "VInt64", "VUint32", "VUint64", "VSint32", "VSint64", "VFixed32",
                "VFixed64", "VSfixed32", "VSfixed64"):
        name = f"vk-{msg}"
        full = f"ctxlink.test.lua.vk.{msg}"
        assert lua.schema_set(name, full, vfds) == 1
        assert m.execute_command("CTX.SCHEMA.SET", name, full, vfds) == 1
        for v in values:
            if msg in varint_kinds:
                encodings = [f_varint(1, v)]
            elif msg in ("VSint32", "VSint64"):
                encodings = [f_varint(1, zigzag(v)), f_varint(1, v)]
            elif msg in ("VFixed32", "VSfixed32"):
                encodings = [f_fixed32(1, v)]
            else:
                encodings = [f_fixed64(1, v)]
            for enc in encodings:
                for payload in (enc + f_len(2, b"id"), f_varint(1, 9) + enc if msg in
                                varint_kinds else enc, f_len(2, b"id")):
                    key = f"ver:{msg}:{n}"
                    n += 1
                    a = outcome(lambda: lua.cas(key, 0, payload, schema=name))
                    b = outcome(lambda: module_cas(m, key, 0, payload, schema=name))
                    assert a == b, (msg, v, payload.hex(), a, b)


# --------------------------------------------------------------------------- parity corpus

BAD_UTF8 = [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
            b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xbf", b"\xe2\x82", b"\xf0\x9f\x98",
            b"\xc3", b"a\xc3(b", b"\xe2\x28\xa1", b"\xf8\x88\x80\x80\x80"]
GOOD_UTF8 = [b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
             b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf3\xbf\xbf\xbf",
             "héllo wörld €".encode(), "日本語テキスト".encode(), "🙂🚀".encode(), b"\x00nul"]


def random_text(rng: random.Random) -> bytes:
    parts = [rng.choice([b"abc", b"sku-", b"o-", b"x" * rng.randint(0, 40)] + GOOD_UTF8)
             for _ in range(rng.randint(0, 4))]
    return b"".join(parts)


def random_order(rng: random.Random, version: int = 1) -> bytes:
    out = b""
    if rng.random() < 0.9:
        out += f_len(1, random_text(rng))
    out += f_varint(2, version)
    if rng.random() < 0.7:
        out += f_varint(3, rng.choice([0, 1, 2, 3, 4, 5, 9, 1 << 40, -1]))
    for num in (4, 5, 6, 9):
        if rng.random() < 0.5:
            out += f_varint(num, rng.choice([0, 1, 999, 1 << 50, -5]))
    if rng.random() < 0.3:
        out += f_varint(7, rng.choice([0, 1, 2]))
    if rng.random() < 0.5:
        out += f_len(8, random_text(rng))
    for _ in range(rng.randint(0, 4)):
        item = b""
        if rng.random() < 0.8:
            item += f_len(1, random_text(rng))
        if rng.random() < 0.8:
            item += f_varint(2, rng.randint(0, 1 << 33))
        out += f_len(10, item)
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(10)
    if kind == 0 and b:  # truncate
        return bytes(b[: rng.randrange(len(b))])
    if kind == 1 and b:  # bit flips
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 2 and b:  # flipped wire type of a top-level tag
        i = rng.choice(tag_offsets(data))
        b[i] = (b[i] & ~7) | rng.randrange(8)
        return bytes(b)
    if kind == 3:  # an unknown field of some wire type
        num = rng.choice([11, 12, 15, 16, 100, 1000, 536870911])
        extra = rng.choice([f_varint(num, 7), f_fixed32(num, 1), f_fixed64(num, 1),
                            f_len(num, b"zz"), f_group(num, f_varint(1, 1)),
                            f_group(num, f_group(2, f_len(3, b"x"))),
                            tag(num, 3) + f_varint(1, 1),  # unclosed
                            f_group(num, tag(num + 1, 4)),  # mismatched end
                            tag(num, 6), tag(num, 7) + b"\x00"])
        at = rng.choice(tag_offsets(data) + [len(data)])
        return bytes(b[:at]) + extra + bytes(b[at:])
    if kind == 4:  # bad UTF-8 in a string field
        bad = rng.choice(BAD_UTF8)
        return data + rng.choice([f_len(1, b"ok" + bad), f_len(8, bad + b"ok"),
                                  f_len(10, f_len(1, bad))])
    if kind == 5:  # overlong / malformed varints
        return data + rng.choice([
            tag(2, 0) + long_varint(1, 10),
            tag(2, 0) + b"\xff" * 9 + b"\x01",
            tag(2, 0) + b"\xff" * 9 + b"\x02",
            tag(2, 0) + b"\x81" * 10 + b"\x00",
            tag(2, 0) + b"\x81",
            long_varint((4 << 3) | 0, 5) + b"\x01",
            long_varint((4 << 3) | 0, 6) + b"\x01",
            tag(8, 2) + long_varint(2, 6) + b"ab",
            tag(8, 2) + long_varint(2, 5) + b"ab",
            b"\x80\x80\x80\x80\x80\x10",  # tag above 32 bits
            b"\xf8\xff\xff\xff\x0f\x00",  # field 2^29-1 wire type 0
            b"\x00",  # field number 0
            b"\x02\x00",
            tag(1, 2) + varint(1000) + b"x",  # length past the end
        ])
    if kind == 6 and b:  # insert a random byte
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes([rng.randrange(256)])
        return bytes(b)
    if kind == 7 and b:  # delete a byte
        i = rng.randrange(len(b))
        del b[i]
        return bytes(b)
    if kind == 8:  # duplicated fields: last version wins
        return data + f_varint(2, rng.choice([1, 2, 0]))
    # a nested message that ends inside a value, with more parent bytes after it
    return data + rng.choice([
        f_len(10, f_len(1, b"ok") + tag(2, 2) + varint(1) + b"\x01"),
        f_len(10, tag(2, 0)) + f_varint(9, 5),
        f_len(10, tag(2, 0) + b"\x80") + f_varint(9, 5),
        f_len(10, tag(1, 2)) + f_len(8, b"abc"),
        f_len(10, tag(2, 5) + b"\x00\x00") + b"\x00" * 4,
        f_len(10, f_len(1, b"ok")[:-1]) + b"k",
        f_len(10, b"\x8a") + b"\x01",
    ])


def tree(version: int | None = 1, **f) -> bytes:
    out = b""
    if version is not None:
        out += f_varint(1, version)
    for piece in f.get("raw", ()):
        out += piece
    return out


def leaf(name: bytes | None = b"n", level: int | None = None) -> bytes:
    out = b""
    if name is not None:
        out += f_len(1, name)
    if level is not None:
        out += f_varint(2, level)
    return out


def chain(depth: int, inner: bytes = b"", field: int = 4) -> bytes:
    """A Tree nested ``depth`` levels deep through field ``field`` (4 next, 3 kids)."""
    body = inner
    for _ in range(depth):
        body = f_len(field, body)
    return body


def group_chain(depth: int) -> bytes:
    """Box groups nested through Box.t (two levels per step: group, then Tree)."""
    body = f_len(12, b"b")
    for _ in range(depth):
        body = f_group(10, f_len(12, b"b") + f_len(13, body))
    return body


def nested_unknown_groups(first: int, depth: int) -> bytes:
    body = b""
    for i in reversed(range(depth)):
        body = f_group(first + i, body)
    return body


def tree_corpus(rng: random.Random) -> list[bytes]:
    c: list[bytes] = []
    for d in range(0, MAX_DEPTH + 3):
        c.append(tree(raw=[chain(d)]))
        c.append(tree(raw=[chain(d, field=3)]))
        c.append(tree(raw=[chain(d, f_len(5, leaf(None)))]))  # required missing, deep
        c.append(tree(raw=[chain(d, f_len(5, leaf()))]))
        c.append(tree(raw=[f_group(10, f_len(12, b"b") + f_len(13, chain(d)))]))
    for d in range(0, MAX_DEPTH // 2 + 2):
        c.append(tree(raw=[group_chain(d)]))
        c.append(tree(raw=[f_len(4, group_chain(d))]))
    for lvl in (0, 1, 5, -3, 2, 3, -1, (1 << 32) + 1, (1 << 32) + 2, 1 << 31, -(1 << 31)):
        c.append(tree(raw=[f_varint(7, lvl)]))
        c.append(tree(raw=[f_varint(8, lvl), f_varint(8, 0)]))
        c.append(tree(raw=[f_len(9, varint(0) + varint(lvl))]))
        c.append(tree(raw=[f_len(8, varint(lvl))]))  # packed on the wire, unpacked declared
        c.append(tree(raw=[f_len(5, leaf(level=lvl))]))
    c += [
        tree(raw=[f_len(5, leaf(None)), f_len(5, leaf())]),  # merged: first end misses name
        tree(raw=[f_len(5, leaf()), f_len(5, leaf(None, 1))]),  # merged, complete
        tree(raw=[f_len(6, leaf()), f_len(6, leaf(None))]),  # repeated: each checked
        tree(raw=[f_group(10, f_varint(11, 1))]),  # group without required b
        tree(raw=[f_group(10, f_varint(11, 1)), f_group(10, f_len(12, b"b"))]),
        tree(raw=[f_group(10, f_len(12, b"b")), f_group(10, f_varint(11, 1))]),
        tree(raw=[f_group(10, f_len(12, b"b"))]),
        tree(raw=[tag(10, 3) + f_len(12, b"b")]),  # group not closed
        tree(raw=[tag(10, 3) + f_len(12, b"b") + tag(11, 4)]),  # wrong end
        tree(raw=[tag(10, 4)]),  # end-group outside a group
        tree(raw=[f_len(10, f_len(12, b"b"))]),  # group field as length-delimited
        tree(raw=[f_group(4, b"")]),  # message field as group
        tree(raw=[f_len(15, b"\x00" * 8)]),
        tree(raw=[f_len(15, b"\x00" * 7)]),
        tree(raw=[f_fixed32(15, 5)]),
        tree(raw=[f_len(16, b"\x00" * 16)]),
        tree(raw=[f_len(16, b"\x00" * 12)]),
        tree(raw=[f_fixed64(16, 1)]),
        tree(raw=[f_len(14, varint(zigzag(-5)) + varint(3))]),
        tree(raw=[f_len(14, b"\x80")]),  # malformed varint in packed
        tree(raw=[f_varint(18, 1 << 40)]),
        tree(raw=[f_len(17, b"\xff\xfe")]),  # bytes: no UTF-8 check
        tree(raw=[f_varint(100, 1)]),  # extension: unknown
        tree(raw=[f_group(150, f_group(151, f_group(152, b"")))]),
        tree(raw=[nested_unknown_groups(150, 7)]),
        tree(raw=[nested_unknown_groups(150, 9)]),
        tree(None, raw=[f_len(2, b"no version")]),
        tree(2),
        tree(1, raw=[f_varint(1, 5), f_varint(1, 1)]),
        tree(1, raw=[f_fixed64(1, 1)]),
    ]
    for bad in BAD_UTF8 + GOOD_UTF8:
        c.append(tree(raw=[f_len(2, bad)]))
        c.append(tree(raw=[f_len(3, f_len(5, leaf(b"x" + bad)))]))
    base = [tree(raw=[f_len(3, tree(None, raw=[f_len(5, leaf())])), f_group(
        10, f_len(12, b"b")), f_len(9, varint(1) + varint(5)), f_len(2, b"lbl")])]
    for _ in range(120):
        c.append(mutate_tree(rng, rng.choice(base + c[:40])))
    return c


def mutate_tree(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if not b:
        return data
    k = rng.randrange(4)
    if k == 0:
        return bytes(b[: rng.randrange(len(b))])
    if k == 1:
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if k == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes([rng.randrange(256)])
        return bytes(b)
    i = rng.randrange(len(b))
    del b[i]
    return bytes(b)


def order_corpus(rng: random.Random) -> list[bytes]:
    c: list[bytes] = []
    for _ in range(120):
        c.append(random_order(rng))
    for _ in range(330):
        c.append(mutate(rng, random_order(rng)))
    for v in (0, 2, -1, 1 << 53, (1 << 53) + 1, 1 << 63, (1 << 64) - 1, (1 << 32) + 1):
        c.append(random_order(rng, v))
    c.append(random_order(rng) + f_len(8, b"x" * MAX_PAYLOAD))  # over max-payload-bytes
    c.append(f_varint(2, 1) + f_len(8, b"x" * (MAX_PAYLOAD - 6)))  # exactly at the limit
    c.append(f_varint(2, 1) + f_len(8, b"x" * (MAX_PAYLOAD - 5)))  # one over
    c.append(b"")
    return c


def corpus() -> list[tuple[str, bytes]]:
    rng = random.Random(20261125)
    return ([("order", p) for p in order_corpus(rng)] + [("tree", p) for p in tree_corpus(rng)])


@pytest.mark.parametrize("unknown", ["reject", "allow"])
def test_parity_corpus_same_decision_code_and_hash_as_the_module(lua, modules, registered,
                                                                 unknown):
    m = modules[unknown].client()
    items = corpus()
    assert len(items) >= 500
    disagreements = []
    codes: dict[str, int] = {}
    for i, (schema, payload) in enumerate(items):
        key = f"p:{unknown}:{i}"
        a = outcome(lambda: lua.cas(key, 0, payload, schema=schema, by="w", unknown=unknown))
        b = outcome(lambda: module_cas(m, key, 0, payload, schema=schema, by="w"))
        code = str(b[1]).split(" ", 1)[0] if b[0] == "err" else "ok"
        codes[code] = codes.get(code, 0) + 1
        if a != b:
            disagreements.append((i, schema, payload.hex(), a, b))
            continue
        if a[0] == "ok":
            ha, hb = stored_without_ms(lua.r, key), stored_without_ms(m, key)
            if ha != hb:
                disagreements.append((i, schema, payload.hex(), ha, hb))
    print(f"\nparity[{unknown}]: {len(items)} payloads, "
          f"{len(items) - len(disagreements)} agreements, module outcomes {codes}")
    assert not disagreements, "\n".join(map(str, disagreements[:20]))


def test_parity_on_updates_without_schema(lua, modules, registered):
    """Updates (expected 1, no SCHEMA) of mutated v2 payloads: same answers, texts and hashes."""
    m = modules["reject"].client()
    rng = random.Random(7)
    bad = []
    for i in range(60):
        payload = mutate(rng, random_order(rng, 2)) if i % 3 else random_order(rng, 2)
        key = f"u:{i}"
        first = random_order(rng, 1)
        assert lua.cas(key, 0, first, schema="order") == 1
        assert module_cas(m, key, 0, first, schema="order") == 1
        a = outcome(lambda: lua.cas(key, 1, payload, stored_schema="order"))
        b = outcome(lambda: module_cas(m, key, 1, payload))
        if a != b:
            bad.append((i, payload.hex(), a, b))
        elif a[0] == "ok":
            ha, hb = stored_without_ms(lua.r, key), stored_without_ms(m, key)
            if ha != hb:
                bad.append((i, payload.hex(), ha, hb))
    assert not bad, bad
