"""Per-context history (docs/PROTOCOL.md, "History"), on both engines: the registry settings
(HISTORY / HISTORYPAYLOADS, register_schema(history=, history_payloads=)), the stream written
with every write, store.history(), the lifecycle (delete, re-create, expiry), the ACL line a Lua
agent needs, the module's replication and AOF, and the 3-primary cluster.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Iterator

import ctxlink
import ctxlink.aio
import pytest
import redis
from ctxlink._ctxcore import lib
from redis.cluster import RedisCluster

import servers as srv
from servers import REPO_ROOT

ORDER = "ctxlink.example.Order"
PROTOCOL = REPO_ROOT / "docs" / "PROTOCOL.md"


def _stream_keys(r: redis.Redis) -> list[bytes]:
    return sorted(r.scan_iter(match="__ctxh:*"))


def _bump(o: Any) -> None:
    o.discount += 1


def _entries(r: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return r.xrange(f"__ctxh:{key}")


# --------------------------------------------------------------------------- bounds, kinds


def test_history_keeps_the_last_n_changes_with_their_kinds_in_order(store, shared_server, pb):
    Order = pb.Order
    assert store.register_schema("order", Order, history=3) == 1
    store.cas("o:1", 0, Order(order_id="a"), schema="order", by="creator", write_id="w-1")
    ch = store.history("o:1")
    assert [(c.kind, c.version, c.updated_by, c.write_id, c.fields) for c in ch] == [
        ("create", 1, "creator", "w-1", None)]
    for _ in range(3):
        store.update("o:1", _bump, message_class=Order, by="updater")
    store.update("o:1", lambda o: setattr(o, "status", 2), message_class=Order, reads=[],
                 by="patcher")
    ch = store.history("o:1")
    assert [c.version for c in ch] == [3, 4, 5]  # MAXLEN = 3, oldest first
    assert [c.kind for c in ch] == ["update", "update", "patch"]
    assert ch[-1].fields == ("status",) and ch[0].fields is None
    assert ch[-1].updated_by == "patcher" and all(c.key == "o:1" for c in ch)
    inc = store.get("o:1").incarnation
    assert len(inc) == 16 and all(c.incarnation == inc for c in ch)  # the context's identity
    assert all(c.payload is None and not c.payload_omitted for c in ch)
    assert all(len(c.write_id) == 32 for c in ch)  # the SDK's ids
    snap = store.get("o:1")
    assert ch[-1].updated_ms == snap.updated_ms and ch[-1].version == snap.version
    r = shared_server.r
    assert r.xlen("__ctxh:o:1") == 3
    # the documented fields, the same bytes on both engines (t and w vary)
    eid, fields = _entries(r, "o:1")[-1]
    assert eid == b"5-0"
    assert {k: v for k, v in fields.items() if k not in (b"t", b"w")} == {
        b"k": b"patch", b"i": inc.encode(), b"b": b"patcher", b"f": b"3"}
    # a write the server refuses adds nothing
    with pytest.raises(ctxlink.ValidationError):
        store.cas("o:1", 5, pb.order(6) + b"\x52\x03\x0a\x01\xff")
    assert not store.cas("o:1", 2, pb.order(3)).ok  # a conflict
    assert r.xlen("__ctxh:o:1") == 3 and store.history("o:1")[-1].version == 5


def test_a_patch_records_the_fields_it_wrote(store, shared_server, pb):
    Order = pb.Order
    store.register_schema("order", Order, history=10)
    store.cas("o:2", 0, Order(order_id="a"), schema="order")

    def change(o: Any) -> None:
        o.final_price = 9
        o.status = 3
        o.discount = 1

    store.update("o:2", change, message_class=Order, reads=["base_price"])
    last = store.history("o:2")[-1]
    assert last.kind == "patch" and last.fields == ("status", "discount", "final_price")


def test_payloads_are_kept_up_to_64_kib_when_asked(store, shared_server, pb):
    Order = pb.Order
    assert lib.CTX_HISTORY_PAYLOAD_MAX == 65536
    store.register_schema("order", Order, history=5, history_payloads=True)
    store.cas("o:3", 0, Order(order_id="a"), schema="order")
    small = store.get("o:3").raw
    store.cas("o:3", 1, Order(order_id="x" * 70000))
    big = store.get("o:3").raw
    assert len(big) > 65536
    store.cas("o:3", 2, Order(order_id="y" * (65536 - 10)))
    edge = store.get("o:3").raw
    assert len(edge) <= 65536
    ch = store.history("o:3")
    assert ch[0].payload == small and not ch[0].payload_omitted
    assert ch[1].payload is None and ch[1].payload_omitted
    assert ch[2].payload == edge
    fields = _entries(shared_server.r, "o:3")[1][1]
    assert fields[b"o"] == str(len(big)).encode() and b"p" not in fields
    # bytes bounded: n entries of at most 64 KiB each
    assert shared_server.r.memory_usage("__ctxh:o:3") < 5 * 70000


def test_history_off_writes_no_stream(store, shared_server, pb):
    store.register_schema("order", pb.Order)
    store.cas("o:4", 0, pb.Order(order_id="a"), schema="order")
    store.update("o:4", _bump, message_class=pb.Order)
    assert _stream_keys(shared_server.r) == []
    assert store.history("o:4") == []
    assert store.get_schema("order").history == 0


# --------------------------------------------------------------------------- since / limit


def test_since_version_is_exclusive_and_limit_keeps_the_newest(store, shared_server, pb):
    Order = pb.Order
    store.register_schema("order", Order, history=50)
    store.cas("o:5", 0, Order(order_id="a"), schema="order")
    for _ in range(9):
        store.update("o:5", _bump, message_class=Order)
    versions = lambda ch: [c.version for c in ch]  # noqa: E731
    assert versions(store.history("o:5")) == list(range(1, 11))
    assert versions(store.history("o:5", since_version=7)) == [8, 9, 10]
    assert versions(store.history("o:5", since_version=10)) == []
    assert versions(store.history("o:5", since_version=0)) == list(range(1, 11))
    assert versions(store.history("o:5", limit=3)) == [8, 9, 10]
    assert versions(store.history("o:5", since_version=2, limit=3)) == [8, 9, 10]
    assert versions(store.history("o:5", since_version=8, limit=5)) == [9, 10]
    assert versions(store.history("o:5", limit=0)) == []
    assert versions(store.history(b"o:5", limit=1)) == [10]
    assert store.history("nosuch") == []


@pytest.mark.parametrize("bad", [{"since_version": -1}, {"limit": -1}, {"since_version": 1.5},
                                 {"limit": "3"}, {"since_version": True}, {"limit": False}])
def test_bad_since_version_or_limit_is_refused_before_anything_is_sent(store, shared_server,
                                                                       bad):
    r = shared_server.r
    r.config_resetstat()
    with pytest.raises(ctxlink.ArgumentError):
        store.history("o:6", **bad)
    stats = r.info("commandstats")
    assert not any(k in stats for k in ("cmdstat_xrange", "cmdstat_xrevrange")), stats


# --------------------------------------------------------------------------- lifecycle


def test_delete_removes_the_history_and_a_re_create_starts_fresh(store, shared_server, pb):
    Order = pb.Order
    r = shared_server.r
    store.register_schema("order", Order, history=10)
    store.cas("o:7", 0, Order(order_id="a"), schema="order")
    store.update("o:7", _bump, message_class=Order)
    assert store.delete("o:7", 2).ok
    assert not r.exists("__ctxh:o:7") and store.history("o:7") == []
    store.cas("o:7", 0, Order(order_id="b"), schema="order")
    assert [(c.kind, c.version) for c in store.history("o:7")] == [("create", 1)]
    # a stream left behind (a raw DEL of the context) is dropped by the next create
    store.update("o:7", _bump, message_class=Order)
    r.delete("o:7")
    assert r.xlen("__ctxh:o:7") == 2
    store.cas("o:7", 0, Order(order_id="c"), schema="order")
    assert [(c.kind, c.version) for c in store.history("o:7")] == [("create", 1)]
    # ... and a write that finds a stream ahead of it (history switched on after a re-create)
    # starts it again
    r.xadd("__ctxh:o:7", {"k": "update"}, id="99-0")
    store.update("o:7", _bump, message_class=Order)
    assert [c.version for c in store.history("o:7")] == [2]


def test_the_stream_takes_the_contexts_expiry(store, shared_server, pb):
    Order = pb.Order
    r = shared_server.r
    store.register_schema("order", Order, history=10)
    store.cas("o:8", 0, Order(order_id="a"), schema="order")
    assert r.pttl("__ctxh:o:8") == -1
    r.pexpire("o:8", 60000)
    store.update("o:8", _bump, message_class=Order)
    ttl_ctx, ttl_hist = r.pttl("o:8"), r.pttl("__ctxh:o:8")
    assert 0 < ttl_hist <= 60000 and abs(ttl_ctx - ttl_hist) <= 2
    if store.engine == "module":  # same absolute instant (PEXPIREAT from the context's expiry)
        assert r.execute_command("PEXPIRETIME", "o:8") == r.execute_command(
            "PEXPIRETIME", "__ctxh:o:8")
    # a raw PEXPIRE on the context alone leaves the stream's behind until the next write
    r.pexpire("o:8", 120000)
    assert r.pttl("__ctxh:o:8") <= 60000
    store.update("o:8", _bump, message_class=Order)
    assert r.pttl("__ctxh:o:8") > 60000


def test_another_store_turning_history_on_is_picked_up(store, shared_server, pb):
    """The Lua engine's writer learns the setting from cas.lua's ``stale`` answer (it passes no
    KEYS[2] while it believes history is off) and re-sends; the module reads it itself."""
    Order = pb.Order
    store.register_schema("order", Order)
    store.cas("o:9", 0, Order(order_id="a"), schema="order")
    store.update("o:9", _bump, message_class=Order)
    other = ctxlink.connect(shared_server.client())
    assert other.register_schema("order", Order, history=4) == 2
    store.update("o:9", _bump, message_class=Order)
    assert [c.version for c in store.history("o:9")] == [3]
    assert store.delete("o:9", 3).ok  # del.lua: stale, re-sent with the stream
    assert _stream_keys(shared_server.r) == []
    other.register_schema("order", Order, history=0)
    store.cas("o:9", 0, Order(order_id="b"), schema="order")
    store.update("o:9", _bump, message_class=Order)  # the Lua engine still passes KEYS[2]
    assert _stream_keys(shared_server.r) == []


def test_a_store_that_never_saw_the_schema_deletes_the_history_too(store, shared_server, pb):
    """The Lua engine's SDK does not know a fresh key's schema: del.lua reads the setting itself,
    answers ``stale`` and the SDK re-sends with the stream (nothing was written in between)."""
    store.register_schema("order", pb.Order, history=3)
    store.cas("o:11", 0, pb.Order(order_id="a"), schema="order")
    fresh = ctxlink.connect(shared_server.client())
    assert fresh.delete("o:11", 1).ok
    assert shared_server.r.exists("o:11", "__ctxh:o:11") == 0
    # a delete that conflicts leaves both
    store.cas("o:11", 0, pb.Order(order_id="b"), schema="order")
    assert not ctxlink.connect(shared_server.client()).delete("o:11", 7).ok
    assert shared_server.r.exists("o:11", "__ctxh:o:11") == 2


def test_async_store_reads_history(engine, shared_server, pb):
    r = shared_server.r
    r.flushall()

    async def run() -> list[ctxlink.Change]:
        import redis.asyncio as aredis

        client = aredis.Redis(port=shared_server.port)
        s = await ctxlink.aio.connect(client)
        await s.register_schema("order", pb.Order, history=2, history_payloads=False)
        await s.cas("o:10", 0, pb.Order(order_id="a"), schema="order")
        await s.update("o:10", _bump, message_class=pb.Order)
        with pytest.raises(ctxlink.ArgumentError):
            await s.history("o:10", limit=-2)
        got = await s.history("o:10", since_version=0, limit=5)
        await client.aclose()
        return got

    got = asyncio.run(run())
    assert [(c.kind, c.version) for c in got] == [("create", 1), ("update", 2)]


# --------------------------------------------------------------------------- settings


def _registry(r: redis.Redis) -> dict[bytes, Any]:
    return {k: r.hgetall(k) for k in r.scan_iter(match="__ctx:schema*") if r.type(k) == b"hash"}


def test_settings_changes_raise_the_revision_and_omitted_ones_are_kept(store, pb):
    Order = pb.Order
    assert store.register_schema("order", Order) == 1
    info = store.get_schema("order")
    assert (info.compat, info.history, info.history_payloads) == ("WIRE_JSON", 0, False)
    assert store.register_schema("order", Order, history=0, history_payloads=False) == 1
    assert store.register_schema("order", Order, history=20) == 2
    assert store.register_schema("order", Order, history=20) == 2
    assert store.register_schema("order", Order) == 2  # None keeps the setting
    assert store.register_schema("order", Order, history_payloads=True) == 3
    info = store.get_schema("order")
    assert (info.revision, info.history, info.history_payloads) == (3, 20, True)
    assert store.register_schema("order", Order, compat="WIRE") == 4  # keeps history
    info = store.get_schema("order")
    assert (info.compat, info.history, info.history_payloads) == ("WIRE", 20, True)
    assert store.register_schema("order", Order, history=lib.CTX_HISTORY_MAX) == 5


@pytest.mark.parametrize("bad", [{"history": -1}, {"history": 1001}, {"history": True},
                                 {"history": "3"}, {"history": 2.0},
                                 {"history_payloads": "yes"}, {"history_payloads": 1}])
def test_bad_settings_are_refused_with_nothing_changed(store, shared_server, pb, bad):
    store.register_schema("order", pb.Order, history=2)
    before = _registry(shared_server.r)
    with pytest.raises(ctxlink.ArgumentError):
        store.register_schema("order", pb.Order, **bad)
    assert _registry(shared_server.r) == before


def test_bad_settings_get_the_documented_server_errors(engine, shared_server, pb):
    """The server's own checks (the SDK refuses first): CTX.SCHEMA.SET and schema_set.lua."""
    r = shared_server.r
    r.flushall()
    s = ctxlink.connect(shared_server.client())
    s.register_schema("order", pb.Order, history=2)
    before = _registry(r)
    fds = pb.fds("order")
    cases = [("1001", "", "ERR HISTORY must be an integer from 0 to 1000"),
             ("-1", "", "ERR HISTORY must be an integer from 0 to 1000"),
             ("x", "", "ERR HISTORY must be an integer from 0 to 1000"),
             ("", "maybe", "ERR HISTORYPAYLOADS must be yes or no")]
    for hist, hpay, text in cases:
        with pytest.raises(redis.ResponseError) as exc:
            if engine == "module":
                args = ["CTX.SCHEMA.SET", "order", ORDER, fds]
                if hist:
                    args += ["HISTORY", hist]
                if hpay:
                    args += ["HISTORYPAYLOADS", hpay]
                r.execute_command(*args)
            else:
                sha = r.script_load(s._st.scripts["schema_set"].source)
                r.evalsha(sha, 2, "__ctx:schema:order", "__ctx:schemas", "order", ORDER, fds,
                          "version", "WIRE_JSON", 1, 0, 1, hist, hpay)
        assert srv.error_text(exc.value) == text
    if engine == "module":
        with pytest.raises(redis.ResponseError, match="syntax error"):
            r.execute_command("CTX.SCHEMA.SET", "order", ORDER, fds, "HISTORY", 1, "HISTORY", 2)
        assert r.execute_command("CTX.SCHEMA.SET", "order", ORDER, fds, "HISTORYPAYLOADS",
                                 "YES") == 2
        assert r.execute_command("CTX.SCHEMA.GET", "order")[3:6] == [b"WIRE_JSON", 2, 1]
    else:
        assert _registry(r) == before


