"""The schema registry: CTX.SCHEMA.SET / GET / LIST / DEL, descriptor-set checks, version field
rules, wire compatibility of new revisions, the registry keys themselves
(docs/PROTOCOL.md, "Schema registry" and "CTX.SCHEMA.SET")."""

from __future__ import annotations


import pytest
import redis
from google.protobuf import descriptor_pb2

from backends import make_backend, start_engine_server
from helpers import (NO_COMMAND_LINE, assert_error, error_text, key_state,
                     nothing_written, registry_digest, registry_entry, registry_snapshot,
                     write_registry)
from wire import f_len, f_str, f_varint

FDP = descriptor_pb2.FieldDescriptorProto
ORDER = "ctxlink.example.Order"
REGISTRY_FIELDS = {b"type", b"fds", b"revision", b"vfield", b"digest"}


def reg_key(name: str) -> str:
    return f"__ctx:schema:{name}"


# --------------------------------------------------------------------------- descriptor editing


def find_msg(fdset, full: str):
    def walk(m, name):
        if name == full:
            return m
        for n in m.nested_type:
            found = walk(n, f"{name}.{n.name}")
            if found is not None:
                return found
        return None
    for f in fdset.file:
        for m in f.message_type:
            found = walk(m, f"{f.package}.{m.name}" if f.package else m.name)
            if found is not None:
                return found
    raise KeyError(full)


def find_field(msg, number: int):
    for fd in msg.field:
        if fd.number == number:
            return fd
    raise KeyError(number)


def retype(fd, type_, type_name: str = "", label=None):
    fd.type = type_
    if type_name:
        fd.type_name = type_name
    else:
        fd.ClearField("type_name")
    if label is not None:
        fd.label = label
    fd.ClearField("options")


def edited(pb, proto: str, *edits) -> bytes:
    s = pb.fdset(proto)
    for edit in edits:
        edit(s)
    return s.SerializeToString()


def on_field(full: str, number: int, fn):
    return lambda s: fn(find_field(find_msg(s, full), number))


def remove_field(full: str, number: int):
    def edit(s):
        m = find_msg(s, full)
        keep = [f for f in m.field if f.number != number]
        del m.field[:]
        m.field.extend(keep)
    return edit


def add_field(full: str, name: str, number: int, type_, label=FDP.LABEL_OPTIONAL, type_name=""):
    def edit(s):
        fd = find_msg(s, full).field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            fd.type_name = type_name
    return edit


def add_message(file_index: int, name: str, fields):
    def edit(s):
        m = s.file[file_index].message_type.add(name=name)
        for fname, number, type_ in fields:
            m.field.add(name=fname, number=number, type=type_, label=FDP.LABEL_OPTIONAL)
    return edit


def tiny_fds(package: str = "t") -> bytes:
    f = descriptor_pb2.FileDescriptorProto(name="t.proto", package=package, syntax="proto3")
    f.message_type.add(name="T").field.add(name="version", number=1, type=FDP.TYPE_INT64,
                                          label=FDP.LABEL_OPTIONAL)
    return descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString()


# --------------------------------------------------------------------------- SET / GET / LIST / DEL


def test_schema_set_returns_revision_1_then_2(backend, pb, uniq):
    name = uniq("order")
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    assert backend.schema_set(name, ORDER, pb.fds("order_v2_compat")) == 2
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 3


def test_schema_get_returns_type_descriptor_set_and_revision(backend, pb, uniq):
    name = uniq("order")
    fds = pb.fds("order")
    backend.schema_set(name, ORDER, fds)
    assert backend.schema_get(name) == [ORDER.encode(), fds, 1]
    backend.schema_set(name, ORDER, pb.fds("order_v2_compat"))
    assert backend.schema_get(name) == [ORDER.encode(), pb.fds("order_v2_compat"), 2]


def test_registering_the_same_definition_again_changes_nothing(backend, pb, r, uniq):
    name = uniq("order")
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    with nothing_written(r):
        assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
        assert backend.schema_set(name, ORDER, pb.fds("order"), force=True) == 1
        assert backend.schema_set(name, ORDER, pb.fds("order"), versionfield="version") == 1
    assert backend.schema_set(name, ORDER, pb.fds("order_v2_compat")) == 2
    with nothing_written(r):
        assert backend.schema_set(name, ORDER, pb.fds("order_v2_compat")) == 2
    assert backend.schema_get(name)[2] == 2


def test_another_version_field_is_another_definition(backend, pb, r, uniq):
    name = uniq("order")
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    assert backend.schema_set(name, ORDER, pb.fds("order"), versionfield="base_price") == 2
    assert r.hget(reg_key(name), "vfield") == b"base_price"
    assert backend.cas("k", 0, pb.order(0, base_price=1), schema=name) == 1


def test_schema_get_of_unknown_name_is_nil(backend):
    assert backend.schema_get("nosuch") is None


