"""Huge schemas on the Lua engine (docs/PROTOCOL.md, "The validation plan", Lua's limits). Lua
5.1 compiles a function only while its jumps span at most 131,071 instructions: before, one
if-tree over a closed enum of 30,000 spread values or 20,000 message types made SCRIPT LOAD fail
with "control structure too long" (an opaque ResponseError at the first write, and the Store's
scripts turned into their Redis 6.2 form). ctx_luaplan.c now puts every large region of the plan
in a function of its own, so such schemas load and validate like the module. A plan Lua still
cannot load is refused by ``register_schema`` with ``CTXSCHEMA ... too large for the Lua engine``
(and an entry stored without that check gets the same text at its first write).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from wire import f_len, f_varint

import ctxlink
from ctxlink import _native, _scripts
from ctxlink._cache import LRU

_F = descriptor_pb2.FieldDescriptorProto
BIG = "t.big.Root"
TREE = "t.tree.M0"
TOO_LARGE = (r"^CTXSCHEMA schema 'big' is too large for the Lua engine: its validation plan does "
             r"not load in Redis \(Lua: control structure too long[^)]*\)$")


def big_enum_fds(values: int = 30000) -> bytes:
    """A proto2 root with a closed enum of ``values`` values two apart (one range each), from
    ``-values`` to ``values - 2``."""
    fdp = descriptor_pb2.FileDescriptorProto(name="big.proto", package="t.big", syntax="proto2")
    enum = fdp.enum_type.add(name="E")
    for i in range(values):
        enum.value.add(name=f"V{i}", number=2 * i - values)
    root = fdp.message_type.add(name="Root")
    root.field.add(name="version", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    root.field.add(name="e", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_ENUM,
                   type_name=".t.big.E")
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


def tree_fds(messages: int) -> bytes:
    """``messages`` message types in a binary tree (M<i> holds M<2i+1> as field 2 and M<2i+2> as
    field 3) and a string ``s`` (4) each; the root M0 has the version field (1)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="tree.proto", package="t.tree", syntax="proto3")
    msgs = [fdp.message_type.add(name=f"M{i}") for i in range(messages)]
    msgs[0].field.add(name="version", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    for i, m in enumerate(msgs):
        for number, kid in ((2, 2 * i + 1), (3, 2 * i + 2)):
            if kid < messages:
                m.field.add(name=f"c{kid}", number=number, label=_F.LABEL_OPTIONAL,
                            type=_F.TYPE_MESSAGE, type_name=f".t.tree.M{kid}")
        m.field.add(name="s", number=4, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


def tree_payload(target: int, text: bytes) -> bytes:
    """A payload reaching message ``target`` of :func:`tree_fds` and setting its ``s``."""
    path = []
    while target:
        path.append(2 if target % 2 else 3)
        target = (target - 1) // 2
    inner = f_len(4, text)
    for number in path:
        inner = f_len(number, inner)
    return f_varint(1, 1) + inner


def _outcome(store: ctxlink.Store, key: str, payload: bytes, schema: str) -> Any:
    try:
        return store.cas(key, 0, payload, schema=schema).version
    except ctxlink.CtxError as exc:
        return str(exc)


def test_huge_schemas_load_and_validate_like_the_module(lua, stock, modsrv):
    """Each schema here made SCRIPT LOAD fail before (control structure too long)."""
    modsrv.r.flushall()
    mod = ctxlink.connect(modsrv.client(), engine="module")
    cases = [
        ("big", big_enum_fds(60000), BIG,
         [f_varint(1, 1) + f_varint(2, v) for v in
          (0, 2, 100, -60000, 59998, -2, 1, 3, -59999, 59999, 60000, -60002, 1 << 31)]),
        ("tree", tree_fds(20000), TREE,
         [tree_payload(t, text) for t in (0, 1, 9999, 19999) for text in (b"ok", b"\xff")]
         + [f_varint(1, 1) + f_len(2, f_len(7, b""))]),
    ]
    for name, fds, type_name, payloads in cases:
        assert lua.register_schema(name, fds, message_type=type_name) == 1
        assert mod.register_schema(name, fds, message_type=type_name) == 1
        got = [_outcome(lua, f"{name}:{i}", p, name) for i, p in enumerate(payloads)]
        want = [_outcome(mod, f"{name}:{i}", p, name) for i, p in enumerate(payloads)]
        assert got == want
        assert 1 in got and any(isinstance(g, str) for g in got)


#: a fragment Lua cannot compile: one function whose if statement spans 140,000 instructions
UNLOADABLE = "local function pad(x)\nif x then\n" + "x = x + 1\n" * 140000 + "end\nend\n"


def make_unloadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, plans Lua cannot load (a fresh plan cache, the C core's fragment padded)."""
    real = _scripts.plan_fragment
    monkeypatch.setattr(_scripts, "_PLANS", LRU(8))
    monkeypatch.setattr(_scripts, "plan_fragment",
                        lambda schema, digest: real(schema, digest) + UNLOADABLE)


def test_register_schema_refuses_a_schema_whose_plan_lua_cannot_load(lua, stock, monkeypatch):
    assert lua.cas("o:1", 0, f_varint(2, 1), schema="order").ok
    make_unloadable(monkeypatch)
    with pytest.raises(ctxlink.SchemaError, match=TOO_LARGE):
        lua.register_schema("big", big_enum_fds(10), message_type=BIG)
    assert not stock.r.exists("__ctx:schema:big")
    assert lua.cas("o:1", 1, f_varint(2, 2)).ok  # the Store still works


def test_an_entry_whose_plan_cannot_load_is_refused_at_the_first_write(lua, stock, monkeypatch):
    assert lua.cas("o:1", 0, f_varint(2, 1), schema="order").ok
    make_unloadable(monkeypatch)
    # written by schema_set.lua directly (as an SDK without the check would)
    script = _scripts.load_scripts()["schema_set"]
    stock.r.execute_command("EVAL", script.source, 2, "__ctx:schema:big", "__ctx:schemas",
                            "big", BIG, big_enum_fds(10), "version", "WIRE_JSON", 0, 0)
    with pytest.raises(ctxlink.SchemaError, match=TOO_LARGE):
        lua.cas("b:1", 0, f_varint(1, 1) + f_varint(2, 4), schema="big")
    assert not stock.r.exists("b:1")
    # a compile error is not Redis 6.2's '#!lua' line: the Store's scripts keep their 7.0 form
    assert all(s.source.startswith(b"#!") for s in lua._st.scripts.values())
    assert lua.cas("o:1", 1, f_varint(2, 2)).ok


def test_the_module_engine_validates_the_same_schema(modsrv):
    modsrv.r.flushall()
    store = ctxlink.connect(modsrv.client(), engine="module")
    assert store.register_schema("big", big_enum_fds(), message_type=BIG) == 1
    assert store.cas("b:1", 0, f_varint(1, 1) + f_varint(2, 4), schema="big").ok
    with pytest.raises(ctxlink.ValidationError):
        store.cas("b:1", 1, f_varint(1, 2) + f_varint(2, 5))


def test_plan_generation_is_fast_for_a_large_schema():
    import time

    fds = big_enum_fds()
    schema = _native.compile_schema(fds, BIG, "version", 4 << 20)
    start = time.perf_counter()
    _scripts.plan_fragment(schema, "0" * 40)
    assert time.perf_counter() - start < 0.5


def test_the_process_plan_cache_is_bounded_in_bytes(monkeypatch):
    cache = LRU(128, max_weight=300_000, weight=_scripts._source_bytes)
    monkeypatch.setattr(_scripts, "_PLANS", cache)
    sizes = []
    for values in (4000, 4001, 4002, 4003, 4004, 4005):  # six plans of about 100 KB each
        fds = big_enum_fds(values)
        schema = _native.compile_schema(fds, BIG, "version", 4 << 20)
        sizes.append(len(_scripts.plan_script(schema, _native.digest(BIG, "version", fds)).source))
        assert cache.weight <= 300_000
        assert cache.weight == sum(len(s.source) for s in cache.values())
    assert sum(sizes) > 300_000 and len(cache) < 6  # the bound was needed


def test_a_stores_plan_scripts_are_bounded_in_bytes(lua, stock, monkeypatch):
    from ctxlink import _lua

    monkeypatch.setattr(_lua, "_MAX_PLAN_BYTES", 300_000)
    for i, values in enumerate((4000, 4002, 4004)):  # even: 4 is a value
        assert lua.register_schema(f"e{i}", big_enum_fds(values), message_type=BIG) == 1
        assert lua.cas(f"e:{i}", 0, f_varint(1, 1) + f_varint(2, 4), schema=f"e{i}").ok
        held = [s for n, s in lua._st.scripts.items() if n.startswith(("cas:", "patch:"))]
        assert sum(len(s.source) for s in held) <= 300_000


def odd_fds() -> bytes:
    """Long names (a 2,000-byte package, 3,000-byte field names), field numbers near 2^29,
    recursion, a closed enum at the int32 extremes."""
    pkg = "p" + "q" * 1999
    fdp = descriptor_pb2.FileDescriptorProto(name="odd.proto", package=pkg, syntax="proto2")
    enum = fdp.enum_type.add(name="X")
    for name, number in (("MIN", -(1 << 31)), ("MAX", (1 << 31) - 1), ("ZERO", 0)):
        enum.value.add(name=name, number=number)
    m = fdp.message_type.add(name="R" * 500)
    me = f".{pkg}.{'R' * 500}"
    m.field.add(name="version", number=536870911, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    m.field.add(name="s" * 3000, number=536870910, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    m.field.add(name="kid", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE, type_name=me)
    m.field.add(name="far" * 1000, number=400000000, label=_F.LABEL_REPEATED,
                type=_F.TYPE_MESSAGE, type_name=me)
    m.field.add(name="x", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_ENUM,
                type_name=f".{pkg}.X")
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


def test_long_names_high_field_numbers_and_int32_enum_extremes_validate_like_the_module(
        lua, modsrv):
    from wire import f_str

    modsrv.r.flushall()
    mod = ctxlink.connect(modsrv.client(), engine="module")
    fds = odd_fds()
    type_name = f"p{'q' * 1999}.{'R' * 500}"
    v = f_varint(536870911, 1)
    deep = f_len(536870910, b"\xff")
    for _ in range(20):
        deep = f_len(1, deep)
    payloads = [
        v, v + f_str(536870910, "ok"), v + f_len(536870910, b"\xc3"),
        v + f_len(400000000, f_len(400000000, f_len(536870910, b"\xff"))),
        v + deep, v + f_varint(2, -(1 << 31)), v + f_varint(2, (1 << 31) - 1),
        v + f_varint(2, 1), v + f_varint(2, (1 << 31)), v + f_varint(536870909, 1),
        f_varint(536870911, 2),
    ]
    for store in (lua, mod):
        assert store.register_schema("odd", fds, message_type=type_name,
                                     version_field="version") == 1
    got = [_outcome(lua, f"odd:{i}", p, "odd") for i, p in enumerate(payloads)]
    want = [_outcome(mod, f"odd:{i}", p, "odd") for i, p in enumerate(payloads)]
    assert got == want
    assert got.count(1) >= 3 and sum(isinstance(g, str) for g in got) >= 5, got


def test_plans_use_only_the_names_the_renaming_keeps():
    """The assembler renames the prelude's and the body's locals around the plan, which it does
    not read (it runs to megabytes): every name a plan uses is in ``_scripts.PLAN_NAMES``, so
    none is renamed or picked. Also fast: a 1.4 MB plan script is assembled in well under a
    second."""
    import re
    import time

    from test_lua_plan import ORDER, order_fds, wide_fds

    words: set[str] = set()
    for fds, type_name in ((big_enum_fds(60000), BIG), (tree_fds(3000), TREE),
                           (order_fds(), ORDER), wide_fds(240)):
        schema = _native.compile_schema(fds, type_name, "version", 64 << 20)
        for plan in (_scripts.plan_fragment(schema, "0" * 40), _scripts.error_plan("", "x")):
            code = re.sub(r"'(?:\\.|[^'\\\n])*'", "''", plan)
            words |= set(re.findall(r"(?<![\w.])[A-Za-z_]\w*", code))
    keywords = {"and", "else", "elseif", "end", "false", "function", "if", "local", "nil", "not",
                "or", "return", "then", "true"}
    assert words - keywords <= _scripts.PLAN_NAMES, words - keywords - _scripts.PLAN_NAMES
    schema = _native.compile_schema(big_enum_fds(60000), BIG, "version", 64 << 20)
    start = time.perf_counter()
    _scripts.plan_script(schema, "2" * 40)
    assert time.perf_counter() - start < 1.0