def test_the_lua_copies_of_the_limits_are_the_c_cores():
    assert lib.CTX_HISTORY_MAX == 1000
    text = (REPO_ROOT / "lua" / "schema_set.lua").read_text()
    assert f"local HISTORY_MAX = {lib.CTX_HISTORY_MAX}\n" in text
    cas = (REPO_ROOT / "lua" / "cas.lua").read_text()
    assert f"if hist_n > {lib.CTX_HISTORY_MAX} then hist_n = 0 end" in cas
    part = (REPO_ROOT / "lua" / "cas_history.lua").read_text()
    assert part.count(f"#s > {lib.CTX_HISTORY_PAYLOAD_MAX}") == 2
    dl = (REPO_ROOT / "lua" / "del.lua").read_text()
    assert f"hist <= {lib.CTX_HISTORY_MAX}" in dl


# --------------------------------------------------------------------------- ACL


HISTORY_AGENT_ACL = ("ACL SETUSER hagent on >pw ~ctx:* ~__ctxh:* %R~__ctx:* +@all -@admin "
                     "-@dangerous")
NO_HISTORY_AGENT_ACL = "ACL SETUSER nohist on >pw ~ctx:* %R~__ctx:* +@all -@admin -@dangerous"


def test_the_history_acl_line_is_documented():
    assert HISTORY_AGENT_ACL in PROTOCOL.read_text()


