"""Replication and propagation (docs/PROTOCOL.md, "Replication, persistence, portability"):
effects, not commands; exactly one effect per successful write and none for rejected or
conflicting ones; replicas byte-identical (DEBUG DIGEST); READONLY replicas; promotion.

What is propagated is read from the primary's AOF (appendfsync always, no RDB preamble): the
AOF and the replication stream carry the same commands."""

from __future__ import annotations

import pytest
import redis

import ctxvalue
import servers as srv
from backends import ModuleBackend
from helpers import assert_error, check_error, registry_entry
from wire import f_len, f_varint

ORDER = "ctxlink.example.Order"
AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0), ("repl-ping-replica-period", 3600)]


@pytest.fixture(scope="module")
def pair(module_servers, module_so):
    primary = module_servers.start(module=True, appendonly=True, config=AOF)
    replica = module_servers.replica(primary, module=True)
    return primary, replica


class Repl:
    def __init__(self, primary, replica):
        self.p, self.rep = primary, replica
        self.b = ModuleBackend(primary)
        self.tail = srv.AofTail(primary)

    def sync(self):
        srv.wait_replicated(self.p, self.rep)

    def effects(self):
        """Propagated commands since the last mark, MULTI/EXEC and SELECT removed."""
        return [c for c in self.tail.commands() if c[0].upper() not in (b"MULTI", b"EXEC")]

    def offset(self):
        return self.p.info("replication")["master_repl_offset"]


@pytest.fixture
def repl(pair):
    primary, replica = pair
    primary.assert_alive()
    replica.assert_alive()
    primary.r.flushall()
    srv.wait_replicated(primary, replica)
    x = Repl(primary, replica)
    yield x
    primary.assert_alive()
    replica.assert_alive()


def hset_fields(cmd):
    assert cmd[0].upper() == b"HSET", cmd
    pairs = cmd[2:]
    assert len(pairs) % 2 == 0
    fields = dict(zip(pairs[::2], pairs[1::2]))
    assert len(fields) * 2 == len(pairs), f"a field is set twice: {cmd}"
    return fields


def set_value(cmd) -> bytes:
    """The value of a context write's effect: exactly ``SET key <value> KEEPTTL``."""
    assert [cmd[0].upper(), cmd[3].upper()] == [b"SET", b"KEEPTTL"] and len(cmd) == 4, cmd
    return cmd[2]


def assert_wrapped(cmds):
    names = [c[0].upper() for c in cmds]
    assert names[0] == b"MULTI" and names[-1] == b"EXEC", names
    assert names.count(b"MULTI") == 1 and names.count(b"EXEC") == 1, names


# --------------------------------------------------------------------------- replica state


def test_replica_state_is_byte_identical(repl, pb):
    b = repl.b
    pb.register(b, "order")
    pb.register(b, "doc")
    b.cas("order:1", 0, pb.order(1), schema="order", by="router")
    b.cas("order:1", 1, pb.order(2, status=2), by="pricing")
    b.cas("order:2", 0, pb.order(1), schema="order")
    b.delete("order:2", 1)
    b.schema_del("doc")
    repl.sync()
    assert repl.p.digest() == repl.rep.digest()
    assert repl.rep.r.get(b"order:1") == repl.p.r.get(b"order:1")
    assert repl.rep.r.hgetall(b"__ctx:schema:order") == repl.p.r.hgetall(b"__ctx:schema:order")
    assert repl.rep.r.exists("order:2", "__ctx:schema:doc") == 0
    assert ModuleBackend(repl.rep).get("order:1") == b.get("order:1")


def test_replica_receives_the_set_with_the_primary_clock_not_the_command(repl, pb):
    pb.register(repl.b, "order")
    repl.sync()
    mon = srv.Monitor(repl.rep)
    try:
        payload = pb.order(1, order_id="o-1")
        assert repl.b.cas("order:1", 0, payload, schema="order", by="router") == 1
        repl.p.r.set("__marker__", 1)
        seen = [args for _, args in mon.commands_until(lambda a: a[:2] == [b"SET", b"__marker__"])]
    finally:
        mon.close()
    seen = [a for a in seen if a[0] not in (b"SELECT", b"PING", b"MULTI", b"EXEC")]
    assert not any(a[0].startswith(b"CTX.") for a in seen), seen
    assert len(seen) == 1, seen
    value = repl.p.r.get("order:1")
    assert set_value(seen[0]) == value and seen[0][1] == b"order:1"
    v = ctxvalue.decode(value)
    assert (v.version, v.schema, v.updated_by, v.payload) == (1, b"order", b"router", payload)
    repl.sync()
    assert repl.rep.r.get("order:1") == value


