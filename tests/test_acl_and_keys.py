"""Key declarations and ACL (docs/PROTOCOL.md, "Redis Cluster" and "ACL"): data commands name
their key at position 1 with key specs, schema commands declare none; ACL key patterns apply."""

from __future__ import annotations

import pytest

import ctxvalue
import servers as srv
from helpers import assert_error
from wire import f_varint

# COMMAND INFO key specs, flags and ACL categories of CTX.*, and ACL rules naming CTX.* commands:
# a stock server running the Lua engine has no such commands (it runs EVALSHA, whose only key
# for data scripts is the context key; the registry is read undeclared). ACL lines for agents on
# both engines: tests/test_least_privilege.py.
pytestmark = pytest.mark.module_only(
    reason="key specs, command flags and ACL rules of the CTX.* module commands")

DATA = {  # command: (example args, key-spec flags it must carry, command flags)
    "CTX.GET": (["k"], {b"RO", b"access"}, {b"readonly", b"fast"}),
    "CTX.CAS": (["k", "0", "payload", "SCHEMA", "s", "BY", "w"], {b"RW", b"update"}, {b"write", b"denyoom"}),
    "CTX.PATCH": (["k", "1", "payload", "FIELDS", "1", "4", "READS", "1", "5", "ID", "i"],
                  {b"RW", b"update"}, {b"write", b"denyoom"}),
    "CTX.DEL": (["k", "1", "ID", "i"], {b"RW", b"delete"}, {b"write", b"denyoom"}),
    "CTX.TOUCH": (["k", "1000"], {b"RW", b"update"}, {b"write", b"fast"}),
}
SCHEMA = {
    "CTX.SCHEMA.SET": (["n", "t", "fds"], {b"write", b"denyoom"}),
    "CTX.SCHEMA.GET": (["n"], {b"readonly"}),
    "CTX.SCHEMA.LIST": ([], {b"readonly"}),
    "CTX.SCHEMA.DEL": (["n"], {b"write"}),
}


def command_info(server, name):
    with server.raw() as c:
        reply = c.call("COMMAND", "INFO", name)
    assert isinstance(reply, list) and len(reply) == 1 and reply[0] is not None, \
        f"{name} is not a known command: {reply!r}"
    return reply[0]


def key_specs(info):
    specs = []
    for spec in info[8]:
        d = dict(zip(spec[::2], spec[1::2]))
        specs.append(d)
    return specs


@pytest.mark.parametrize("name", list(DATA))
def test_data_commands_declare_their_key_at_position_1(backend, name):
    info = command_info(backend.server, name)
    assert info[0].lower() == name.lower().encode()
    assert info[3:6] == [1, 1, 1], f"first/last/step of {name}: {info[3:6]}"
    _, spec_flags, cmd_flags = DATA[name]
    flags = {bytes(f) for f in info[2]}
    assert cmd_flags <= flags, f"{name} flags {flags}, expected at least {cmd_flags}"
    if b"readonly" in cmd_flags:
        assert b"write" not in flags
    else:
        assert b"readonly" not in flags
    specs = key_specs(info)
    assert len(specs) == 1, specs
    flags = {bytes(f) for f in specs[0][b"flags"]}
    assert spec_flags <= flags, f"{name} key spec flags {flags}, expected {spec_flags}"


@pytest.mark.parametrize("name", list(SCHEMA))
def test_schema_commands_declare_no_key(backend, name):
    info = command_info(backend.server, name)
    assert info[3:6] == [0, 0, 0], f"first/last/step of {name}: {info[3:6]}"
    assert key_specs(info) == []
    _, cmd_flags = SCHEMA[name]
    flags = {bytes(f) for f in info[2]}
    assert cmd_flags <= flags, f"{name} flags {flags}, expected at least {cmd_flags}"
    args = SCHEMA[name][0]
    with backend.server.raw() as c:
        reply = c.call("COMMAND", "GETKEYS", name, *args)
    assert isinstance(reply, srv.RawError), f"COMMAND GETKEYS {name} returned keys {reply!r}"


@pytest.mark.parametrize("name", list(DATA))
def test_command_getkeys_returns_the_key(backend, name):
    args = DATA[name][0]
    with backend.server.raw() as c:
        assert c.call("COMMAND", "GETKEYS", name, "order:7", *args[1:]) == [b"order:7"]


# --------------------------------------------------------------------------- ACL


@pytest.fixture
def users(backend):
    created = []

    def make(name, *rules):
        backend.r.execute_command("ACL", "SETUSER", name, "reset", "on", ">secret", *rules)
        created.append(name)
        c = backend.server.client(username=name, password="secret")
        return backend.with_client(c)

    yield make
    for name in created:
        backend.r.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def seeded(backend, pb):
    pb.register(backend, "order")
    backend.cas("order:1", 0, pb.order(1), schema="order")
    backend.cas("other:1", 0, pb.order(1), schema="order")
    return backend