def test_a_lua_agent_needs_the_history_grant_and_without_it_nothing_is_written(
        store, engine, shared_server, pb):
    r = shared_server.r
    store.register_schema("order", pb.Order, history=5)
    store.cas("ctx:1", 0, pb.Order(order_id="a"), schema="order")
    for line in (HISTORY_AGENT_ACL, NO_HISTORY_AGENT_ACL):
        r.execute_command(*line.split())
    try:
        good = redis.Redis(port=shared_server.port, username="hagent", password="pw")
        agent = ctxlink.connect(good)
        agent.update("ctx:1", _bump, message_class=pb.Order, by="agent")
        assert [c.version for c in agent.history("ctx:1")] == [1, 2]
        good.close()

        bad = redis.Redis(port=shared_server.port, username="nohist", password="pw")
        agent = ctxlink.connect(bad)
        before = (r.get("ctx:1"), r.xrange("__ctxh:ctx:1"))
        if engine == "lua":
            with pytest.raises(Exception, match=re.compile("NOPERM|permission", re.I)):
                agent.update("ctx:1", _bump, message_class=pb.Order, by="agent")
            assert (r.get("ctx:1"), r.xrange("__ctxh:ctx:1")) == before
            with pytest.raises(Exception, match=re.compile("NOPERM|permission", re.I)):
                agent.delete("ctx:1", 2)
            assert (r.get("ctx:1"), r.xrange("__ctxh:ctx:1")) == before
        else:  # the module writes the history itself: CTX.CAS declares the context key only
            agent.update("ctx:1", _bump, message_class=pb.Order, by="agent")
            assert r.xlen("__ctxh:ctx:1") == 3
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.history("ctx:1")  # reading needs %R~__ctxh:* on both engines
        bad.close()
    finally:
        r.execute_command("ACL", "DELUSER", "hagent", "nohist")