def test_schema_list_is_sorted_bytewise(backend, pb):
    assert backend.schema_list() == []
    names = ["order", "b", "B", "a", "_x", "0", "a.b", "a:b", "a-b", "Z", "aa"]
    for n in names:
        pb.register(backend, "order", name=n)
    assert backend.schema_list() == sorted(n.encode() for n in names)


def test_schema_del_replies_1_then_0(backend, pb, r):
    pb.register(backend, "order")
    assert backend.schema_del("order") == 1
    assert backend.schema_del("order") == 0
    assert backend.schema_get("order") is None
    assert backend.schema_list() == []
    assert r.exists(reg_key("order")) == 0
    assert r.sismember("__ctx:schemas", "order") == 0


def test_schema_del_of_unknown_name_writes_nothing(backend, pb, r):
    pb.register(backend, "order")
    with nothing_written(r):
        assert backend.schema_del("nosuch") == 0


def test_deleted_schema_blocks_writes_but_not_get_or_del(backend, pb, r):
    pb.register(backend, "order")
    assert backend.cas("order:1", 0, pb.order(1), schema="order") == 1
    assert backend.cas("order:2", 0, pb.order(1), schema="order") == 1
    backend.schema_del("order")
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "order:1", 1, pb.order(2))
        assert_error("CTXSCHEMA", backend.cas, "order:1", 1, pb.order(2), schema="order")
        assert_error("CTXSCHEMA", backend.cas, "order:3", 0, pb.order(1), schema="order")
    assert backend.get("order:1")[:3] == [1, pb.order(1), b"order"]
    assert backend.delete("order:1", 1) == 1
    # registering the name again makes the remaining contexts writable again, from revision 1
    assert pb.register(backend, "order") == 1
    assert backend.cas("order:2", 1, pb.order(2)) == 2


def test_schema_set_does_not_touch_contexts(backend, pb, r):
    pb.register(backend, "order")
    backend.cas("order:1", 0, pb.order(1), schema="order")
    before = key_state(r, "order:1")
    pb.register(backend, "order")
    backend.schema_del("order")
    assert key_state(r, "order:1") == before


# --------------------------------------------------------------------------- registry keys


def entry_fields(backend, r, name) -> dict:
    """The fields of a registry entry, the same on both engines: nothing executable is stored
    (the Lua engine's plan is generated by the SDK from the entry: PROTOCOL.md, "The validation
    plan")."""
    entry = r.hgetall(reg_key(name))
    assert b"plan" not in entry, entry
    return entry


def test_registry_is_kept_in_plain_keys_with_the_documented_fields(backend, pb, r, uniq):
    name = uniq("order")
    fds = pb.fds("order")
    backend.schema_set(name, ORDER, fds)
    pb.register(backend, "doc")  # VERSIONFIELD rev
    assert r.type(reg_key(name)) == b"hash"
    assert entry_fields(backend, r, name) == registry_entry(ORDER, fds)
    assert r.hget(reg_key(name), "digest").decode() == registry_digest(ORDER, "version", fds)
    doc = entry_fields(backend, r, "doc")
    assert doc == registry_entry("ctxlink.test.v.Doc", pb.fds("versions"), vfield="rev")
    assert r.type("__ctx:schemas") == b"set"
    assert r.smembers("__ctx:schemas") == {name.encode(), b"doc"}
    v2 = pb.fds("order_v2_compat")
    backend.schema_set(name, ORDER, v2)
    assert entry_fields(backend, r, name) == registry_entry(ORDER, v2, revision=2)
    # nothing else is created: no module-private keys
    assert set(r.keys("*")) == {b"__ctx:schemas", reg_key(name).encode(), reg_key("doc").encode()}


def test_digest_example_from_the_protocol():
    import hashlib
    assert registry_digest("a.B", "version", b"xyz") == hashlib.sha1(b"3:a.B7:version" + b"xyz").hexdigest()


def test_registry_written_by_hand_is_used(backend, pb, r):
    """One registry for both engines: HSET/SADD of the documented fields is a registration."""
    write_registry(r, "hand", ORDER, pb.fds("order"))
    assert backend.schema_get("hand") == [ORDER.encode(), pb.fds("order"), 1]
    assert backend.schema_list() == [b"hand"]
    assert backend.cas("o", 0, pb.order(1), schema="hand") == 1
    assert_error("CTXINVALID", backend.cas, "o", 1, f_varint(2, 2) + f_len(1, b"\xff"))


def _consistent(r, name, **fields):
    """Edit fields and store the digest that matches the edited content."""
    key = reg_key(name)
    r.hset(key, mapping=fields)
    e = r.hgetall(key)
    r.hset(key, "digest", registry_digest(e.get(b"type", b""), e.get(b"vfield", b""), e.get(b"fds", b"")))


def edit_garbage_fds(r, name):
    _consistent(r, name, fds=b"\xff\xff garbage")


def edit_empty_fds(r, name):
    _consistent(r, name, fds=b"")


