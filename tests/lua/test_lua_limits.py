"""Schemas whose validation plan Redis' Lua 5.1 cannot load (docs/PROTOCOL.md, "The validation
plan", limits): a closed enum with 30,000 values spread apart makes ``enum_ok`` one function whose
if-tree jumps past Lua's 131,071-instruction limit ("control structure too long"). Through the Lua
engine, ``register_schema`` refuses such a schema with ``CTXSCHEMA ... too large for the Lua
engine``; an entry written without that check (an older SDK, or the module) gets the same text at
the first write, and the Store keeps working (its scripts keep their Redis 7 form); the module
engine validates the same schema as usual.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from wire import f_varint

import ctxlink
from ctxlink import _native, _scripts
from test_lua_plan import ORDER, order_fds

_F = descriptor_pb2.FieldDescriptorProto
BIG = "t.big.Root"
TOO_LARGE = (r"^CTXSCHEMA schema 'big' is too large for the Lua engine: its validation plan does "
             r"not load in Redis \(Lua: control structure too long[^)]*\)$")


def big_enum_fds(values: int = 30000) -> bytes:
    """A proto2 root with a closed enum of ``values`` values two apart (one range each)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="big.proto", package="t.big", syntax="proto2")
    enum = fdp.enum_type.add(name="E")
    for i in range(values):
        enum.value.add(name=f"V{i}", number=2 * i - values)
    root = fdp.message_type.add(name="Root")
    root.field.add(name="version", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_INT64)
    root.field.add(name="e", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_ENUM,
                   type_name=".t.big.E")
    return descriptor_pb2.FileDescriptorSet(file=[fdp]).SerializeToString()


@pytest.fixture(scope="module")
def stock(module_servers):
    return module_servers.start(module=False)


@pytest.fixture(scope="module")
def modsrv(module_servers, module_so):
    return module_servers.start(module=True)


@pytest.fixture
def lua(stock) -> ctxlink.Store:
    stock.r.flushall()
    stock.r.execute_command("SCRIPT", "FLUSH")
    store = ctxlink.connect(stock.client(), engine="lua")
    assert store.register_schema("order", order_fds(), message_type=ORDER) == 1
    return store


def test_register_schema_refuses_a_schema_whose_plan_lua_cannot_load(lua, stock):
    with pytest.raises(ctxlink.SchemaError, match=TOO_LARGE):
        lua.register_schema("big", big_enum_fds(), message_type=BIG)
    assert not stock.r.exists("__ctx:schema:big")
    assert lua.cas("o:1", 0, f_varint(2, 1), schema="order").ok  # the Store still works


def test_an_entry_whose_plan_cannot_load_is_refused_at_the_first_write(lua, stock):
    # written by schema_set.lua directly (as an SDK without the check would)
    fds = big_enum_fds()
    script = _scripts.load_scripts()["schema_set"]
    stock.r.execute_command("EVAL", script.source, 2, "__ctx:schema:big", "__ctx:schemas",
                            "big", BIG, fds, "version", "WIRE_JSON", 0, 0)
    with pytest.raises(ctxlink.SchemaError, match=TOO_LARGE):
        lua.cas("b:1", 0, f_varint(1, 1) + f_varint(2, 4), schema="big")
    assert not stock.r.exists("b:1")
    # a compile error is not Redis 6.2's '#!lua' line: the Store's scripts keep their 7.0 form
    assert all(s.source.startswith(b"#!") for s in lua._st.scripts.values())
    assert lua.cas("o:1", 0, f_varint(2, 1), schema="order").ok


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
    cache = _scripts._PlanCache(128, max_bytes=300_000)
    monkeypatch.setattr(_scripts, "_PLANS", cache)
    sizes = []
    for values in (4000, 4001, 4002, 4003, 4004, 4005):  # six plans of about 100 KB each
        fds = big_enum_fds(values)
        schema = _native.compile_schema(fds, BIG, "version", 4 << 20)
        sizes.append(len(_scripts.plan_script(schema, _native.digest(BIG, "version", fds)).source))
        assert cache.bytes <= 300_000
        assert cache.bytes == sum(len(s.source) for s in cache._items.values())
    assert sum(sizes) > 300_000 and len(cache._items) < 6  # the bound was needed


def test_a_stores_plan_scripts_are_bounded_in_bytes(lua, stock, monkeypatch):
    from ctxlink import _lua

    monkeypatch.setattr(_lua, "_MAX_PLAN_BYTES", 300_000)
    for i, values in enumerate((4000, 4002, 4004)):  # even: 4 is a value
        assert lua.register_schema(f"e{i}", big_enum_fds(values), message_type=BIG) == 1
        assert lua.cas(f"e:{i}", 0, f_varint(1, 1) + f_varint(2, 4), schema=f"e{i}").ok
        held = [s for n, s in lua._st.scripts.items() if n.startswith(("cas:", "patch:"))]
        assert sum(len(s.source) for s in held) <= 300_000