# --------------------------------------------------------------------------- replication, AOF


AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0)]


def test_module_history_reaches_the_replica_and_the_aof_in_the_values_transaction(servers, pb):
    primary = servers.start(module=True, appendonly=True, config=AOF)
    replica = servers.replica(primary, module=True)
    s = ctxlink.connect(primary.client())
    s.register_schema("order", pb.Order, history=2, history_payloads=True)
    srv.wait_replicated(primary, replica)
    tail = srv.AofTail(primary)
    s.cas("o:r", 0, pb.Order(order_id="a"), schema="order", by="w")
    cmds = tail.commands()
    names = [c[0].upper() for c in cmds]
    assert names[0] == b"MULTI" and names[-1] == b"EXEC", names
    assert names.count(b"MULTI") == 1 and set(names[1:-1]) == {b"SET", b"XADD"}, names
    xadd = next(c for c in cmds if c[0].upper() == b"XADD")
    assert xadd[1:6] == [b"__ctxh:o:r", b"MAXLEN", b"=", b"2", b"1-0"]
    for _ in range(3):
        s.update("o:r", _bump, message_class=pb.Order)
    s.cas("o:r", 4, pb.Order(order_id="b"))
    srv.wait_replicated(primary, replica)
    rr = replica.client()
    assert rr.xrange("__ctxh:o:r") == primary.r.xrange("__ctxh:o:r")
    assert [e[0] for e in rr.xrange("__ctxh:o:r")] == [b"4-0", b"5-0"]
    tail.mark()
    assert s.delete("o:r", 5).ok
    names = [c[0].upper() for c in tail.commands()]
    assert names == [b"MULTI", b"DEL", b"DEL", b"EXEC"], names
    srv.wait_replicated(primary, replica)
    assert not rr.exists("o:r", "__ctxh:o:r")
    # the AOF alone rebuilds the same history
    s.cas("o:r", 0, pb.Order(order_id="c"), schema="order")
    s.update("o:r", _bump, message_class=pb.Order)
    want = primary.r.xrange("__ctxh:o:r")
    restarted = servers.restart(primary)
    assert restarted.r.xrange("__ctxh:o:r") == want
    rr.close()


