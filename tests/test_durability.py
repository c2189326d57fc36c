"""Persistence and portability (docs/PROTOCOL.md, "Replication, persistence, portability"):
contexts and the registry survive SAVE, DEBUG RELOAD and AOF restarts with and without the RDB
preamble; files written with the module load on a stock redis-server and the other way round."""

from __future__ import annotations

import pytest

import servers as srv
from helpers import assert_error, context_hash, write_registry
from wire import f_len, f_varint

ORDER = "ctxlink.example.Order"


def populate(b, pb, part: int = 0) -> None:
    """Registry + contexts; part 0 and part 1 touch different keys (for AOF rewrites)."""
    if part == 0:
        assert pb.register(b, "order") == 1
        assert pb.register(b, "doc") == 1
        assert b.cas("order:1", 0, pb.order(1, order_id="o-1"), schema="order", by="router") == 1
        assert b.cas("order:1", 1, pb.order(2, order_id="o-1", status=2), by="pricing") == 2
        doc = pb.cls("versions", "ctxlink.test.v.Doc")
        assert b.cas("doc:1", 0, doc(id="d", rev=1).SerializeToString(), schema="doc") == 1
    else:
        assert pb.register(b, "order") == 1  # same definition: unchanged
        assert b.schema_set("order", ORDER, pb.fds("order_v2_compat")) == 2
        assert b.cas("order:2", 0, pb.order(1, order_id="o-2"), schema="order") == 1
        assert b.cas("order:3", 0, pb.order(1, order_id="o-3"), schema="order") == 1
        assert b.delete("order:3", 1) == 1


def dataset(r) -> dict:
    """Everything in db 0, type-aware, for comparing servers."""
    out = {}
    for key in sorted(r.keys("*")):
        t = r.type(key)
        if t == b"hash":
            out[key] = ("hash", r.hgetall(key))
        elif t == b"set":
            out[key] = ("set", r.smembers(key))
        elif t == b"string":
            out[key] = ("string", r.get(key))
        else:
            out[key] = (t, r.dump(key))
    return out


def check_still_validates(b, pb) -> None:
    """After a restart the module validates with the registry it loaded."""
    version = b.get("order:1")[0]
    assert_error("CTXINVALID", b.cas, "order:1", version, f_varint(2, version + 1) + f_len(1, b"\xff"))
    assert_error("CTXVERSION", b.cas, "order:1", version, pb.order(version + 7))
    assert b.cas("order:1", version, pb.order(version + 1, order_id="o-1")) == version + 1
    doc = pb.cls("versions", "ctxlink.test.v.Doc")
    assert b.cas("doc:1", 1, doc(id="d", rev=2).SerializeToString()) == 2
    assert_error("CTXSCHEMA", b.cas, "new", 0, pb.order(1), schema="nosuch")


def module_backend(server):
    from backends import ModuleBackend
    return ModuleBackend(server)


@pytest.fixture
def populated(servers, pb, module_so):
    def make(**kw):
        s = servers.start(module=True, **kw)
        b = module_backend(s)
        populate(b, pb)
        return s, b
    return make


def test_contexts_and_schemas_survive_save_and_restart(servers, populated, pb):
    s, b = populated()
    before, digest = dataset(s.r), s.digest()
    s.r.save()
    s2 = servers.restart(s)
    assert dataset(s2.r) == before
    assert s2.digest() == digest
    b2 = module_backend(s2)
    assert b2.schema_list() == [b"doc", b"order"]
    assert b2.get("order:1")[:3] == [2, pb.order(2, order_id="o-1", status=2), b"order"]
    check_still_validates(b2, pb)


def test_contexts_and_schemas_survive_debug_reload(populated, pb):
    s, b = populated()
    before, digest = dataset(s.r), s.digest()
    assert s.r.execute_command("DEBUG", "RELOAD") in (b"OK", True)
    assert dataset(s.r) == before
    assert s.digest() == digest
    check_still_validates(b, pb)


def aof_config(preamble: str):
    return [("appendfsync", "always"), ("aof-use-rdb-preamble", preamble),
            ("auto-aof-rewrite-percentage", 0)]


def rewrite_aof(s) -> None:
    s.r.execute_command("BGREWRITEAOF")
    srv.wait_for(lambda: s.info("persistence")["aof_rewrite_in_progress"] == 0
                 and s.info("persistence")["aof_rewrite_scheduled"] == 0
                 and s.info("persistence")["aof_last_bgrewrite_status"] == "ok",
                 20, what="AOF rewrite")


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_contexts_and_schemas_survive_aof_restart(servers, populated, pb, preamble):
    s, b = populated(appendonly=True, config=aof_config(preamble))
    rewrite_aof(s)  # part 0 goes to the base file (RDB preamble or AOF commands)
    populate(b, pb, part=1)  # part 1 stays in the incremental file
    base = srv.aof_files(s.dir, "b")[0].read_bytes()
    assert base.startswith(b"REDIS") == (preamble == "yes")
    before, digest = dataset(s.r), s.digest()
    s2 = servers.restart(s)
    assert dataset(s2.r) == before
    assert s2.digest() == digest
    b2 = module_backend(s2)
    assert b2.schema_get("order")[2] == 2
    check_still_validates(b2, pb)


def test_rdb_written_with_the_module_loads_on_a_stock_server(servers, populated):
    s, b = populated()
    before, digest = dataset(s.r), s.digest()
    s.r.save()
    s.stop()
    stock = servers.stock(s.dir)
    assert dataset(stock.r) == before
    assert stock.digest() == digest
    assert stock.r.hget("__ctx:schema:order", "type") == ORDER.encode()


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_aof_written_with_the_module_loads_on_a_stock_server(servers, populated, pb, preamble):
    s, b = populated(appendonly=True, config=aof_config(preamble))
    rewrite_aof(s)
    populate(b, pb, part=1)
    # the incremental file holds only plain commands a stock server knows
    for cmd in srv.parse_resp_commands(b"".join(p.read_bytes() for p in srv.aof_files(s.dir, "i"))):
        assert not cmd[0].upper().startswith(b"CTX."), cmd
    before, digest = dataset(s.r), s.digest()
    s.stop()
    stock = servers.stock(s.dir, appendonly=True, config=aof_config(preamble))
    assert dataset(stock.r) == before
    assert stock.digest() == digest


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_stock_dump_with_registry_keys_loads_into_a_module_server(servers, pb, module_so,
                                                                  persistence):
    aof = persistence == "aof"
    config = aof_config("no") if aof else []
    stock = servers.start(appendonly=aof, config=config)
    r = stock.r
    # what the Lua engine (or redis-cli) writes: the documented registry keys and context hash
    write_registry(r, "order", ORDER, pb.fds("order"))
    payload = pb.order(3, order_id="o-1")
    r.hset("order:1", mapping=context_hash(payload, 3, "order", 1764100000123, "lua"))
    before = dataset(r)
    if not aof:
        r.save()
    s = servers.restart(stock, module=True)
    assert dataset(s.r) == before
    b = module_backend(s)
    assert b.schema_get("order") == [ORDER.encode(), pb.fds("order"), 1]
    assert b.schema_list() == [b"order"]
    assert b.get("order:1") == [3, payload, b"order", 1764100000123, b"lua", b""]
    assert_error("CTXINVALID", b.cas, "order:1", 3, f_varint(2, 4) + f_len(1, b"\xff"))
    assert b.cas("order:1", 3, pb.order(4, order_id="o-1")) == 4
    assert b.cas("order:2", 0, pb.order(1), schema="order") == 1
