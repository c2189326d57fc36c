"""Schema compatibility, one judge for both engines (docs/PROTOCOL.md, "Compatibility categories:
WIRE_JSON and WIRE"): the C core's ctx_Schema_CheckChange decides every registration, the module
directly and the Lua engine through the SDK (``ctxlink.connect(client, engine="lua")``), so both
engines give the same verdict with the same text. Also the registry's ``compat`` setting, the
schema-name rule and the digest, each compared between the SDK's core calls and the module."""

from __future__ import annotations

import pytest
import redis
from google.protobuf import descriptor_pb2

import ctxlink
from ctxlink import _native
from helpers import registry_digest
from test_schema import (COMPAT_CASES, JSON_BREAKING, ORDER, add_field, edited, find_field,
                         find_msg, on_field)

FDP = descriptor_pb2.FieldDescriptorProto
STRICT = "ctxlink.test.p2.Strict"


@pytest.fixture
def store(backend, engine):
    """The shipped SDK on the engine's server (the registry emptied by ``backend``)."""
    return ctxlink.connect(backend.r, engine=engine)


def register(store, name, type_, fds, force=False, compat=None):
    if compat is None:
        return store.register_schema(name, fds, message_type=type_, force=force)
    return store.register_schema(name, fds, message_type=type_, force=force, compat=compat)


def refusal(store, name, type_, fds, **kwargs) -> str:
    """The SchemaError text of a refused registration (the entry stays as it was)."""
    before = store.get_schema(name)
    with pytest.raises(ctxlink.SchemaError) as excinfo:
        register(store, name, type_, fds, **kwargs)
    after = store.get_schema(name)
    assert (after and after.revision) == (before and before.revision)
    return str(excinfo.value)


def compat_field(r: redis.Redis, name: str) -> bytes | None:
    return r.hget(f"__ctx:schema:{name}", "compat")


# --------------------------------------------------------------------------- required fields


def test_required_made_optional_is_refused_with_the_core_text_on_both_engines(store, pb, uniq):
    """Once a divergence: the module accepted it, the Lua engine refused it with another
    text. Decided once: breaking (old readers reject payloads without the field)."""
    name = uniq("strict")
    register(store, name, STRICT, pb.fds("strict2"))
    new = edited(pb, "strict2", on_field(STRICT, 2, lambda f: setattr(f, "label",
                                                                        FDP.LABEL_OPTIONAL)))
    text = refusal(store, name, STRICT, new)
    assert text == ("CTXSCHEMA incompatible schema (WIRE, FIELD_SAME_REQUIRED): field 'id' (2) of "
                    "'ctxlink.test.p2.Strict' changes from required to optional (use FORCE to "
                    "override)")
    assert refusal(store, name, STRICT, new, compat="WIRE") == text  # a WIRE rule
    assert register(store, name, STRICT, new, force=True) == 2


def test_optional_made_required_is_refused_on_both_engines(store, pb, uniq):
    name = uniq("strict")
    register(store, name, STRICT, pb.fds("strict2"))
    new = edited(pb, "strict2", on_field(STRICT, 6, lambda f: setattr(f, "label",
                                                                        FDP.LABEL_REQUIRED)))
    assert refusal(store, name, STRICT, new) == (
        "CTXSCHEMA incompatible schema (WIRE, FIELD_SAME_REQUIRED): field 'note' (6) of "
        "'ctxlink.test.p2.Strict' changes from optional to required (use FORCE to override)")


# --------------------------------------------------------------------------- unreadable entry


def _break_entry(r: redis.Redis, name: str) -> None:
    """Edits the entry's fds by hand so that it no longer parses (digest left as it was)."""
    r.hset(f"__ctx:schema:{name}", "fds", b"\xff\xff not a descriptor set")