def edit_unknown_type(r, name):
    _consistent(r, name, type="ctxlink.example.Nope")


def edit_vfield_missing_field(r, name):
    _consistent(r, name, vfield="nope")


def edit_vfield_string_field(r, name):
    _consistent(r, name, vfield="order_id")


def edit_fds_without_digest_update(r, name):
    r.hset(reg_key(name), mapping={"fds": b"\xff\xff garbage", "digest": "0" * 40})


def edit_digest_wrong(r, name):
    r.hset(reg_key(name), "digest", "f" * 40)


def edit_digest_removed(r, name):
    r.hdel(reg_key(name), "digest")


def edit_fields_removed(r, name):
    r.hdel(reg_key(name), "fds", "type")
    r.hset(reg_key(name), "digest", registry_digest("", "version", b""))


def edit_replaced_by_string(r, name):
    r.delete(reg_key(name))
    r.set(reg_key(name), "garbage")


def edit_hash_deleted(r, name):
    r.delete(reg_key(name))


REGISTRY_EDITS = [edit_garbage_fds, edit_empty_fds, edit_unknown_type, edit_vfield_missing_field,
                  edit_vfield_string_field, edit_fds_without_digest_update, edit_digest_wrong,
                  edit_digest_removed, edit_fields_removed, edit_replaced_by_string,
                  edit_hash_deleted]


@pytest.mark.parametrize("edit", REGISTRY_EDITS, ids=lambda f: f.__name__[5:])
def test_registry_edited_by_hand_to_garbage_fails_closed(backend, pb, r, edit, uniq):
    name = uniq("garbage")
    pb.register(backend, "order", name=name)
    assert backend.cas("o", 0, pb.order(1), schema=name) == 1  # compiled and cached
    edit(r, name)
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "o", 1, pb.order(2))
        assert_error("CTXSCHEMA", backend.cas, "o", 1, pb.order(2), schema=name)
        assert_error("CTXSCHEMA", backend.cas, "n", 0, pb.order(1), schema=name)
    assert backend.get("o")[0] == 1
    assert r.ping()
    # repairing the registry makes the context writable again
    r.delete(reg_key(name))
    r.srem("__ctx:schemas", name)
    assert pb.register(backend, "order", name=name) == 1
    assert backend.cas("o", 1, pb.order(2)) == 2


@pytest.mark.parametrize("digest", ["0" * 40, "", "F" * 40, "not a digest"], ids=repr)
def test_hand_written_entry_with_a_wrong_digest_is_refused(backend, pb, r, uniq, digest):
    name = uniq("damaged")
    write_registry(r, name, ORDER, pb.fds("order"))
    r.hset(reg_key(name), "digest", digest)
    with nothing_written(r):
        text = assert_error("CTXSCHEMA", backend.cas, "o", 0, pb.order(1), schema=name)
    assert "damaged" in text, text


def test_entry_edited_behind_a_warm_cache_is_refused_after_a_restart(engine, servers, module_so, pb):
    s = start_engine_server(servers, engine)
    b = make_backend(engine, s)
    pb.register(b, "order")
    assert b.cas("o", 0, pb.order(1), schema="order") == 1
    s.r.hset(reg_key("order"), "vfield", "base_price")  # digest left as it was
    s.r.save()
    s2 = servers.restart(s)
    b2 = make_backend(engine, s2)
    text = assert_error("CTXSCHEMA", b2.cas, "o", 1, pb.order(2))
    assert "damaged" in text, text


def test_extra_plan_field_written_by_the_lua_engine_is_ignored(backend, pb, r, uniq):
    name = uniq("plan")
    pb.register(backend, "order", name=name)
    r.hset(reg_key(name), "plan", '{"v":1,"digest":"stale"}')
    assert backend.cas("o", 0, pb.order(1), schema=name) == 1
    assert backend.schema_get(name) == [ORDER.encode(), pb.fds("order"), 1]
    assert_error("CTXINVALID", backend.cas, "o", 1, f_varint(2, 2) + f_len(1, b"\xff"))


def test_registry_replaced_after_flushall_is_picked_up(backend, pb, r, uniq):
    """"A registry changed by ... FLUSHALL ... is picked up on the next call", even though the
    new registration has the same revision number (1) as the cached one."""
    name = uniq("flush")
    pb.register(backend, "node", name=name)
    node_payload = f_varint(1, 1) + f_str(3, "label")
    assert backend.cas("x", 0, node_payload, schema=name) == 1
    r.flushall()
    assert_error("CTXSCHEMA", backend.cas, "x", 0, pb.order(1), schema=name)
    pb.register(backend, "order", name=name)  # revision 1 again, another message type
    assert backend.cas("x", 0, pb.order(1, order_id="o"), schema=name) == 1
    assert_error("CTXINVALID", backend.cas, "y", 0, node_payload, schema=name)