# --------------------------------------------------------------------------- what is propagated


def test_successful_cas_propagates_exactly_one_set_keepttl_with_the_value(repl, pb):
    pb.register(repl.b, "order")
    payload = pb.order(1, order_id="o-1")
    repl.tail.mark()
    assert repl.b.cas("order:1", 0, payload, schema="order", by="router") == 1
    cmds = repl.effects()
    assert len(cmds) == 1, cmds
    assert cmds[0][1] == b"order:1"
    assert set_value(cmds[0]) == repl.p.r.get("order:1")
    v = ctxvalue.decode(set_value(cmds[0]))
    assert (v.version, v.schema, v.updated_by, v.payload) == (1, b"order", b"router", payload)


def test_update_propagates_one_set_keepttl_with_the_whole_value(repl, pb):
    pb.register(repl.b, "order")
    repl.b.cas("order:1", 0, pb.order(1), schema="order", by="router")
    p2 = pb.order(2, status=3)
    repl.tail.mark()
    assert repl.b.cas("order:1", 1, p2) == 2
    cmds = repl.effects()
    assert len(cmds) == 1, cmds
    assert set_value(cmds[0]) == repl.p.r.get("order:1")
    v = ctxvalue.decode(set_value(cmds[0]))
    assert (v.version, v.schema, v.updated_by, v.payload, len(v.window)) == (2, b"order", b"",
                                                                           p2, 2)


def test_successful_del_propagates_del(repl, pb):
    pb.register(repl.b, "order")
    repl.b.cas("order:1", 0, pb.order(1), schema="order")
    repl.tail.mark()
    assert repl.b.delete("order:1", 1) == 1
    assert [[c[0].upper(), *c[1:]] for c in repl.effects()] == [[b"DEL", b"order:1"]]


def test_reads_propagate_nothing(repl, pb):
    pb.register(repl.b, "order")
    repl.b.cas("order:1", 0, pb.order(1), schema="order")
    repl.tail.mark()
    off = repl.offset()
    repl.b.get("order:1")
    repl.b.get("order:404")
    repl.b.schema_get("order")
    repl.b.schema_list()
    assert repl.tail.commands() == []
    assert repl.offset() == off


def test_rejected_and_conflicting_writes_propagate_nothing(repl, pb):
    b, r = repl.b, repl.p.r
    pb.register(b, "order")
    b.cas("order:1", 0, pb.order(1), schema="order")
    r.set("str", "x")
    repl.tail.mark()
    off = repl.offset()
    bad_utf8 = f_varint(2, 2) + f_len(1, b"\xff")
    assert_error("CTXINVALID", b.cas, "order:1", 1, bad_utf8)
    assert_error("CTXINVALID", b.cas, "order:2", 0, f_varint(2, 1) + f_len(1, b"\xff"), schema="order")
    assert_error("CTXVERSION", b.cas, "order:1", 1, pb.order(5))
    assert_error("CTXSCHEMA", b.cas, "order:2", 0, pb.order(1))
    assert_error("CTXSCHEMA", b.cas, "order:2", 0, pb.order(1), schema="nosuch")
    assert_error("CTXSCHEMA", b.cas, "order:1", 1, pb.order(2), schema="other")
    assert_error("WRONGTYPE", b.cas, "str", 0, pb.order(1), schema="order")
    assert_error("WRONGTYPE", b.delete, "str", 1)
    assert_error("ERR", b.command, "CTX.CAS", "order:1", "x", pb.order(2))
    assert_error("ERR", b.command, "CTX.CAS", "order:1", "1", pb.order(2), "BOGUS", "1")
    assert b.cas("order:1", 0, pb.order(1), schema="order")[0] == 1     # conflict
    assert b.cas("order:1", 4, pb.order(5)) == b.get("order:1")         # conflict
    assert b.cas("order:9", 4, pb.order(5)) is None                     # nil conflict
    assert b.delete("order:1", 7) == b.get("order:1")                   # del conflict
    assert b.delete("order:9", 1) is None                               # del nil
    assert_error("CTXSCHEMA", b.schema_set, "bad", ORDER, b"\xff\xff")
    assert_error("CTXSCHEMA", b.schema_set, "order", ORDER, pb.fds("order_v2_incompat"))
    assert_error("ERR", b.command, "CTX.SCHEMA.SET", "order", ORDER, pb.fds("order"), "BOGUS")
    assert b.schema_del("nosuch") == 0
    assert repl.tail.commands() == []
    assert repl.offset() == off