def test_key_pattern_limits_data_commands(seeded, users, pb, r):
    agent = users("agent", "~order:*", "+ctx.get", "+ctx.cas", "+ctx.patch", "+ctx.del")
    assert_error("NOPERM", agent.patch, "other:1", 1, f_varint(4, 1), [4])
    assert_error("NOPERM", agent.get, "other:1")
    assert_error("NOPERM", agent.cas, "other:1", 1, pb.order(2))
    assert_error("NOPERM", agent.cas, "other:2", 0, pb.order(1), schema="order")
    assert_error("NOPERM", agent.delete, "other:1", 1)
    assert_error("NOPERM", agent.cas, "__ctx:schema:order", 0, pb.order(1), schema="order")
    assert ctxvalue.decode(r.get("other:1")).version == 1
    # within the pattern everything works, and CAS needs no rights on the registry keys
    assert agent.get("order:1")[0] == 1
    assert agent.cas("order:1", 1, pb.order(2)) == 2
    assert agent.cas("order:2", 0, pb.order(1), schema="order") == 1
    assert agent.delete("order:2", 1) == 1
    assert agent.patch("order:1", 2, f_varint(4, 1), [4])[0] == 3
    # CTX.TOUCH names its key like the others
    toucher = users("toucher", "~order:*", "+ctx.touch")
    assert_error("NOPERM", toucher.command, "CTX.TOUCH", "other:1", 1000)
    assert r.pttl("other:1") == -1
    assert toucher.command("CTX.TOUCH", "order:1", 100_000) == 1
    reader = users("reader2", "%R~order:*", "+ctx.touch")
    assert_error("NOPERM", reader.command, "CTX.TOUCH", "order:1", 1000)


def test_agent_without_schema_rights_cannot_change_the_registry(seeded, users, pb, r):
    agent = users("agent", "~order:*", "+ctx.get", "+ctx.cas", "+ctx.del")
    assert_error("NOPERM", agent.schema_set, "x", "ctxlink.example.Order", pb.fds("order"))
    assert_error("NOPERM", agent.schema_del, "order")
    assert r.exists("__ctx:schema:order") == 1
    admin = users("admin", "~*", "+@all")
    assert admin.schema_set("x", "ctxlink.example.Order", pb.fds("order")) == 1


def test_read_only_key_pattern_allows_get_but_not_writes(seeded, users, pb, r):
    reader = users("reader", "%R~order:*", "+ctx.get", "+ctx.cas", "+ctx.patch", "+ctx.del")
    assert_error("NOPERM", reader.patch, "order:1", 1, f_varint(4, 1), [4])
    assert reader.get("order:1")[0] == 1
    assert reader.get("order:404") is None
    assert_error("NOPERM", reader.cas, "order:1", 1, pb.order(2))
    assert_error("NOPERM", reader.cas, "order:3", 0, pb.order(1), schema="order")
    assert_error("NOPERM", reader.delete, "order:1", 1)
    assert_error("NOPERM", reader.get, "other:1")
    assert ctxvalue.decode(r.get("order:1")).version == 1


def test_write_only_key_pattern_is_not_enough_for_read_write_commands(seeded, users, pb, r):
    writer = users("writer", "%W~order:*", "+ctx.get", "+ctx.cas", "+ctx.patch", "+ctx.del")
    assert_error("NOPERM", writer.patch, "order:1", 1, f_varint(4, 1), [4])
    assert_error("NOPERM", writer.get, "order:1")
    assert_error("NOPERM", writer.cas, "order:1", 1, pb.order(2))
    assert_error("NOPERM", writer.delete, "order:1", 1)
    assert ctxvalue.decode(r.get("order:1")).version == 1


def server_supports_module_acl_categories(server) -> bool:
    info = command_info(server, "CTX.CAS")
    return len(info) > 6 and bool(info[6])


def test_command_rights_apply(seeded, users, pb, r):
    getter = users("getter", "~*", "+ctx.get")
    assert getter.get("order:1")[0] == 1
    assert_error("NOPERM", getter.cas, "order:1", 1, pb.order(2))
    assert_error("NOPERM", getter.delete, "order:1", 1)
    assert_error("NOPERM", getter.patch, "order:1", 1, f_varint(4, 1), [4])
    assert_error("NOPERM", getter.schema_list)
    # Module commands join ACL categories (@write, @read) only on Redis 7.2+
    # (RedisModule_SetCommandACLCategories); on 7.0 they belong to none, so
    # "+@all -@write" cannot deny them there. Deny them by name instead.
    if not server_supports_module_acl_categories(seeded.server):
        nowrite = users("nowrite", "~*", "+@all", "-@write", "-ctx.cas", "-ctx.patch",
                        "-ctx.del", "-ctx.schema.set", "-ctx.schema.del")
    else:
        nowrite = users("nowrite", "~*", "+@all", "-@write")
    assert nowrite.get("order:1")[0] == 1
    assert nowrite.schema_list() == [b"order"]
    assert_error("NOPERM", nowrite.cas, "order:1", 1, pb.order(2))
    assert_error("NOPERM", nowrite.patch, "order:1", 1, f_varint(4, 1), [4])
    assert_error("NOPERM", nowrite.schema_set, "x", "ctxlink.example.Order", pb.fds("order"))
    assert_error("NOPERM", nowrite.schema_del, "order")


def test_acl_dryrun_agrees(seeded, backend):
    r = backend.r
    r.execute_command("ACL", "SETUSER", "dry", "reset", "on", ">secret", "~order:*", "+ctx.cas")
    try:
        assert r.execute_command("ACL", "DRYRUN", "dry", "CTX.CAS", "order:1", "1", "p") in (b"OK", True)
        reply = r.execute_command("ACL", "DRYRUN", "dry", "CTX.CAS", "other:1", "1", "p")
        assert b"no permissions" in reply.lower() or b"key" in reply.lower(), reply
    finally:
        r.execute_command("ACL", "DELUSER", "dry")