def test_registry_restored_with_restore_is_picked_up(backend, pb, r, uniq):
    name, other = uniq("restore"), uniq("restore")
    pb.register(backend, "order", name=name)  # revision 1, Order
    assert backend.cas("o", 0, pb.order(1), schema=name) == 1
    pb.register(backend, "node", name=other)  # revision 1, Node
    r.restore(reg_key(name), 0, r.dump(reg_key(other)), replace=True)
    assert backend.schema_get(name) == [b"ctxlink.test.Node", pb.fds("node"), 1]
    assert backend.cas("n", 0, f_varint(1, 1) + f_str(3, "x"), schema=name) == 1
    assert_error("CTXINVALID", backend.cas, "o", 1, pb.order(2, order_id="o"))


# --------------------------------------------------------------------------- bad descriptor sets


def _assert_set_rejected(backend, r, name, type_, fds, **kw):
    before = registry_snapshot(r)
    with nothing_written(r):
        text = assert_error("CTXSCHEMA", backend.schema_set, name, type_, fds, **kw)
    assert registry_snapshot(r) == before
    return text


@pytest.mark.parametrize("fds", [
    b"\xff\xff\xff\xff",
    b"garbage that is not protobuf",
    b"\x0a\x05abc",                  # truncated FileDescriptorProto
    b"\x0a\x02\x08\x01",             # a file whose field 1 (name) has the wrong wire type
], ids=["ff", "text", "truncated", "wrong-wire-type"])
def test_unparsable_descriptor_set_is_rejected(backend, r, fds):
    _assert_set_rejected(backend, r, "bad", ORDER, fds)