def test_change_over_an_unreadable_revision_is_refused_without_force_on_both_engines(
        store, backend, pb, uniq):
    """Once a divergence: the SDK's Lua path swallowed it and wrote."""
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    _break_entry(backend.r, name)
    for fds in (pb.fds("order_v2_incompat"), pb.fds("order_v2_compat")):
        assert refusal(store, name, ORDER, fds) == (
            "CTXSCHEMA the registered revision cannot be read; use FORCE to replace it")
    assert register(store, name, ORDER, pb.fds("order_v2_incompat"), force=True) == 2
    assert store.get_schema(name).descriptor_set == pb.fds("order_v2_incompat")


def test_reregistering_the_entrys_own_definition_repairs_it_without_force(store, backend, pb,
                                                                          uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    _break_entry(backend.r, name)
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert backend.r.hget(f"__ctx:schema:{name}", "fds") == pb.fds("order")


# --------------------------------------------------------------------------- WIRE_JSON vs WIRE


def _rename(number: int, new_name: str):
    return on_field(ORDER, number, lambda f: (setattr(f, "name", new_name),
                                              f.ClearField("json_name")))


def test_rename_is_refused_under_wire_json_and_accepted_under_compat_wire(store, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    new = edited(pb, "order", _rename(6, "final"))
    assert refusal(store, name, ORDER, new) == (
        "CTXSCHEMA incompatible schema (WIRE_JSON, FIELD_SAME_NAME): field 6 of "
        "'ctxlink.example.Order' is renamed from 'final_price' to 'final' (use FORCE to "
        "override, or COMPAT WIRE)")
    assert register(store, name, ORDER, new, compat="WIRE") == 2


def test_json_name_change_is_refused_under_wire_json(store, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    new = edited(pb, "order", on_field(ORDER, 6, lambda f: setattr(f, "json_name", "total")))
    text = refusal(store, name, ORDER, new)
    assert "(WIRE_JSON, FIELD_SAME_JSON_NAME)" in text and "'finalPrice' to 'total'" in text, text
    assert register(store, name, ORDER, new, compat="WIRE") == 2


@pytest.mark.parametrize("src,dst", [(FDP.TYPE_STRING, FDP.TYPE_BYTES),
                                     (FDP.TYPE_BYTES, FDP.TYPE_STRING)], ids=["to-bytes",
                                                                            "to-string"])
def test_string_bytes_change_is_json_breaking_and_wire_compatible(store, pb, uniq, src, dst):
    name = uniq("order")
    old = edited(pb, "order", on_field(ORDER, 1, lambda f: setattr(f, "type", src)))
    new = edited(pb, "order", on_field(ORDER, 1, lambda f: setattr(f, "type", dst)))
    register(store, name, ORDER, old)
    text = refusal(store, name, ORDER, new)
    assert text.startswith("CTXSCHEMA incompatible schema (WIRE_JSON, "
                           "FIELD_WIRE_JSON_COMPATIBLE_TYPE): field 'order_id' (1)"), text
    assert "base64" in text and text.endswith("(use FORCE to override, or COMPAT WIRE)"), text
    assert register(store, name, ORDER, new, compat="WIRE") == 2


def test_enum_value_renamed_is_refused_under_wire_json(store, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))

    def rename_value(s):
        for f in s.file:
            for e in f.enum_type:
                if e.name == "OrderStatus":
                    e.value[1].name = "ORDER_STATUS_CREATED"
    new = edited(pb, "order", rename_value)
    assert refusal(store, name, ORDER, new) == (
        "CTXSCHEMA incompatible schema (WIRE_JSON, ENUM_VALUE_SAME_NAME): value 1 of enum "
        "'ctxlink.example.OrderStatus' is renamed from 'ORDER_STATUS_NEW' to "
        "'ORDER_STATUS_CREATED' (use FORCE to override, or COMPAT WIRE)")
    assert register(store, name, ORDER, new, compat="WIRE") == 2


@pytest.mark.parametrize("compat", ["WIRE_JSON", "WIRE"])
@pytest.mark.parametrize("proto,type_,label,edits,compatible", COMPAT_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in COMPAT_CASES])
def test_compatibility_matrix_under_each_category(store, pb, uniq, compat, proto, type_, label,
                                                  edits, compatible):
    """tests/test_schema.py's matrix of edits, through the SDK, under both categories: WIRE
    accepts every wire-compatible edit, WIRE_JSON also refuses the JSON-breaking ones."""
    name = uniq("compat")
    register(store, name, type_, pb.fds(proto), compat=compat)
    new = edited(pb, proto, *edits)
    if compatible and (compat == "WIRE" or label not in JSON_BREAKING):
        assert register(store, name, type_, new) == 2
    else:
        text = refusal(store, name, type_, new)
        assert text.startswith("CTXSCHEMA incompatible schema ("), text


def test_messages_keep_their_fix_with_long_names(store, pb, uniq):
    """Names are cut so that the message fits the core's status and still ends with the fix."""
    name = uniq("order")
    old = edited(pb, "order", _rename(6, "a" * 120))
    register(store, name, ORDER, old)
    text = refusal(store, name, ORDER, edited(pb, "order", _rename(6, "b" * 120)))
    assert len(text.encode()) <= len("CTXSCHEMA ") + 255, len(text)
    assert text.endswith("(use FORCE to override, or COMPAT WIRE)"), text


# --------------------------------------------------------------------------- the compat setting


def test_compat_persists_in_the_entry_and_later_registrations_keep_it(store, backend, pb, uniq):
    name = uniq("order")
    assert register(store, name, ORDER, pb.fds("order"), compat="WIRE") == 1
    assert compat_field(backend.r, name) == b"WIRE"
    renamed = edited(pb, "order", _rename(6, "final"))
    assert register(store, name, ORDER, renamed) == 2  # no compat given: the entry's WIRE
    assert compat_field(backend.r, name) == b"WIRE"


def test_a_new_entry_is_wire_json(store, backend, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    assert compat_field(backend.r, name) == b"WIRE_JSON"


def test_same_definition_under_another_compat_is_a_new_revision(store, backend, pb, uniq):
    name = uniq("order")
    fds = pb.fds("order")
    assert register(store, name, ORDER, fds) == 1
    assert register(store, name, ORDER, fds, compat="WIRE") == 2
    assert register(store, name, ORDER, fds, compat="WIRE") == 2  # unchanged
    assert register(store, name, ORDER, fds) == 2  # keeps WIRE
    assert register(store, name, ORDER, fds, compat="WIRE_JSON") == 3
    assert compat_field(backend.r, name) == b"WIRE_JSON"


def test_the_check_uses_the_setting_the_entry_will_have(store, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"), compat="WIRE")
    renamed = edited(pb, "order", _rename(6, "final"))
    assert "FIELD_SAME_NAME" in refusal(store, name, ORDER, renamed, compat="WIRE_JSON")
    name2 = uniq("order")
    register(store, name2, ORDER, pb.fds("order"))
    assert register(store, name2, ORDER, renamed, compat="WIRE") == 2


def test_entry_without_compat_field_counts_as_wire_json(store, backend, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    backend.r.hdel(f"__ctx:schema:{name}", "compat")
    assert "FIELD_SAME_NAME" in refusal(store, name, ORDER, edited(pb, "order", _rename(6, "x")))
    assert register(store, name, ORDER, pb.fds("order")) == 1  # same definition, same category


@pytest.mark.parametrize("bad", ["JSON", "", "WIRE ", "wire\x00", b"WIRE", 1, "FILE"], ids=repr)
def test_sdk_refuses_an_unknown_compat_before_sending(store, backend, pb, bad):
    """ArgumentError (a ValueError) naming both choices, raised before any command is sent."""
    backend.r.config_resetstat()
    with pytest.raises(ctxlink.ArgumentError) as excinfo:
        register(store, "order", ORDER, pb.fds("order"), compat=bad)
    assert str(excinfo.value) == f"compat must be 'WIRE_JSON' or 'WIRE', not {bad!r}"
    sent = {k for k in backend.r.info("commandstats") if k not in ("cmdstat_config|resetstat",
                                                                   "cmdstat_config")}
    assert sent == set()


def test_compat_does_not_change_the_digest(store, backend, pb, uniq):
    name = uniq("order")
    fds = pb.fds("order")
    register(store, name, ORDER, fds, compat="WIRE")
    entry = backend.r.hgetall(f"__ctx:schema:{name}")
    assert entry[b"digest"].decode() == registry_digest(ORDER, "version", fds)
    assert entry[b"digest"].decode() == _native.digest(ORDER, "version", fds)


# --------------------------------------------------------------------------- module command line


def test_compat_argument_syntax(engine, backend, pb, uniq):
    if engine != "module":
        pytest.skip("the Lua engine has no command line")
    r, name, fds = backend.r, uniq("order"), pb.fds("order")
    assert r.execute_command("CTX.SCHEMA.SET", name, ORDER, fds, "compat", "wire") == 1
    assert compat_field(r, name) == b"WIRE"
    with pytest.raises(redis.ResponseError) as excinfo:
        r.execute_command("CTX.SCHEMA.SET", name, ORDER, fds, "COMPAT", "JSON")
    assert str(excinfo.value) == "CTXSCHEMA unknown COMPAT 'JSON': use WIRE_JSON or WIRE"
    for args in (("COMPAT",), ("COMPAT", "WIRE", "COMPAT", "WIRE")):
        with pytest.raises(redis.ResponseError, match="syntax error"):
            r.execute_command("CTX.SCHEMA.SET", name, ORDER, fds, *args)


# --------------------------------------------------------------------------- name, digest, version


NAMES = ["a", "x" * 128, "A-Za-z0-9_.-:", "", "x" * 129, "a b", "a\n", "a\x00", "é", "{t}"]


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_name_rule_is_the_cores_on_both_engines(store, pb, name):
    try:
        _native.check_name(name)
        valid = True
    except ctxlink.SchemaError as exc:
        assert str(exc) == "CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :"
        valid = False
    if valid:
        assert store.register_schema(name, pb.fds("order"), message_type=ORDER) == 1
    else:
        with pytest.raises(ctxlink.SchemaError, match="invalid schema name"):
            store.register_schema(name, pb.fds("order"), message_type=ORDER)


def test_digest_is_the_cores_on_both_engines(store, backend, pb, uniq):
    name = uniq("doc")
    fds = pb.fds("versions")
    store.register_schema(name, fds, message_type="ctxlink.test.v.Doc", version_field="rev")
    stored = backend.r.hget(f"__ctx:schema:{name}", "digest").decode()
    assert stored == _native.digest("ctxlink.test.v.Doc", "rev", fds)
    assert _native.digest("a.B", "version", b"xyz") == registry_digest("a.B", "version", b"xyz")


def test_missing_version_field_names_the_fix_on_both_engines(store, pb):
    new = edited(pb, "order", lambda s: find_msg(s, ORDER).field.remove(
        find_field(find_msg(s, ORDER), 2)))
    with pytest.raises(ctxlink.SchemaError) as excinfo:
        store.register_schema("order", new, message_type=ORDER)
    assert str(excinfo.value) == (
        "CTXSCHEMA message 'ctxlink.example.Order' has no top-level field 'version' to hold the "
        "context version: add an integer field 'version' or name one with VERSIONFIELD "
        "(version_field= in the SDK)")


def test_adding_fields_passes_both_categories(store, pb, uniq):
    for compat in ("WIRE_JSON", "WIRE"):
        name = uniq("order")
        register(store, name, ORDER, pb.fds("order"), compat=compat)
        assert register(store, name, ORDER, edited(pb, "order", add_field(
            ORDER, "currency", 11, FDP.TYPE_STRING))) == 2


# --------------------------------------------------------------------------- the extension


def test_a_missing_core_extension_fails_import_with_the_fix():
    """The extension is required: without it ``import ctxlink`` names the fix (no silent
    fallback to Python copies of the rules, which no longer exist)."""
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ctxlink._ctxcore':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import ctxlink\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.startswith("the ctxlink validation core extension (ctxlink._ctxcore) is missing: "
                          "in a source checkout run `make ext` (or `pip install .`)"), out


# --------------------------------------------------------------------------- registry hardening


def _dirty(r: redis.Redis) -> int:
    return int(r.info("persistence")["rdb_changes_since_last_save"])


@pytest.mark.parametrize("stored", [b"bogus", b"", b"wire_json", b"\xff\x00WIRE"], ids=repr)
def test_an_unreadable_compat_field_is_wire_json_and_same_definition_writes_nothing(
        store, backend, pb, uniq, stored):
    """A `compat` value written by hand that names no category counts as WIRE_JSON (one with
    another ASCII case names its category) on both engines: the same verdicts and texts, and the
    entry's own definition registered again changes nothing on either (no write)."""
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    backend.r.hset(f"__ctx:schema:{name}", "compat", stored)
    before = _dirty(backend.r)
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert register(store, name, ORDER, pb.fds("order"), compat="WIRE_JSON") == 1
    assert _dirty(backend.r) == before
    assert compat_field(backend.r, name) == stored
    text = refusal(store, name, ORDER, edited(pb, "order", _rename(6, "final")))
    assert text.startswith("CTXSCHEMA incompatible schema (WIRE_JSON, FIELD_SAME_NAME)")
    assert register(store, name, ORDER, pb.fds("order"), compat="WIRE") == 2
    assert compat_field(backend.r, name) == b"WIRE"


def test_a_compat_field_in_another_case_names_its_category_on_both_engines(
        store, backend, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"), compat="WIRE")
    backend.r.hset(f"__ctx:schema:{name}", "compat", "wire")
    before = _dirty(backend.r)
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert _dirty(backend.r) == before
    assert register(store, name, ORDER, edited(pb, "order", _rename(6, "final"))) == 2


def test_a_registry_key_of_another_type_is_ctxschema_on_both_engines(store, backend, pb, uniq):
    """Both engines refuse with the module's text and write nothing (the Lua engine's SDK read
    of the entry got WRONGTYPE)."""
    name = uniq("order")
    backend.r.set(f"__ctx:schema:{name}", "x")
    with pytest.raises(ctxlink.SchemaError) as excinfo:
        register(store, name, ORDER, pb.fds("order"))
    assert str(excinfo.value) == "CTXSCHEMA the registry key holds another type"
    assert backend.r.get(f"__ctx:schema:{name}") == b"x"
    assert not backend.r.exists("__ctx:schemas")


def test_a_registry_index_of_another_type_is_ctxschema_on_both_engines(store, backend, pb, uniq):
    name = uniq("order")
    backend.r.set("__ctx:schemas", "x")
    with pytest.raises(ctxlink.SchemaError) as excinfo:
        register(store, name, ORDER, pb.fds("order"))
    assert str(excinfo.value) == (
        "CTXSCHEMA the registry index '__ctx:schemas' holds another type")
    assert not backend.r.exists(f"__ctx:schema:{name}")


def test_a_concurrent_registration_is_retried_by_the_sdk(store, backend, engine, pb, uniq,
                                                         monkeypatch):
    """Another admin registers between the Lua engine's read of the entry and its write: the
    SDK decides again from the entry as it is now and writes (the module's registration is one
    atomic command, so it never sees this), instead of surfacing "concurrent registration"."""
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    other = ctxlink.connect(backend.r, engine=engine)
    real = _native.check_change
    calls: list[str] = []

    def interloper(prev, nxt, compat, force):
        calls.append(compat)
        real(prev, nxt, compat, force)
        if len(calls) == 1:  # the other admin's COMPAT-only change lands after our decision
            monkeypatch.setattr(_native, "check_change", real)
            assert register(other, name, ORDER, pb.fds("order"), compat="WIRE") == 2
            monkeypatch.setattr(_native, "check_change", interloper)

    monkeypatch.setattr(_native, "check_change", interloper)
    grown = edited(pb, "order", add_field(ORDER, "currency", 11, FDP.TYPE_STRING))
    if engine == "module":  # decided by the server alone: nothing slips in between
        assert register(store, name, ORDER, grown) == 2
        assert calls == []
        return
    # decided again against the revision the interloper wrote, whose WIRE category it keeps
    assert register(store, name, ORDER, grown) == 3
    assert calls == ["WIRE_JSON", "WIRE"]
    assert compat_field(backend.r, name) == b"WIRE"
    assert store.get_schema(name).descriptor_set == grown


# A revision edited by hand is read as CTX.SCHEMA.SET reads it (Redis' strict integer parse:
# no sign, leading zero, space or fraction, at most 2^63-1); what does not parse, or is below 1,
# counts as 0, so the next registration writes revision 1.
HAND_REVISIONS = [(b"7", 7, 8), (b"007", None, 1), (b"-3", -3, 1), (b"+7", None, 1),
                  (b"1.5", None, 1), (b" 7", None, 1), (b"", None, 1),
                  (b"99999999999999999999", None, 1)]


@pytest.mark.parametrize("stored,read,written", HAND_REVISIONS, ids=repr)
def test_a_revision_edited_by_hand_reads_and_grows_alike_on_both_engines(
        store, backend, pb, uniq, stored, read, written):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    backend.r.hset(f"__ctx:schema:{name}", "revision", stored)
    info = store.get_schema(name)
    assert (info and info.revision) == read
    grown = edited(pb, "order", add_field(ORDER, "currency", 11, FDP.TYPE_STRING))
    assert register(store, name, ORDER, grown) == written
    assert store.get_schema(name).revision == written


@pytest.mark.parametrize("stored", [b"abc", b"0", b"-3", b"007", b""], ids=repr)
def test_the_same_definition_over_an_unreadable_revision_writes_revision_1(
        store, backend, pb, uniq, stored):
    """Nothing to keep: the entry is written again as the module does, revision 0 + 1 (the Lua
    engine wrote revision 0, which CTX.SCHEMA.GET then read as an entry)."""
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    backend.r.hset(f"__ctx:schema:{name}", "revision", stored)
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert backend.r.hget(f"__ctx:schema:{name}", "revision") == b"1"


# --------------------------------------------------------------------------- propagation


AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0), ("repl-ping-replica-period", 3600)]


def test_registrations_reach_the_aof_and_a_replica_with_compat_and_survive_a_reload(
        engine, module_servers, pb, uniq):
    """What CTX.SCHEMA.SET (module) and schema_set.lua (Lua engine) propagate carries the compat
    field: the AOF's HSET has it, the replica's entry equals the primary's; a COMPAT-only change
    and a FORCE with COMPAT propagate theirs; nothing is propagated for the same definition
    again; after DEBUG RELOAD (RDB round trip) the entry and its category are kept."""
    import servers as srv

    module = engine == "module"
    primary = module_servers.start(module=module, appendonly=True, config=AOF)
    replica = module_servers.replica(primary, module=module)
    store = ctxlink.connect(primary.client(), engine=engine)
    name = uniq("order")
    key = f"__ctx:schema:{name}"
    tail = srv.AofTail(primary)

    # AofTail reads Redis 7's incremental AOF files (the sanitizer runs use Redis 6.2: there the
    # replica's copy is the check)
    aof = int(primary.info("server")["redis_version"].split(".")[0]) >= 7

    def hset_compat(expected: list[bytes]) -> None:
        cmds = [c for c in tail.commands() if c[0].upper() == b"HSET"]
        tail.mark()
        if aof:
            assert [dict(zip(c[2::2], c[3::2])).get(b"compat") for c in cmds] == expected

    assert register(store, name, ORDER, pb.fds("order"), compat="WIRE") == 1
    hset_compat([b"WIRE"])
    assert register(store, name, ORDER, pb.fds("order"), compat="WIRE_JSON") == 2
    hset_compat([b"WIRE_JSON"])
    assert register(store, name, ORDER, pb.fds("order")) == 2
    hset_compat([])
    assert register(store, name, ORDER, pb.fds("order_v2_incompat"), force=True,
                    compat="WIRE") == 3
    hset_compat([b"WIRE"])
    srv.wait_replicated(primary, replica)
    assert replica.r.hgetall(key) == primary.r.hgetall(key)
    assert replica.r.smembers("__ctx:schemas") == primary.r.smembers("__ctx:schemas")
    before = primary.r.hgetall(key)
    primary.r.execute_command("DEBUG", "RELOAD")
    assert primary.r.hgetall(key) == before
    assert register(store, name, ORDER, pb.fds("order_v2_incompat")) == 3
    assert "FIELD_" in refusal(store, name, ORDER, pb.fds("order"))


@pytest.mark.parametrize("fields", [{"foo": "bar"}, {"revision": "4"}, {"compat": "WIRE"}],
                         ids=repr)
def test_a_registry_hash_without_an_entrys_fields_cannot_be_read_on_both_engines(
        store, backend, pb, uniq, fields):
    """A hash at the entry's key that is not a whole entry is a registered revision that cannot
    be read (the module's verdict), also when it has none of an entry's fields."""
    name = uniq("order")
    backend.r.hset(f"__ctx:schema:{name}", mapping=fields)
    assert refusal(store, name, ORDER, pb.fds("order")) == (
        "CTXSCHEMA the registered revision cannot be read; use FORCE to replace it")
    assert register(store, name, ORDER, pb.fds("order"), force=True) >= 1
    assert store.get_schema(name).descriptor_set == pb.fds("order")


def test_reregistering_puts_a_name_missing_from_the_index_back_on_both_engines(
        store, backend, pb, uniq):
    """An entry whose name is missing from `__ctx:schemas` (removed by hand, or a registration
    whose SADD did not happen) is repaired by registering its own definition again, under the
    same revision, like a damaged entry."""
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    backend.r.srem("__ctx:schemas", name)
    assert name not in store.schemas()
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert name in store.schemas()
    before = _dirty(backend.r)
    assert register(store, name, ORDER, pb.fds("order")) == 1
    assert _dirty(backend.r) == before


def test_the_missing_version_field_message_keeps_its_fix_with_long_names(store, pb):
    """The longest type name and version field the message quotes still leave its fix whole."""
    long_type = "ctxlink.example." + "O" * 80
    fds = edited(pb, "order", lambda s: setattr(find_msg(s, ORDER), "name", "O" * 80))
    with pytest.raises(ctxlink.SchemaError) as excinfo:
        store.register_schema("order", fds, message_type=long_type, version_field="v" * 60)
    text = str(excinfo.value)
    assert len(text.encode()) <= len("CTXSCHEMA ") + 255, len(text)
    assert text.endswith("or name one with VERSIONFIELD (version_field= in the SDK)"), text


def test_force_with_compat_over_an_unreadable_entry_sets_both_on_both_engines(
        store, backend, pb, uniq):
    name = uniq("order")
    register(store, name, ORDER, pb.fds("order"))
    _break_entry(backend.r, name)
    assert register(store, name, ORDER, pb.fds("order_v2_incompat"), force=True,
                    compat="WIRE") == 2
    assert compat_field(backend.r, name) == b"WIRE"
    assert store.get_schema(name).descriptor_set == pb.fds("order_v2_incompat")
    # the category is now WIRE: a rename passes without FORCE
    assert register(store, name, ORDER, edited(pb, "order_v2_incompat", _rename(6, "x"))) == 3
