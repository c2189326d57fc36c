"""The per-schema change feed (docs/PROTOCOL.md, "Change feed"), on both engines: the FEED
setting (register_schema(feed=), CTX.SCHEMA.SET ... FEED n), the stream `__ctxf:<schema>` written
with every create / update / patch / delete, store.changes() (order, resumption, cursors,
block_ms), a replica serving it, the cluster refusal, the ACL lines, and `ctxlink watch --schema`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest
import redis
import servers as srv
from redis.cluster import RedisCluster
from servers import REPO_ROOT

import ctxlink
import ctxlink.aio
from ctxlink._ctxcore import lib

PROTOCOL = REPO_ROOT / "docs" / "PROTOCOL.md"


def _bump(o: Any) -> None:
    o.discount += 1


def _drain(s: ctxlink.Store, schema: str, cursor: Any = None, count: int = 100) -> tuple[list[
        ctxlink.Change], Any]:
    out: list[ctxlink.Change] = []
    while True:
        b = s.changes(schema, cursor, count=count)
        out += b.changes
        if not b.changes:
            return out, b.cursor
        cursor = b.cursor


# --------------------------------------------------------------------------- settings


def test_feed_setting_revision_and_schema_info(store, pb):
    assert lib.CTX_FEED_MAX == 10_000_000
    assert store.register_schema("order", pb.Order) == 1
    assert store.get_schema("order").feed == 0
    assert store.register_schema("order", pb.Order, feed=50) == 2  # another setting: a revision
    assert store.register_schema("order", pb.Order) == 2  # None keeps it
    info = store.get_schema("order")
    assert info.feed == 50 and info.history == 0
    assert store.register_schema("order", pb.Order, history=3) == 3
    assert store.get_schema("order").feed == 50  # kept
    assert store.register_schema("order", pb.Order, feed=0) == 4
    assert store.get_schema("order").feed == 0
    for bad in (-1, 10_000_001, 1.5, "5", True):
        with pytest.raises(ctxlink.ArgumentError, match="feed must be an int"):
            store.register_schema("order", pb.Order, feed=bad)
    assert store.get_schema("order").revision == 4


def test_feed_argument_errors_on_the_server(store, engine, shared_server, pb):
    r = shared_server.r
    store.register_schema("order", pb.Order, feed=5)
    if engine == "module":
        fds = store.get_schema("order").descriptor_set
        for bad in ("-1", "10000001", "x"):
            with pytest.raises(redis.ResponseError,
                               match="FEED must be an integer from 0 to 10000000"):
                r.execute_command("CTX.SCHEMA.SET", "order", "ctxlink.example.Order", fds,
                                  "FEED", bad)
        reply = r.execute_command("CTX.SCHEMA.GET", "order")
        assert reply[6] == 5 and len(reply) == 8  # [..., feed, window]
    assert r.hget("__ctx:schema:order", "feed") == b"5"


# --------------------------------------------------------------------------- entries


def test_every_write_and_delete_lands_in_the_feed_in_order(store, shared_server, pb):
    Order = pb.Order
    store.register_schema("order", Order, feed=100)
    store.register_schema("other", Order)  # no feed: nothing written for it
    store.cas("o:1", 0, Order(order_id="a"), schema="order", by="creator", write_id="w-1")
    store.update("o:1", _bump, message_class=Order, by="updater")
    store.update("o:1", lambda o: setattr(o, "status", 2), message_class=Order, reads=[],
                 by="patcher")
    store.cas("x:1", 0, Order(order_id="x"), schema="other")
    assert store.delete("o:1", 3).ok
    batch = store.changes("order")
    got = [(c.key, c.kind, c.version, c.updated_by, c.fields) for c in batch.changes]
    assert got == [("o:1", "create", 1, "creator", None), ("o:1", "update", 2, "updater", None),
                   ("o:1", "patch", 3, "patcher", ("status",)), ("o:1", "delete", 3, "", None)]
    assert batch.changes[0].write_id == "w-1"
    assert len({c.incarnation for c in batch.changes}) == 1
    assert all(c.updated_ms > 0 for c in batch.changes)
    assert isinstance(batch.cursor, str) and batch.cursor.startswith("1-")
    again = store.changes("order", batch.cursor)
    assert again.changes == [] and again.cursor == batch.cursor
    assert not shared_server.r.exists("__ctxf:other")
    assert store.changes("other").changes == []
    # the entry's fields: a history entry's plus v and key, in this order on both engines
    order = [list(e) for _, e in shared_server.r.xrange("__ctxf:order")]
    assert order == [[b"k", b"i", b"t", b"b", b"w", b"v", b"key"]] * 2 + [
        [b"k", b"i", b"t", b"b", b"w", b"f", b"v", b"key"],
        [b"k", b"i", b"t", b"b", b"w", b"v", b"key"]]


def test_the_feed_is_bounded_and_an_old_cursor_expires(store, pb):
    store.register_schema("order", pb.Order, feed=5)
    store.cas("o:1", 0, pb.Order(order_id="a"), schema="order")
    first = store.changes("order", count=1)
    assert [c.version for c in first.changes] == [1]
    for _ in range(4):
        store.update("o:1", _bump, message_class=pb.Order)
    ok = store.changes("order", first.cursor)  # 5 kept, entries 2..5 all there
    assert [c.version for c in ok.changes] == [2, 3, 4, 5]
    store.update("o:1", _bump, message_class=pb.Order)  # 6: entry 1 trimmed, nothing lost yet
    assert [c.version for c in store.changes("order", first.cursor).changes] == [2, 3, 4, 5, 6]
    store.update("o:1", _bump, message_class=pb.Order)  # 7: entry 2 trimmed: lost for `first`
    with pytest.raises(ctxlink.CursorExpiredError) as exc:
        store.changes("order", first.cursor)
    assert isinstance(exc.value, ctxlink.CtxError)
    assert [c.version for c in store.changes("order", ok.cursor).changes] == [6, 7]
    assert [c.version for c in store.changes("order").changes] == [3, 4, 5, 6, 7]


def test_bad_arguments_send_nothing(store, shared_server, pb):
    store.register_schema("order", pb.Order, feed=5)
    r = shared_server.r
    before = r.info("commandstats")
    for cursor in ("", "abc", "1-x-1-1", "2-0-1-0", "1-0-1", 5, b"1-0-0-0", "1--1-0-0",
                   "1-0-99999999999999999999-0"):
        with pytest.raises(ctxlink.ArgumentError, match="cursor"):
            store.changes("order", cursor)
    for count in (0, -1, 1.5, None, True):
        with pytest.raises(ctxlink.ArgumentError, match="count"):
            store.changes("order", count=count)
    for block in (-1, 0.5, "1"):
        with pytest.raises(ctxlink.ArgumentError, match="block_ms"):
            store.changes("order", block_ms=block)
    after = r.info("commandstats")
    assert {k: v["calls"] for k, v in after.items() if k != "cmdstat_info"} == \
        {k: v["calls"] for k, v in before.items() if k != "cmdstat_info"}


# --------------------------------------------------------------------------- concurrency


def test_four_writers_complete_and_in_order_per_context_resumed_across_restarts(
        engine, shared_server, pb):
    r = shared_server.r
    r.flushall()
    setup = ctxlink.connect(shared_server.client())
    setup.register_schema("order", pb.Order, feed=100_000)
    n = 40

    def writer(i: int) -> None:
        s = ctxlink.connect(shared_server.client())
        key = f"w:{i}"
        s.cas(key, 0, pb.Order(order_id=key), schema="order", by=f"w{i}")
        for j in range(n):
            if j % 2:
                s.update(key, _bump, message_class=pb.Order, by=f"w{i}")
            else:
                s.update(key, _bump, message_class=pb.Order, by=f"w{i}", reads=[])
        s.delete(key, n + 1)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    # a consumer that restarts (a new Store, its saved cursor) after every batch of 7
    seen: list[ctxlink.Change] = []
    cursor = None
    deadline = time.monotonic() + 60
    while len(seen) < 4 * (n + 2) and time.monotonic() < deadline:
        consumer = ctxlink.connect(shared_server.client())
        b = consumer.changes("order", cursor, count=7, block_ms=200)
        seen += b.changes
        cursor = b.cursor
    for t in threads:
        t.join()
    seen += _drain(setup, "order", cursor)[0]
    assert len(seen) == 4 * (n + 2)
    for i in range(4):
        mine = [c for c in seen if c.key == f"w:{i}"]
        assert [c.version for c in mine] == list(range(1, n + 2)) + [n + 1]
        assert [c.kind for c in mine][0] == "create" and mine[-1].kind == "delete"
    assert seen == _drain(setup, "order")[0]  # the same, read again from the start


def test_block_ms_wakes_on_a_write(store, shared_server, pb):
    store.register_schema("order", pb.Order, feed=10)
    b = store.changes("order")
    assert b.changes == []
    t0 = time.monotonic()
    assert store.changes("order", b.cursor, block_ms=150).changes == []
    assert 0.12 < time.monotonic() - t0 < 5

    def later() -> None:
        time.sleep(0.2)
        ctxlink.connect(shared_server.client()).cas("o:9", 0, pb.Order(order_id="z"),
                                                    schema="order")

    th = threading.Thread(target=later)
    th.start()
    t0 = time.monotonic()
    got = store.changes("order", b.cursor, block_ms=10_000)
    took = time.monotonic() - t0
    th.join()
    assert [c.key for c in got.changes] == ["o:9"] and took < 5


def test_aio_changes(engine, shared_server, pb):
    shared_server.r.flushall()

    async def main() -> None:
        import redis.asyncio as aredis

        client = aredis.Redis(port=shared_server.port)
        s = await ctxlink.aio.connect(client, engine=engine)
        await s.register_schema("order", pb.Order, feed=10)
        await s.cas("a:1", 0, pb.Order(order_id="a"), schema="order")
        b = await s.changes("order")
        assert [c.kind for c in b.changes] == ["create"]
        with pytest.raises(ctxlink.ArgumentError):
            await s.changes("order", "nope")
        await client.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------- replica


def test_a_replica_serves_changes(servers, engine, module_so, pb):
    module = engine == "module"
    primary = servers.start(module=module)
    replica = servers.replica(primary, module=module)
    s = ctxlink.connect(primary.client())
    s.register_schema("order", pb.Order, feed=10)
    s.cas("o:1", 0, pb.Order(order_id="a"), schema="order")
    s.update("o:1", _bump, message_class=pb.Order)
    assert s.delete("o:1", 2).ok
    srv.wait_replicated(primary, replica)
    rs = ctxlink.connect(replica.client())
    got = rs.changes("order")
    assert [(c.kind, c.version) for c in got.changes] == [("create", 1), ("update", 2),
                                                          ("delete", 2)]
    assert replica.r.xrange("__ctxf:order") == primary.r.xrange("__ctxf:order")
    assert got == s.changes("order")


# --------------------------------------------------------------------------- ACL


FEED_AGENT_ACL = ("ACL SETUSER fagent on >pw ~ctx:* ~__ctxf:* %R~__ctx:* +@all -@admin "
                  "-@dangerous")
FEED_READER_ACL = "ACL SETUSER freader on >pw %R~__ctxf:* %R~__ctx:* +@read +eval_ro +eval"
NO_FEED_AGENT_ACL = "ACL SETUSER nofeed on >pw ~ctx:* %R~__ctx:* +@all -@admin -@dangerous"


def test_the_feed_acl_lines_are_documented():
    text = PROTOCOL.read_text()
    assert FEED_AGENT_ACL in text and FEED_READER_ACL in text


def test_acl_lines_for_a_lua_agent_and_a_read_only_consumer(store, engine, shared_server, pb):
    r = shared_server.r
    store.register_schema("order", pb.Order, feed=50)
    store.cas("ctx:1", 0, pb.Order(order_id="a"), schema="order")
    for line in (FEED_AGENT_ACL, FEED_READER_ACL, NO_FEED_AGENT_ACL):
        r.execute_command(*line.split())
    try:
        good = redis.Redis(port=shared_server.port, username="fagent", password="pw")
        ctxlink.connect(good).update("ctx:1", _bump, message_class=pb.Order, by="agent")
        good.close()
        reader = redis.Redis(port=shared_server.port, username="freader", password="pw")
        got = ctxlink.connect(reader, engine=engine).changes("order")
        assert [c.version for c in got.changes] == [1, 2]
        reader.close()
        bad = redis.Redis(port=shared_server.port, username="nofeed", password="pw")
        agent = ctxlink.connect(bad)
        before = (r.get("ctx:1"), r.xrange("__ctxf:order"))
        if engine == "lua":
            with pytest.raises(Exception, match=re.compile("NOPERM|permission", re.I)):
                agent.update("ctx:1", _bump, message_class=pb.Order, by="agent")
            assert (r.get("ctx:1"), r.xrange("__ctxf:order")) == before
        else:  # the module writes the feed itself
            agent.update("ctx:1", _bump, message_class=pb.Order, by="agent")
            assert r.xlen("__ctxf:order") == 3
        bad.close()
    finally:
        r.execute_command("ACL", "DELUSER", "fagent", "freader", "nofeed")


# --------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module", params=["module", "lua"])
def one_node_cluster(request) -> Iterator[tuple[str, Any]]:
    """A cluster of one primary holding every slot: starts in well under a second (the refusal
    needs cluster mode, not three nodes; the 3-primary cluster is test_cluster's and
    test_history's)."""
    from ctxlink.embedded import EmbeddedCluster, find_module

    module = find_module() if request.param == "module" else None
    with EmbeddedCluster(1, module=module) as cluster:
        yield request.param, cluster.nodes[0]


def test_a_cluster_refuses_a_feed(one_node_cluster, pb):
    engine, node = one_node_cluster
    rc = RedisCluster(host="127.0.0.1", port=node.port)
    try:
        s = ctxlink.connect(rc)
        assert s.engine == engine
        before = rc.info("commandstats")
        with pytest.raises(ctxlink.SchemaError, match="change feed needs a standalone server"):
            s.register_schema("forder", pb.Order, feed=10)  # the SDK refuses: nothing sent
        with pytest.raises(ctxlink.SchemaError, match="docs/PROTOCOL.md"):
            s.changes("forder")
        after = rc.info("commandstats")
        sent = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
        assert sent <= {"cmdstat_info", "cmdstat_cluster", "cmdstat_command"}, sent
        # the server refuses it too (a client that skips the SDK's check), writing nothing
        r = redis.Redis(port=node.port)
        fds = pb.fds("order")
        with pytest.raises(redis.ResponseError, match="change feed needs a standalone") as exc:
            if engine == "module":
                r.execute_command("CTX.SCHEMA.SET", "forder", "ctxlink.example.Order", fds,
                                  "FEED", 5)
            else:
                from redis.crc import key_slot

                from ctxlink._cluster import _slot_tag

                tag = _slot_tag(key_slot(b"forder"))
                sha = r.script_load(s._st.scripts["schema_set"].source)
                r.evalsha(sha, 2, f"__ctx:{{{tag}}}:schema:forder", f"__ctx:{{{tag}}}:schemas",
                          "forder", "ctxlink.example.Order", fds, "version", "WIRE_JSON", 0, 0,
                          1, "", "", 5)
        assert "docs/PROTOCOL.md" in str(exc.value)
        assert not [k for k in r.scan_iter("__ctx*")]
        r.close()
        got = _cli(node.port, "watch", "--schema", "forder", "--count", "1", "-c")
        assert got.returncode == 1 and "needs a standalone server" in got.stderr
    finally:
        rc.close()


# --------------------------------------------------------------------------- CLI


def _cli(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "sdk"))
    return subprocess.run([sys.executable, "-m", "ctxlink", *args, "-p", str(port)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_watch_schema(store, shared_server, pb):
    port = shared_server.port
    store.register_schema("order", pb.Order)
    got = _cli(port, "watch", "--schema", "order", "--count", "1")
    assert got.returncode == 1 and got.stdout == ""
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "--feed" in lines[0] and "feed=" in lines[0]
    store.register_schema("order", pb.Order, feed=20)
    store.cas("o:1", 0, pb.Order(order_id="a"), schema="order", by="me")
    store.update("o:1", _bump, message_class=pb.Order, by="you")
    got = _cli(port, "watch", "--schema", "order", "--count", "2", "--json", "--from-start")
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(x["key"], x["kind"], x["version"], x["updated_by"]) for x in rows] == [
        ("o:1", "create", 1, "me"), ("o:1", "update", 2, "you")]
    # the default: only new changes (a live tail), here one made while it waits
    proc = subprocess.Popen([sys.executable, "-m", "ctxlink", "watch", "--schema", "order",
                             "--count", "1", "-p", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT / "sdk")))
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        store.update("o:1", _bump, message_class=pb.Order, by="late")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and "o:1" in lines[0] and "update" in lines[0] and "late" in lines[0]
    assert " v2 " not in lines[0]  # not the old change: a new one
    # schema push --feed
    got = _cli(port, "schema", "push", str(REPO_ROOT / "proto" / "order.proto"),
               "ctxlink.example.Order", "--name", "order", "--feed", "7")
    assert got.returncode == 0, got.stderr
    assert store.get_schema("order").feed == 7