def test_truncated_descriptor_set_is_rejected(backend, pb, r):
    fds = pb.fds("order")
    _assert_set_rejected(backend, r, "bad", ORDER, fds[: len(fds) // 2])
    _assert_set_rejected(backend, r, "bad", ORDER, fds[:-1])


def test_missing_import_is_rejected(backend, pb, r):
    # built without --include_imports
    _assert_set_rejected(backend, r, "inv", "ctxlink.test.split.Invoice",
                         pb.fds("split_invoice", include_imports=False))
    # built with it, then the imported file dropped
    s = pb.fdset("split_invoice")
    del s.file[0]
    _assert_set_rejected(backend, r, "inv", "ctxlink.test.split.Invoice", s.SerializeToString())


def test_file_listed_twice_is_rejected(backend, pb, r):
    s = pb.fdset("split_invoice")
    s.file.append(s.file[0])
    _assert_set_rejected(backend, r, "inv", "ctxlink.test.split.Invoice", s.SerializeToString())


def test_files_may_appear_in_any_order(backend, pb, r):
    s = pb.fdset("split_invoice")
    files = list(s.file)
    del s.file[:]
    s.file.extend(reversed(files))
    assert backend.schema_set("inv", "ctxlink.test.split.Invoice", s.SerializeToString()) == 1
    money = f_varint(1, 5) + f_str(2, "EUR")
    assert backend.cas("i", 0, f_varint(1, 1) + f_len(3, money), schema="inv") == 1


UPB_REFUSES = {
    "unresolvable-type": on_field("ctxlink.example.LineItem", 1,
                                  lambda fd: retype(fd, FDP.TYPE_MESSAGE, ".ctxlink.example.Missing")),
    "duplicate-field-number": add_field(ORDER, "again", 2, FDP.TYPE_INT64),
    "duplicate-field-name": add_field(ORDER, "version", 50, FDP.TYPE_INT64),
    "proto3-required": on_field(ORDER, 4, lambda fd: setattr(fd, "label", FDP.LABEL_REQUIRED)),
    "field-number-0": on_field(ORDER, 4, lambda fd: setattr(fd, "number", 0)),
}


@pytest.mark.parametrize("edit", list(UPB_REFUSES), ids=str)
def test_file_refused_by_upb_is_rejected(backend, pb, r, edit):
    _assert_set_rejected(backend, r, "bad", ORDER, edited(pb, "order", UPB_REFUSES[edit]))


def test_descriptor_set_over_max_schema_bytes_is_rejected(engine, servers, module_so, pb):
    limit = 200
    s = start_engine_server(servers, engine, {"max-schema-bytes": limit})
    b = make_backend(engine, s)
    _assert_set_rejected(b, s.r, "order", ORDER, pb.fds("order"))
    by_size = {len(tiny_fds("t" + "x" * n)): "t" + "x" * n for n in range(300)}
    over = by_size[limit + 1]
    _assert_set_rejected(b, s.r, "t", f"{over}.T", tiny_fds(over))
    exact = by_size[limit]
    assert b.schema_set("t", f"{exact}.T", tiny_fds(exact)) == 1
    assert b.cas("k", 0, f_varint(1, 1), schema="t") == 1


# --------------------------------------------------------------------------- message type


@pytest.mark.parametrize("type_", ["ctxlink.example.Nope", "Order", "example.Order",
                                   "ctxlink.example.OrderStatus", "ctxlink.example", ""],
                         ids=repr)
def test_unknown_message_type_is_rejected(backend, pb, r, type_):
    _assert_set_rejected(backend, r, "order", type_, pb.fds("order"))


def test_nested_and_imported_message_types_can_be_registered(backend, pb):
    assert backend.schema_set("li", "ctxlink.example.LineItem", pb.fds("order"),
                              versionfield="quantity") == 1
    assert backend.cas("li", 0, f_varint(2, 1), schema="li") == 1


# --------------------------------------------------------------------------- version field


@pytest.mark.parametrize("type_", ["NoVersion", "StringVersion", "BytesVersion", "DoubleVersion",
                                   "FloatVersion", "BoolVersion", "RepeatedVersion",
                                   "MessageVersion", "Doc"])
def test_message_without_a_singular_integer_version_field_is_rejected(backend, pb, r, type_):
    _assert_set_rejected(backend, r, "v", f"ctxlink.test.v.{type_}", pb.fds("versions"))


@pytest.mark.parametrize("type_,encode", [
    ("Int32Version", lambda v: f_varint(1, v)),
    ("Uint64Version", lambda v: f_varint(1, v)),
    ("Sint64Version", lambda v: f_varint(1, (v << 1) ^ (v >> 63))),
    ("Fixed64Version", lambda v: bytes([0x09]) + v.to_bytes(8, "little")),
    ("Sfixed32Version", lambda v: bytes([0x0D]) + v.to_bytes(4, "little")),
    ("OptionalVersion", lambda v: f_varint(1, v)),
])
def test_any_integer_type_can_be_the_version_field(backend, pb, r, type_, encode, uniq):
    name = uniq("int")
    assert backend.schema_set(name, f"ctxlink.test.v.{type_}", pb.fds("versions")) == 1
    assert backend.cas("k", 0, encode(1), schema=name) == 1
    assert backend.cas("k", 1, encode(2)) == 2
    assert_error("CTXVERSION", backend.cas, "k", 2, encode(2))


def test_proto2_required_version_field_is_accepted(backend, pb):
    assert pb.register(backend, "strict") == 1


def test_versionfield_option_selects_the_version_field(backend, pb, r):
    doc = pb.cls("versions", "ctxlink.test.v.Doc")
    assert backend.schema_set("doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                              versionfield="rev") == 1
    assert r.hget(reg_key("doc"), "vfield") == b"rev"
    assert backend.cas("d", 0, doc(id="d", rev=1).SerializeToString(), schema="doc") == 1
    assert backend.cas("d", 1, doc(id="d", rev=2, body="b").SerializeToString()) == 2
    with nothing_written(r):
        assert_error("CTXVERSION", backend.cas, "d", 2, doc(rev=2).SerializeToString())
        # a field named "version" nested in sub does not count
        assert_error("CTXVERSION", backend.cas, "d", 2,
                     doc(rev=9, sub={"version": 3}).SerializeToString())


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_versionfield_keyword_is_case_insensitive(backend, pb):
    assert backend.command("CTX.SCHEMA.SET", "doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                           "versionField", "rev") == 1


@pytest.mark.parametrize("field", ["nope", "body", "sub", "revs", "score", "sub.version", "id",
                                   "Rev"], ids=repr)
def test_versionfield_naming_a_missing_or_non_integer_field_is_rejected(backend, pb, r, field):
    _assert_set_rejected(backend, r, "doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                         versionfield=field)


# --------------------------------------------------------------------------- syntax and names


@pytest.mark.parametrize("options", [
    ["FORCE", "FORCE"],
    ["force", "FORCE"],
    ["VERSIONFIELD"],
    ["VERSIONFIELD", "version", "VERSIONFIELD", "version"],
    ["BOGUS"],
    ["SCHEMA", "x"],
    ["FORCE", "extra"],
    ["FORCE\0junk"],  # arguments are binary: a keyword is the whole argument
    ["VERSIONFIELD\0", "version"],
], ids=lambda o: "_".join(o).replace("\0", "NUL"))
@pytest.mark.module_only(NO_COMMAND_LINE)
def test_schema_set_with_bad_options_is_err(backend, pb, r, options):
    with nothing_written(r):
        assert_error("ERR", backend.command, "CTX.SCHEMA.SET", "order", ORDER, pb.fds("order"),
                     *options)


@pytest.mark.module_only(NO_COMMAND_LINE)
def test_schema_set_options_in_any_order(backend, pb):
    assert backend.command("CTX.SCHEMA.SET", "doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                           "VERSIONFIELD", "rev", "FORCE") == 1
    assert backend.command("CTX.SCHEMA.SET", "doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                           "force", "versionfield", "rev") == 1  # same definition: unchanged


@pytest.mark.parametrize("name", ["a", "Z", "0", "A-Za-z0-9_.-:", "x" * 128, "order:v2.1",
                                  "___", "..", "::"], ids=lambda n: repr(n[:20]))
def test_valid_schema_names_are_accepted(backend, pb, name):
    assert pb.register(backend, "order", name=name) == 1
    assert backend.schema_list() == [name.encode()]
    assert backend.cas("k", 0, pb.order(1), schema=name) == 1


@pytest.mark.parametrize("name", ["", "x" * 129, "a b", "a/b", "a*", "é", "a\x00b", "{tag}",
                                  "a\nb"], ids=repr)
def test_invalid_schema_names_are_rejected(backend, pb, r, name):
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.schema_set, name, ORDER, pb.fds("order"))


@pytest.mark.parametrize("name", ["", "x" * 129, "a b", "é"], ids=repr)
def test_create_with_an_invalid_schema_name_is_ctxschema(backend, pb, r, name):
    with nothing_written(r):
        assert_error("CTXSCHEMA", backend.cas, "k", 0, pb.order(1), schema=name)


# --------------------------------------------------------------------------- compatibility

T = FDP
ORDER_EDITS = {
    # name: (edits, compatible)
    "int64-to-uint64": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_UINT64)),), True),
    "int64-to-int32": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_INT32)),), True),
    "int64-to-bool": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_BOOL)),), True),
    "enum-to-int32": ((on_field(ORDER, 3, lambda f: retype(f, T.TYPE_INT32)),), True),
    "int64-to-sint64": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_SINT64)),), False),
    "int64-to-fixed64": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_FIXED64)),), False),
    "int64-to-double": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_DOUBLE)),), False),
    "int64-to-fixed32": ((on_field(ORDER, 4, lambda f: retype(f, T.TYPE_FIXED32)),), False),
    "string-to-bytes": ((on_field(ORDER, 1, lambda f: retype(f, T.TYPE_BYTES)),), True),
    "string-to-message": ((on_field(ORDER, 1, lambda f: retype(
        f, T.TYPE_MESSAGE, ".ctxlink.example.LineItem")),), False),
    "message-to-string": ((on_field(ORDER, 10, lambda f: retype(f, T.TYPE_STRING)),), False),
    "remove-field": ((remove_field(ORDER, 6),), True),
    "rename-field": ((on_field(ORDER, 6, lambda f: setattr(f, "name", "final")),), True),
    "add-field": ((add_field(ORDER, "currency", 11, T.TYPE_STRING),), True),
    "add-message-field": ((add_field(ORDER, "extra", 12, T.TYPE_MESSAGE,
                                     type_name=".ctxlink.example.LineItem"),), True),
    "singular-to-repeated": ((on_field(ORDER, 4, lambda f: setattr(f, "label", T.LABEL_REPEATED)),), False),
    "repeated-to-singular": ((on_field(ORDER, 10, lambda f: setattr(f, "label", T.LABEL_OPTIONAL)),), False),
    "nested-uint32-to-string": ((on_field("ctxlink.example.LineItem", 2,
                                          lambda f: retype(f, T.TYPE_STRING)),), False),
    "nested-uint32-to-int64": ((on_field("ctxlink.example.LineItem", 2,
                                         lambda f: retype(f, T.TYPE_INT64)),), True),
    "nested-add-field": ((add_field("ctxlink.example.LineItem", "note", 3, T.TYPE_STRING),), True),
    # message types are matched through the fields that reach them, not by name
    "field-retyped-to-incompatible-message": ((
        add_message(0, "LineItem2", [("sku", 1, T.TYPE_STRING), ("quantity", 2, T.TYPE_STRING)]),
        on_field(ORDER, 10, lambda f: setattr(f, "type_name", ".ctxlink.example.LineItem2"))), False),
    "field-retyped-to-compatible-message": ((
        add_message(0, "LineItem2", [("sku", 1, T.TYPE_BYTES), ("quantity", 2, T.TYPE_UINT64)]),
        on_field(ORDER, 10, lambda f: setattr(f, "type_name", ".ctxlink.example.LineItem2"))), True),
    "type-changed-but-only-reached-through-a-new-field": ((
        remove_field(ORDER, 10),
        add_field(ORDER, "lines", 12, T.TYPE_MESSAGE, T.LABEL_REPEATED, ".ctxlink.example.LineItem"),
        on_field("ctxlink.example.LineItem", 2, lambda f: retype(f, T.TYPE_STRING))), True),
}