# --------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module", params=["module", "lua"])
def any_cluster(request) -> Iterator[tuple[str, list[Any]]]:
    from test_cluster import _cluster

    for nodes in _cluster(module=request.param == "module"):
        yield request.param, nodes


def test_history_on_the_3_primary_cluster_lives_in_the_contexts_slot(any_cluster, pb):
    engine, nodes = any_cluster
    rc = RedisCluster(host="127.0.0.1", port=nodes[0].port)
    try:
        s = ctxlink.connect(rc)
        assert s.engine == engine
        s.register_schema("horder", pb.Order, history=3)
        from redis.crc import key_slot

        keys = ["h:1", "h:2", "h:{x}:3", "odd}key{", "h:5"]
        for k in keys:
            s.cas(k, 0, pb.Order(order_id=k), schema="horder")
            s.update(k, _bump, message_class=pb.Order, reads=[])
            s.update(k, _bump, message_class=pb.Order)
            ch = s.history(k)
            assert [(c.kind, c.version) for c in ch] == [
                ("create", 1), ("patch", 2), ("update", 3)], k
            assert ch[1].fields == ("discount",)
            tag = ctxlink._cluster._slot_tag(key_slot(k.encode()))
            hkey = f"__ctxh:{{{tag}}}:{k}"
            assert key_slot(hkey.encode()) == key_slot(k.encode())
            assert rc.xlen(hkey) == 3
            assert [c.version for c in s.history(k, since_version=1, limit=1)] == [3]
        assert s.delete("h:1", 3).ok
        assert s.history("h:1") == []
        assert s.get_schema("horder").history == 3
    finally:
        rc.close()