def test_schema_set_propagates_hset_and_sadd_in_multi_exec(repl, pb):
    fds = pb.fds("order")
    repl.tail.mark()
    assert repl.b.schema_set("order", ORDER, fds) == 1
    cmds = repl.tail.commands()
    assert_wrapped(cmds)
    body = sorted(cmds[1:-1], key=lambda c: c[0].upper())
    assert [c[0].upper() for c in body] == [b"HSET", b"SADD"], cmds
    assert body[0][1] == b"__ctx:schema:order"
    assert hset_fields(body[0]) == registry_entry(ORDER, fds)
    assert body[1][1:] == [b"__ctx:schemas", b"order"]
    # the same definition again changes nothing and propagates nothing
    repl.tail.mark()
    assert repl.b.schema_set("order", ORDER, fds) == 1
    assert repl.tail.commands() == []
    # the next revision: the registry hash again (the SADD is a no-op and may be left out)
    v2 = pb.fds("order_v2_compat")
    assert repl.b.schema_set("order", ORDER, v2) == 2
    cmds = repl.tail.commands()
    effects = [c for c in cmds if c[0].upper() not in (b"MULTI", b"EXEC")]
    assert {c[0].upper() for c in effects} <= {b"HSET", b"SADD"}
    hsets = [c for c in effects if c[0].upper() == b"HSET"]
    assert len(hsets) == 1
    entry = registry_entry(ORDER, v2, revision=2)
    written = hset_fields(hsets[0])
    assert written[b"revision"] == b"2" and all(entry[k] == v for k, v in written.items()), written
    assert repl.p.r.hgetall("__ctx:schema:order") == entry
    if len(effects) > 1:
        assert_wrapped(cmds)


def test_schema_del_propagates_del_and_srem(repl, pb):
    pb.register(repl.b, "order")
    pb.register(repl.b, "doc")
    repl.tail.mark()
    assert repl.b.schema_del("order") == 1
    cmds = repl.tail.commands()
    effects = sorted(([c[0].upper(), *c[1:]] for c in cmds if c[0].upper() not in (b"MULTI", b"EXEC")))
    assert effects == [[b"DEL", b"__ctx:schema:order"], [b"SREM", b"__ctx:schemas", b"order"]], cmds
    assert_wrapped(cmds)


def test_transaction_effects_are_wrapped_in_multi_exec(repl, pb):
    b, r = repl.b, repl.p.r
    pb.register(b, "order")
    repl.tail.mark()
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(*b.cas_args("order:1", 0, pb.order(1), schema="order"))
    pipe.set("other", "1")
    assert pipe.execute() == [1, True]
    cmds = repl.tail.commands()
    assert_wrapped(cmds)
    assert [c[0].upper() for c in cmds] == [b"MULTI", b"SET", b"SET", b"EXEC"]
    set_value(cmds[1])
    # a rejected CAS inside the transaction contributes nothing
    repl.tail.mark()
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(*b.cas_args("order:1", 1, pb.order(7)))
    pipe.set("other", "2")
    res = pipe.execute(raise_on_error=False)
    check_error(res[0], "CTXVERSION")
    assert [c[0].upper() for c in repl.effects()] == [b"SET"]


def test_script_effects_are_replicated(repl, pb):
    b, r = repl.b, repl.p.r
    pb.register(b, "order")
    repl.tail.mark()
    script = ("local v = redis.call('CTX.CAS', KEYS[1], 0, ARGV[1], 'SCHEMA', 'order') "
              "redis.call('SET', KEYS[2], v) return v")
    assert r.eval(script, 2, "order:1", "{x}", pb.order(1)) == 1
    cmds = repl.tail.commands()
    assert [c[0].upper() for c in cmds] == [b"MULTI", b"SET", b"SET", b"EXEC"], cmds
    set_value(cmds[1])
    repl.sync()
    assert repl.p.digest() == repl.rep.digest()


# --------------------------------------------------------------------------- replicas refuse writes