KITCHEN = "ctxlink.test.Kitchen"
KITCHEN_EDITS = {
    "fixed32-to-float": ((on_field(KITCHEN, 12, lambda f: retype(f, T.TYPE_FLOAT)),), True),
    "fixed32-to-sfixed32": ((on_field(KITCHEN, 12, lambda f: retype(f, T.TYPE_SFIXED32)),), True),
    "double-to-fixed64": ((on_field(KITCHEN, 13, lambda f: retype(f, T.TYPE_FIXED64)),), True),
    "double-to-sfixed64": ((on_field(KITCHEN, 13, lambda f: retype(f, T.TYPE_SFIXED64)),), True),
    "double-to-float": ((on_field(KITCHEN, 13, lambda f: retype(f, T.TYPE_FLOAT)),), False),
    "sint32-to-sint64": ((on_field(KITCHEN, 11, lambda f: retype(f, T.TYPE_SINT64)),), True),
    "sint32-to-int32": ((on_field(KITCHEN, 11, lambda f: retype(f, T.TYPE_INT32)),), False),
    "map-value-type-changed": ((on_field(KITCHEN + ".CountsEntry", 2,
                                         lambda f: retype(f, T.TYPE_STRING)),), False),
    "recursive-type-field-changed": ((on_field(KITCHEN, 4, lambda f: retype(f, T.TYPE_STRING)),), False),
    "recursive-type-field-added": ((add_field(KITCHEN, "more", 20, T.TYPE_STRING),), True),
}