def test_the_readme_history_example_runs_as_written():
    """README's history snippet, run after the ten-line example (inside its ``with`` block)."""
    import subprocess
    import sys

    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = blocks[0].rsplit("\n    print(", 1)[0]
    snippet = next(b for b in blocks if "store.history(" in b)
    body = "".join("    " + line + "\n" for line in snippet.strip().splitlines())
    out = subprocess.run([sys.executable, "-c", example + "\n" + body], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "patch", "inventory", "('status',)"]


# --------------------------------------------------------------------------- kill -9


def test_history_and_value_never_disagree_after_kill_9(engine, tmp_path, module_so, pb):
    """Writers update contexts of a schema with history while the server is killed (-9) and
    restarted from its AOF (appendfsync always, rewrites on): after each restart every
    context's history ends at its version, with consecutive versions, as MAXLEN allows."""
    import sys
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parent / "torture"))
    from crash_loop import aof_config, kill9

    n = 5
    spec = dict(module=str(module_so) if engine == "module" else None, module_args=[],
                appendonly=True, config=aof_config("16kb"), replicaof=None)
    server = srv.start_server(tmp_path, **spec)
    setup = ctxlink.connect(server.client(), engine=engine)
    setup.register_schema("order", pb.Order, history=n)
    keys = [f"k:{i}" for i in range(4)]
    for k in keys:
        setup.cas(k, 0, pb.Order(order_id=k), schema="order")
    try:
        for cycle in range(2):
            stop = threading.Event()
            store = ctxlink.connect(server.client(socket_timeout=5), engine=engine)

            def write(w: int) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        store.update(keys[(w + i) % len(keys)], _bump, message_class=pb.Order,
                                     reads=[] if i % 2 else None, timeout=2)
                    except Exception:
                        return  # the server went away
                    i += 1

            threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            kill9(server)
            stop.set()
            for t in threads:
                t.join(10)
            server = srv.start_server(tmp_path, **spec)
            check = ctxlink.connect(server.client(), engine=engine)
            for k in keys:
                version = check.get(k).version
                got = [c.version for c in check.history(k)]
                want = list(range(max(1, version - n + 1), version + 1))
                assert got == want, (cycle, k, version, got)
            check.client.close()
    finally:
        server.stop(check=False)