# --------------------------------------------------------------------------- Redis 6.2


REDIS62 = REPO_ROOT / "build/_deps/redis-6.2/src/redis-server"


@pytest.mark.skipif(not REDIS62.exists(), reason=f"{REDIS62} is missing: run `make redis62`")
@pytest.mark.skipif(bool(os.environ.get("CTX_SAN_LOGS")),
                    reason="starts a plain Redis 6.2 (a sanitizer build needs the wrapper)")
@pytest.mark.parametrize("engine62", ["module", "lua"])
def test_the_feed_on_redis_6_2(engine62, pb, module_so):
    """6.2: no EVAL_RO (EVAL instead), no entries-added (ordinal 0; a cursor whose own entry was
    trimmed raises, conservatively)."""
    from ctxlink.embedded import EmbeddedRedis

    with EmbeddedRedis(module=module_so if engine62 == "module" else None,
                       binary=str(REDIS62)) as server:
        s = ctxlink.connect(server.client())
        assert s.engine == engine62
        s.register_schema("order", pb.Order, feed=3)
        s.cas("o:1", 0, pb.Order(order_id="a"), schema="order")
        first = s.changes("order")
        assert [c.version for c in first.changes] == [1] and first.cursor.startswith("1-0-")
        s.update("o:1", _bump, message_class=pb.Order)
        s.update("o:1", _bump, message_class=pb.Order)
        assert [c.version for c in s.changes("order", first.cursor).changes] == [2, 3]
        s.update("o:1", _bump, message_class=pb.Order)  # entry 1 trimmed
        with pytest.raises(ctxlink.CursorExpiredError, match="6.2"):
            s.changes("order", first.cursor)
        assert s.delete("o:1", 4).ok
        got = s.changes("order")
        assert [(c.kind, c.version) for c in got.changes] == [("update", 3), ("update", 4),
                                                              ("delete", 4)]
        t0 = time.monotonic()
        assert s.changes("order", got.cursor, block_ms=100).changes == []
        assert time.monotonic() - t0 >= 0.08