STRICT = "ctxlink.test.p2.Strict"
STRICT_EDITS = {
    "add-required": ((add_field(STRICT, "must", 20, T.TYPE_INT32, T.LABEL_REQUIRED),), False),
    "remove-required": ((remove_field(STRICT, 2),), False),
    "remove-nested-required": ((remove_field("ctxlink.test.p2.Inner", 1),), False),
    "add-nested-required": ((add_field("ctxlink.test.p2.Inner", "must", 3, T.TYPE_INT32,
                                       T.LABEL_REQUIRED),), False),
    "add-optional": ((add_field(STRICT, "maybe", 20, T.TYPE_INT32),), True),
    "remove-optional": ((remove_field(STRICT, 6),), True),
    "group-to-message": ((on_field(STRICT, 9, lambda f: retype(
        f, T.TYPE_MESSAGE, ".ctxlink.test.p2.Strict.Grp")),), False),
}

# Wire-compatible edits that change the JSON form: refused under the default category WIRE_JSON,
# accepted under COMPAT WIRE (tests/test_compat.py runs the matrix under both).
JSON_BREAKING = {
    "int64-to-bool", "enum-to-int32", "string-to-bytes", "rename-field",
    "field-retyped-to-compatible-message", "fixed32-to-float", "double-to-fixed64",
    "double-to-sfixed64",
}

COMPAT_CASES = (
    [("order", ORDER, k, e, c) for k, (e, c) in ORDER_EDITS.items()]
    + [("kitchen", KITCHEN, k, e, c) for k, (e, c) in KITCHEN_EDITS.items()]
    + [("strict2", STRICT, k, e, c) for k, (e, c) in STRICT_EDITS.items()]
)


@pytest.mark.parametrize("proto,type_,label,edits,compatible", COMPAT_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in COMPAT_CASES])
def test_reregistration_is_checked_for_wire_compatibility(backend, pb, r, uniq, proto, type_,
                                                          label, edits, compatible):
    name = uniq("compat")
    old = pb.fds(proto)
    new = edited(pb, proto, *edits)
    assert backend.schema_set(name, type_, old) == 1
    if compatible and label not in JSON_BREAKING:  # the default category is WIRE_JSON
        assert backend.schema_set(name, type_, new) == 2
        assert backend.schema_get(name) == [type_.encode(), new, 2]
    else:
        text = _assert_set_rejected(backend, r, name, type_, new)
        assert backend.schema_get(name) == [type_.encode(), old, 1], text
        assert backend.schema_set(name, type_, new, force=True) == 2
        assert backend.schema_get(name) == [type_.encode(), new, 2]


def test_unreachable_message_changes_do_not_matter(backend, pb, uniq):
    name = uniq("compat")
    old = edited(pb, "order", add_message(0, "Unrelated", [("a", 1, T.TYPE_INT64)]))
    new = edited(pb, "order", add_message(0, "Unrelated", [("a", 1, T.TYPE_STRING)]))
    assert backend.schema_set(name, ORDER, old) == 1
    assert backend.schema_set(name, ORDER, new) == 2


def test_compatible_revision_is_accepted_and_used_for_validation(backend, pb, r, uniq):
    name = uniq("order")
    pb.register(backend, "order", name=name)
    v2 = pb.cls("order_v2_compat", ORDER)
    p = v2(version=1, order_id="o", currency="EUR").SerializeToString()
    assert_error("CTXINVALID", backend.cas, "o", 0, p, schema=name)  # field 11 unknown in rev 1
    assert backend.schema_set(name, ORDER, pb.fds("order_v2_compat")) == 2
    assert backend.cas("o", 0, p, schema=name) == 1
    assert backend.cas("o", 1, pb.order(2)) == 2  # old payloads stay valid


def test_incompatible_revision_is_rejected_without_force(backend, pb, r, uniq):
    name = uniq("order")
    pb.register(backend, "order", name=name)
    backend.cas("o", 0, pb.order(1, base_price=5), schema=name)
    text = _assert_set_rejected(backend, r, name, ORDER, pb.fds("order_v2_incompat"))
    assert backend.schema_get(name)[2] == 1
    assert backend.cas("o", 1, pb.order(2, base_price=7)) == 2, text
    # the message names the field and how its wire form changes (int64 -> string)
    assert "base_price" in text and "varint" in text and "bytes" in text, text