def test_replica_refuses_writes_with_readonly(repl, pb):
    pb.register(repl.b, "order")
    repl.b.cas("order:1", 0, pb.order(1), schema="order")
    repl.sync()
    rb = ModuleBackend(repl.rep)
    before = repl.rep.digest()
    assert_error("READONLY", rb.cas, "order:1", 1, pb.order(2))
    assert_error("READONLY", rb.cas, "order:2", 0, pb.order(1), schema="order")
    assert_error("READONLY", rb.delete, "order:1", 1)
    assert_error("READONLY", rb.schema_set, "x", ORDER, pb.fds("order"))
    assert_error("READONLY", rb.schema_del, "order")
    assert repl.rep.digest() == before
    # reads work on the replica
    assert rb.get("order:1") == repl.b.get("order:1")
    assert rb.schema_get("order") == [ORDER.encode(), pb.fds("order"), 1]
    assert rb.schema_list() == [b"order"]


# --------------------------------------------------------------------------- dedicated topologies


def test_promoted_replica_validates_with_the_schemas_it_received(servers, pb, module_so):
    p = servers.start(module=True)
    b = ModuleBackend(p)
    pb.register(b, "order")
    b.cas("order:1", 0, pb.order(1), schema="order")  # before the replica: full sync
    rep = servers.replica(p, module=True)
    pb.register(b, "doc")                               # after: streamed
    b.cas("order:1", 1, pb.order(2), by="x")
    srv.wait_replicated(p, rep)
    assert rep.r.execute_command("REPLICAOF", "NO", "ONE") in (b"OK", True)
    srv.wait_for(lambda: rep.info("replication")["role"] == "master", what="promotion")
    rb = ModuleBackend(rep)
    with pytest.raises(redis.ResponseError) as ei:
        rb.cas("order:1", 2, f_varint(2, 3) + f_len(1, b"\xff"))
    check_error(ei.value, "CTXINVALID")
    assert_error("CTXINVALID", rb.cas, "order:9", 0, f_varint(2, 1) + f_varint(99, 1), schema="order")
    assert_error("CTXSCHEMA", rb.cas, "order:9", 0, pb.order(1), schema="nosuch")
    assert rb.cas("order:1", 2, pb.order(3)) == 3
    doc = pb.cls("versions", "ctxlink.test.v.Doc")
    assert rb.cas("doc:1", 0, doc(rev=1).SerializeToString(), schema="doc") == 1
    assert rb.cas("order:2", 0, pb.order(1), schema="order") == 1


def test_replica_without_the_module_gets_identical_state(servers, pb, module_so):
    p = servers.start(module=True)
    b = ModuleBackend(p)
    pb.register(b, "order")
    b.cas("order:1", 0, pb.order(1), schema="order")
    rep = servers.replica(p, module=False)
    b.cas("order:1", 1, pb.order(2), by="x")
    b.cas("order:2", 0, pb.order(1), schema="order")
    b.delete("order:2", 1)
    pb.register(b, "doc")
    srv.wait_replicated(p, rep)
    assert p.digest() == rep.digest()
    assert rep.r.get("order:1") == p.r.get("order:1")


def test_schema_set_inside_multi_is_wrapped_once(repl, pb):
    b, r = repl.b, repl.p.r
    repl.tail.mark()
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("CTX.SCHEMA.SET", "order", ORDER, pb.fds("order"))
    pipe.execute_command(*b.cas_args("order:1", 0, pb.order(1), schema="order"))
    assert pipe.execute() == [1, 1]
    cmds = repl.tail.commands()
    assert_wrapped(cmds)  # one MULTI/EXEC around everything, no nesting
    assert sorted(c[0].upper() for c in cmds[1:-1]) == [b"HSET", b"SADD", b"SET"], cmds
    repl.sync()
    assert repl.p.digest() == repl.rep.digest()


def test_partial_resync_carries_contexts_and_schemas(servers, pb, module_so):
    p = servers.start(module=True)
    b = ModuleBackend(p)
    pb.register(b, "order")
    b.cas("order:1", 0, pb.order(1), schema="order")
    rep = servers.replica(p, module=True)
    ok_before = p.info("stats")["sync_partial_ok"]
    p.r.execute_command("CLIENT", "KILL", "TYPE", "replica")
    pb.register(b, "doc")
    b.cas("order:1", 1, pb.order(2), by="x")
    b.cas("order:2", 0, pb.order(1), schema="order")
    srv.wait_link_up(rep)
    srv.wait_replicated(p, rep)
    assert p.info("stats")["sync_partial_ok"] == ok_before + 1
    assert p.digest() == rep.digest()