# --------------------------------------------------------------------------- AOF, refusals


AOF = [("appendfsync", "always"), ("aof-use-rdb-preamble", "no"),
       ("auto-aof-rewrite-percentage", 0)]


def test_the_feed_reaches_the_aof_with_its_ids_and_a_restart_rebuilds_it(servers, engine, pb):
    module = engine == "module"
    primary = servers.start(module=module, appendonly=True, config=AOF)
    s = ctxlink.connect(primary.client())
    s.register_schema("order", pb.Order, feed=10)
    tail = srv.AofTail(primary)
    s.cas("o:a", 0, pb.Order(order_id="a"), schema="order", by="w")
    cmds = tail.commands()
    names = [c[0].upper() for c in cmds]
    assert names[0] == b"MULTI" and names[-1] == b"EXEC", names
    xadd = next(c for c in cmds if c[0].upper() == b"XADD")
    assert xadd[1] == b"__ctxf:order" and xadd[2:5] == [b"MAXLEN", b"=", b"10"]
    assert re.fullmatch(rb"\d+-\d+", xadd[5]), xadd  # the id assigned, not "*"
    s.update("o:a", _bump, message_class=pb.Order)
    assert s.delete("o:a", 2).ok
    want = primary.r.xrange("__ctxf:order")
    assert len(want) == 3
    restarted = servers.restart(primary)
    assert restarted.r.xrange("__ctxf:order") == want