def test_force_accepts_an_incompatible_revision_and_validation_follows_it(backend, pb, r, uniq):
    name = uniq("order")
    pb.register(backend, "order", name=name)
    backend.cas("o", 0, pb.order(1, base_price=5), schema=name)
    assert backend.schema_set(name, ORDER, pb.fds("order_v2_incompat"), force=True) == 2
    v2 = pb.cls("order_v2_incompat", ORDER)
    with nothing_written(r):
        text = assert_error("CTXINVALID", backend.cas, "o", 1, pb.order(2, base_price=7))
    assert "base_price" in text, text
    assert backend.cas("o", 1, v2(version=2, base_price="7.00").SerializeToString()) == 2


def test_deleted_name_can_be_registered_again_incompatibly(backend, pb, uniq):
    name = uniq("order")
    pb.register(backend, "order", name=name)
    backend.schema_del(name)
    assert backend.schema_set(name, ORDER, pb.fds("order_v2_incompat")) == 1
    v2 = pb.cls("order_v2_incompat", ORDER)
    assert backend.cas("o", 0, v2(version=1, base_price="1").SerializeToString(), schema=name) == 1


def test_force_on_a_new_name_gives_revision_1(backend, pb):
    assert backend.schema_set("fresh", ORDER, pb.fds("order"), force=True) == 1


def test_recompiling_many_revisions_does_not_leak(backend, pb, r, uniq):
    name = uniq("leak")
    defs = [pb.fds("order"), pb.fds("order_v2_compat")]
    version = 0

    def round_trip(i):
        nonlocal version
        backend.schema_set(name, ORDER, defs[i % 2])
        assert backend.cas("o", version, pb.order(version + 1), schema=name) == version + 1
        version += 1

    for i in range(20):
        round_trip(i)
    r.execute_command("MEMORY", "PURGE")
    before = r.info("memory")["used_memory"]
    for i in range(20, 320):
        round_trip(i)
    r.execute_command("MEMORY", "PURGE")
    grown = r.info("memory")["used_memory"] - before
    assert grown < 4 << 20, f"used_memory grew by {grown} bytes over 300 revisions"


@pytest.mark.parametrize("op", ["set-new-name", "set-next-revision", "del"])
def test_schema_write_over_a_corrupt_name_set_writes_nothing(backend, pb, r, op):
    """``__ctx:schemas`` edited by hand into a string: the schema command must fail without a
    partial write (no registry hash written or deleted on its own, nothing propagated)."""
    pb.register(backend, "order")
    r.delete("__ctx:schemas")
    r.set("__ctx:schemas", "garbage")
    calls = {
        "set-new-name": lambda: backend.schema_set("fresh", ORDER, pb.fds("order")),
        "set-next-revision": lambda: backend.schema_set("order", ORDER, pb.fds("order_v2_compat")),
        "del": lambda: backend.schema_del("order"),
    }
    with nothing_written(r):
        with pytest.raises(redis.ResponseError) as excinfo:
            calls[op]()
    assert error_text(excinfo.value).startswith("CTXSCHEMA "), error_text(excinfo.value)


def test_reregistering_repairs_an_entry_damaged_by_hand(backend, pb, r, uniq):
    """An entry whose content was edited without its digest is refused as damaged once it is
    compiled again: by the module after a reload, by the SDK (Lua engine) when a Store compiles
    it (a Store started after the edit; a running one keeps the plan it made, whose digest the
    script checks), and registering the right definition again restores it under the same
    revision."""
    name = uniq("order")
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    assert backend.cas("k:rep", 0, pb.order(1), schema=name) == 1
    r.hset(reg_key(name), "fds", pb.fds("order_v2_compat"))  # digest left as it was
    r.execute_command("DEBUG", "RELOAD")
    backend = backend.with_client(r)  # a fresh Store on the Lua engine
    assert_error("CTXSCHEMA", backend.cas, "k:rep", 1, pb.order(2))
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    assert r.hget(reg_key(name), "fds") == pb.fds("order")
    assert backend.cas("k:rep", 1, pb.order(2)) == 2


def test_one_name_with_two_definitions_in_two_databases(backend, pb, r, uniq):
    """The registry is per database; each database validates with its own definition."""
    name = uniq("order")
    assert backend.schema_set(name, ORDER, pb.fds("order")) == 1
    other = backend.with_client(backend.server.client(db=1))
    try:
        assert other.schema_set(name, ORDER, pb.fds("order"), versionfield="base_price") == 1
        for i in range(1, 4):
            assert backend.cas("k:db", i - 1, pb.order(i), schema=name) == i
            assert other.cas("k:db", i - 1, pb.order(0, base_price=i), schema=name) == i
    finally:
        other.r.flushdb()