def test_refused_writes_append_nothing(store, engine, shared_server, pb):
    r = shared_server.r
    store.register_schema("order", pb.Order, feed=10)
    store.cas("o:1", 0, pb.Order(order_id="a"), schema="order")
    before = r.xrange("__ctxf:order")
    assert not store.cas("o:1", 0, pb.Order(order_id="b"), schema="order").ok  # conflict
    assert not store.delete("o:1", 7).ok
    with pytest.raises(ctxlink.ValidationError):
        store.cas("o:1", 1, b"\xff\xff", schema="order")
    assert r.xrange("__ctxf:order") == before
    # the reserved key holding another type: the module replaces it, the Lua engine refuses
    # the write (WRONGTYPE) and writes nothing
    r.delete("__ctxf:order")
    r.set("__ctxf:order", "x")
    if engine == "module":
        store.update("o:1", _bump, message_class=pb.Order)
        assert [e[1][b"v"] for e in r.xrange("__ctxf:order")] == [b"2"]
    else:
        with pytest.raises(Exception, match="WRONGTYPE"):
            store.update("o:1", _bump, message_class=pb.Order)
        assert store.get("o:1").version == 1 and r.get("__ctxf:order") == b"x"


def test_switching_the_feed_off_keeps_the_stream_and_stops_appending(store, pb):
    store.register_schema("order", pb.Order, feed=10)
    store.cas("o:1", 0, pb.Order(order_id="a"), schema="order")
    store.register_schema("order", pb.Order, feed=0)
    store.update("o:1", _bump, message_class=pb.Order)
    b = store.changes("order")
    assert [c.version for c in b.changes] == [1]
    store.register_schema("order", pb.Order, feed=10)
    store.update("o:1", _bump, message_class=pb.Order)
    assert [c.version for c in store.changes("order", b.cursor).changes] == [3]
