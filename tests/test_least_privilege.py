"""Least privilege (docs/PROTOCOL.md, "ACL"): an agent that may write its own contexts and only
read the schema registry runs every data operation through the SDK, on both engines; it cannot
write the registry nor keys outside its pattern; connect() finds the engine without COMMAND INFO.

The ACL lines below are the ones PROTOCOL.md documents (checked word for word).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import ctxlink
import pytest
import redis
from ctxlink.embedded import EmbeddedRedis
from ctxlink.embedded import find_module
from redis.cluster import RedisCluster

from ctxvalue import decode
from servers import REPO_ROOT

PROTOCOL = REPO_ROOT / "docs" / "PROTOCOL.md"
REDIS62 = Path(os.environ.get("CTXLINK_REDIS62",
                              REPO_ROOT / "build/_deps/redis-6.2/src/redis-server"))
ORDER = "ctxlink.example.Order"

# Redis 7.0: the agent writes ctx:* and reads __ctx:* (the registry); module commands have no
# ACL categories before 7.2, so the schema writes are denied by name.
AGENT_ACL = {
    "lua": "ACL SETUSER agent on >pw ~ctx:* %R~__ctx:* +@all -@admin -@dangerous",
    "module": "ACL SETUSER agent on >pw ~ctx:* %R~__ctx:* +@all -@admin -@dangerous "
              "-ctx.schema.set -ctx.schema.del",
}
# Redis 6.2 has no %R~: the Lua engine's agent needs ~__ctx:* (read implies write there)
AGENT_ACL_62 = {
    "lua": "ACL SETUSER agent on >pw ~ctx:* ~__ctx:* +@all -@admin -@dangerous",
    "module": "ACL SETUSER agent on >pw ~ctx:* +@all -@admin -@dangerous "
              "-ctx.schema.set -ctx.schema.del",
}
# Lua engine, naming the commands the scripts and the SDK run (PROTOCOL.md, "Trust boundary")
AGENT_ACL_NARROW = ("ACL SETUSER agent on >pw ~ctx:* %R~__ctx:* +evalsha +script|load +get +set "
                    "+type +exists +time +hget +hmget +del")
NO_COMMAND = " -command"  # the same agent without COMMAND (INFO): connect() must still work
NOBODY = "ACL SETUSER nobody on >pw"  # no command, no key: enough to tell the engine


def _setuser(r: redis.Redis, line: str) -> None:
    words = line.split()
    assert words[:2] == ["ACL", "SETUSER"]
    assert r.execute_command(*words) in (b"OK", "OK", True)


def _login(port: int, user: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, username=user, password="pw")


def _registry(r: redis.Redis) -> list[Any]:
    """Digests of the registry's keys (DUMP of a hash table depends on its rehashing state)."""
    return r.execute_command("DEBUG", "DIGEST-VALUE", "__ctx:schema:order", "__ctx:schemas")


def test_the_acl_lines_are_the_documented_ones() -> None:
    text = PROTOCOL.read_text()
    for line in (*AGENT_ACL.values(), *AGENT_ACL_62.values(), AGENT_ACL_NARROW):
        assert line in text, f"docs/PROTOCOL.md does not show: {line}"


@pytest.fixture
def admin(engine: str, shared_server, pb) -> Iterator[ctxlink.Store]:
    r = shared_server.r
    r.flushall()
    r.execute_command("ACL", "DELUSER", "agent", "nobody")
    store = ctxlink.connect(shared_server.client())
    assert store.engine == engine
    # the admin registers (the Lua engine stores the validation plan with the entry)
    assert store.register_schema("order", pb.fds("order"), message_type=ORDER) == 1
    yield store


@pytest.mark.parametrize("variant", ["agent", "agent-without-COMMAND", "agent-narrow"])
def test_an_agent_with_read_only_registry_runs_every_data_operation(
    engine: str, shared_server, admin: ctxlink.Store, pb, variant: str
) -> None:
    r = shared_server.r
    if variant == "agent-narrow":
        if engine != "lua":
            pytest.skip("the narrow line names the Lua engine's commands")
        _setuser(r, AGENT_ACL_NARROW)
        r.execute_command("SCRIPT", "FLUSH")  # the agent loads the scripts itself
    else:
        _setuser(r, AGENT_ACL[engine] + (NO_COMMAND if variant != "agent" else ""))
    no_command = variant != "agent"
    client = _login(shared_server.port, "agent")
    if no_command:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("COMMAND", "INFO", "ctx.cas")
    agent = ctxlink.connect(client)
    assert agent.engine == engine

    assert agent.cas("ctx:1", 0, pb.order(1, order_id="o-1"), schema="order", by="a").ok
    snap = agent.get("ctx:1")
    assert snap is not None and snap.version == 1 and snap.schema == "order"
    assert agent.cas("ctx:1", 1, pb.order(2, order_id="o-1", base_price=5)).version == 2
    stale = agent.cas("ctx:1", 1, pb.order(2))
    assert not stale.ok and stale.current is not None and stale.current.version == 2
    with pytest.raises(ctxlink.ValidationError):  # still validated against the registry
        agent.cas("ctx:1", 2, pb.order(3) + b"\x52\x03\x0a\x01\xff")
    with pytest.raises(ctxlink.SchemaError, match="unknown schema"):
        agent.cas("ctx:2", 0, pb.order(1), schema="nosuch")
    assert agent.delete("ctx:1", 2).ok
    assert agent.get("ctx:1") is None
    client.close()


def test_an_agent_cannot_write_the_registry_or_foreign_keys(
    engine: str, shared_server, admin: ctxlink.Store, pb
) -> None:
    r = shared_server.r
    _setuser(r, AGENT_ACL[engine])
    client = _login(shared_server.port, "agent")
    agent = ctxlink.connect(client)
    before = _registry(r)
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.register_schema("order", pb.fds("order"), message_type=ORDER, force=True)
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.register_schema("other", pb.fds("order"), message_type=ORDER)
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.drop_schema("order")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hset("__ctx:schema:order", "vfield", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.delete("__ctx:schemas")
    assert _registry(r) == before and r.exists("__ctx:schema:other") == 0
    # keys outside ctx:* are refused, whatever the command
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.cas("other:1", 0, pb.order(1), schema="order")
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.get("other:1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:1", "x")
    assert r.exists("other:1") == 0
    client.close()


def test_a_user_without_any_right_still_gets_the_right_engine(engine: str, shared_server) -> None:
    _setuser(shared_server.r, NOBODY)
    client = _login(shared_server.port, "nobody")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("COMMAND", "INFO", "ctx.cas")
    assert ctxlink.connect(client).engine == engine
    client.close()


# ------------------------------------------------- history and wait, and a read-only observer


def _documented_acl_lines() -> list[str]:
    """Every ``ACL SETUSER`` line of the fenced blocks of docs/PROTOCOL.md's "ACL" section, as
    the file has them (the tests below take their lines from here, not from a copy)."""
    text = PROTOCOL.read_text()
    section = text[text.index("\n## ACL\n"):]
    section = section[:section.index("\n## ", 1)]
    lines, fenced = [], False
    for line in section.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("ACL SETUSER "):
            lines.append(line.strip())
    return lines


def _doc_line(*must: str, without: tuple[str, ...] = ()) -> str:
    """The one documented line containing every word of ``must`` and none of ``without``."""
    found = [line for line in _documented_acl_lines()
             if all(w in line.split() for w in must) and not any(w in line.split()
                                                                  for w in without)]
    assert len(found) == 1, f"docs/PROTOCOL.md, ACL: {len(found)} lines with {must}: {found}"
    return found[0]


def history_agent_line(engine: str) -> str:
    if engine == "lua":
        return _doc_line("agent", "~__ctxh:*", "&__ctx:wait:*")
    return _doc_line("agent", "%R~__ctxh:*", "-ctx.schema.set")


def observer_line(engine: str) -> str:
    if engine == "lua":
        return _doc_line("observer", "+evalsha_ro")
    return _doc_line("observer", "+ctx.get")


def test_the_history_and_observer_lines_are_in_the_docs() -> None:
    for engine in ("module", "lua"):
        assert history_agent_line(engine).startswith("ACL SETUSER agent on >pw ")
        assert observer_line(engine).startswith("ACL SETUSER observer on >pw ")
    assert "%R~ctx:*" in observer_line("module").split()


@pytest.fixture
def hadmin(engine: str, shared_server, pb) -> Iterator[ctxlink.Store]:
    """The admin registers schema "order" with history (and payloads) on."""
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    r.execute_command("ACL", "DELUSER", "agent", "observer")
    store = ctxlink.connect(shared_server.client())
    assert store.engine == engine
    store.register_schema("order", pb.fds("order"), message_type=ORDER, history=5,
                          history_payloads=True)
    yield store
    r.execute_command("ACL", "DELUSER", "agent", "observer")


def test_the_documented_agent_runs_every_operation_with_history_and_wait(
    engine: str, shared_server, hadmin: ctxlink.Store, pb
) -> None:
    r = shared_server.r
    _setuser(r, history_agent_line(engine))
    client = _login(shared_server.port, "agent")
    agent = ctxlink.connect(client)
    assert agent.engine == engine
    Order = pb.Order
    assert agent.cas("ctx:1", 0, Order(order_id="o-1", version=1), schema="order", by="a",
                     ttl=600).ok
    snap = agent.get("ctx:1")
    assert snap is not None and snap.version == 1
    assert agent.cas("ctx:1", 1, Order(order_id="o-1", version=2), by="a",
                     incarnation=snap.incarnation).ok
    up = agent.update("ctx:1", lambda o: setattr(o, "order_id", "o-2"), message_class=Order,
                      by="a")
    assert up.version == 3
    patched = agent.update("ctx:1", lambda o: setattr(o, "base_price", 7), message_class=Order,
                           by="a", reads=[])
    assert patched.version == 4
    assert agent.touch("ctx:1", 1200) and 0 < r.ttl("ctx:1") <= 1200
    assert 0 < r.ttl("__ctxh:ctx:1") <= 1200

    woke: list[Any] = []
    waiter = ctxlink.connect(_login(shared_server.port, "agent"))
    t = threading.Thread(target=lambda: woke.append(waiter.wait("ctx:1", 4, 10)), daemon=True)
    t.start()
    time.sleep(0.3)
    assert agent.cas("ctx:1", 4, Order(order_id="o-3", version=5), by="b").ok
    t.join(10)
    assert woke and woke[0] is not None and woke[0].version == 5
    assert agent.wait("ctx:1", 4, 0.1).version == 5  # already above: at once

    hist = agent.history("ctx:1")
    assert [(c.kind, c.version, c.updated_by) for c in hist] == [
        ("create", 1, "a"), ("update", 2, "a"), ("update", 3, "a"), ("patch", 4, "a"),
        ("update", 5, "b")]
    assert hist[3].fields == ("base_price",) and hist[-1].payload is not None
    assert [c.version for c in agent.history("ctx:1", since_version=3, limit=1)] == [5]

    # a waiter sees the deletion; the stream goes with the context
    gone: list[Any] = []

    def wait_for_delete() -> None:
        try:
            gone.append(waiter.wait("ctx:1", 5, 10))
        except ctxlink.NotFoundError as e:
            gone.append(e)

    t = threading.Thread(target=wait_for_delete, daemon=True)
    t.start()
    time.sleep(0.3)
    assert agent.delete("ctx:1", 5).ok
    t.join(10)
    assert gone and isinstance(gone[0], ctxlink.NotFoundError)
    assert r.exists("ctx:1", "__ctxh:ctx:1") == 0 and agent.history("ctx:1") == []
    # still no registry writes
    before = _registry(r)
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.register_schema("order", pb.fds("order"), message_type=ORDER, history=1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hset("__ctx:schema:order", "history", "0")
    assert _registry(r) == before
    waiter.client.close()
    client.close()


def _cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ctxlink", path=str(Path(sys.executable).parent)) or "ctxlink"
    return subprocess.run([exe, *args, "--port", str(port), "--user", "observer", "-a", "pw"],
                          capture_output=True, text=True, timeout=60)


def test_the_documented_observer_reads_and_cannot_write(
    engine: str, shared_server, hadmin: ctxlink.Store, pb
) -> None:
    r = shared_server.r
    Order = pb.Order
    assert hadmin.cas("ctx:1", 0, Order(order_id="o-1", version=1), schema="order", by="a").ok
    assert hadmin.cas("ctx:1", 1, Order(order_id="o-2", version=2), by="b").ok
    _setuser(r, observer_line(engine))
    port = shared_server.port

    got = _cli(port, "get", "ctx:1", "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert (doc["version"], doc["updated_by"], doc["message"]["order_id"]) == (2, "b", "o-2")
    hist = _cli(port, "history", "ctx:1")
    observer = ctxlink.connect(_login(port, "observer"))
    if hist.returncode == 2 and "No such command 'history'" in hist.stderr:
        # the CLI's history command is not in this tree yet: the SDK call it makes
        assert [c.version for c in observer.history("ctx:1")] == [1, 2]
    else:
        assert hist.returncode == 0, hist.stderr
        assert "create" in hist.stdout and "update" in hist.stdout
    snap = observer.get("ctx:1")
    assert snap is not None and snap.version == 2
    assert observer.wait("ctx:1", 1, 1).version == 2

    before = r.execute_command("DEBUG", "DIGEST")
    attempts = [
        lambda: observer.cas("ctx:1", 2, Order(order_id="x", version=3)),
        lambda: observer.cas("ctx:9", 0, Order(order_id="x", version=1), schema="order"),
        lambda: observer.update("ctx:1", lambda o: setattr(o, "order_id", "y"),
                                message_class=Order, timeout=2),
        lambda: observer.delete("ctx:1", 2),
        lambda: observer.touch("ctx:1", 60),
        lambda: observer.register_schema("order", pb.fds("order"), message_type=ORDER,
                                         history=1),
        lambda: observer.client.set("ctx:1", "x"),
        lambda: observer.client.xadd("__ctxh:ctx:1", {"k": "x"}),
    ]
    for attempt in attempts:
        # NOPERM; a write inside a Lua-engine script: "The user executing the script can't run
        # this command" (the scripts write nothing before their first write command)
        with pytest.raises(redis.exceptions.ResponseError) as info:
            attempt()
        text = str(info.value)
        assert isinstance(info.value, redis.exceptions.NoPermissionError) or (
            engine == "lua" and "can't run this command" in text), text
        assert r.execute_command("DEBUG", "DIGEST") == before
    observer.client.close()


# --------------------------------------------------------------------------- Redis 6.2


@pytest.mark.skipif(not REDIS62.exists(), reason=f"{REDIS62} is missing: run `make redis62`")
@pytest.mark.parametrize("engine62", ["lua", "module"])
def test_redis_6_2_agent_and_detection(engine62: str, pb) -> None:
    module = find_module() if engine62 == "module" else None
    with EmbeddedRedis(module=module, binary=str(REDIS62)) as server:
        r = server.client()
        admin = ctxlink.connect(r)
        assert admin.engine == engine62
        assert admin.register_schema("order", pb.fds("order"), message_type=ORDER) == 1
        _setuser(r, AGENT_ACL_62[engine62])
        _setuser(r, NOBODY)
        nobody = _login(server.port, "nobody")
        assert ctxlink.connect(nobody).engine == engine62  # 6.2 checks ACL before arity
        nobody.close()
        client = _login(server.port, "agent")
        agent = ctxlink.connect(client)
        assert agent.engine == engine62
        assert agent.cas("ctx:1", 0, pb.order(1), schema="order").ok
        assert agent.cas("ctx:1", 1, pb.order(2)).version == 2
        assert agent.get("ctx:1").version == 2
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("other:1", "x")
        if engine62 == "module":
            with pytest.raises(redis.exceptions.NoPermissionError):
                agent.drop_schema("order")
        assert agent.delete("ctx:1", 2).ok
        client.close()
        r.close()


# --------------------------------------------------------------------------- Redis Cluster


_PB: Any = None


@pytest.fixture(scope="module")
def agent_cluster(pb) -> Iterator[list[EmbeddedRedis]]:
    """A stock 3-primary cluster (the Lua engine's ground) with the agent user on every node."""
    from test_cluster import _cluster

    global _PB
    _PB = pb
    for nodes in _cluster(module=False):
        for node in nodes:
            r = node.client()
            _setuser(r, AGENT_ACL["lua"])
            r.close()
        admin = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        store = ctxlink.connect(admin)
        assert store.register_schema("order", _PB.fds("order"), message_type=ORDER) == 1
        admin.close()
        yield nodes


def test_lua_agent_on_a_cluster_keeps_writing_while_slots_move(
    agent_cluster: list[EmbeddedRedis], pb
) -> None:
    """cas.lua reads the registry copy of its key's slot undeclared; while slots migrate, the
    copy and the context can be on different nodes for a moment, and the SDK retries."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to reshard (apt-get install redis-tools)")
    port = agent_cluster[0].port
    admin_rc = RedisCluster(host="127.0.0.1", port=port)
    agent_rc = RedisCluster(host="127.0.0.1", port=port, username="agent", password="pw")
    try:
        agent = ctxlink.connect(agent_rc)
        assert agent.engine == "lua"
        # keys of the slots that move (0..299, from the first primary): two per third slot
        tags = [ctxlink._cluster._slot_tag(slot) for slot in range(0, 300, 3)]
        keys = [f"ctx:{{{t}}}:{i}" for t in tags for i in range(2)]
        versions = dict.fromkeys(keys, 0)
        for k in keys:
            versions[k] = agent.cas(k, 0, pb.order(1), schema="order").version
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent_rc.hset(f"__ctx:{{{ctxlink._cluster._slot_tag(0)}}}:schema:order", "x", "y")

        stop, errors, writes = threading.Event(), [], [0]

        def writer() -> None:
            while not stop.is_set():
                for k in keys:
                    try:
                        v = versions[k]
                        versions[k] = agent.cas(k, v, pb.order(v + 1)).version
                        writes[0] += 1
                    except Exception as exc:  # noqa: BLE001 - collected, asserted below
                        errors.append(f"{k}: {exc!r}")
                    if stop.is_set():
                        return

        thread = threading.Thread(target=writer)
        thread.start()
        src, dst = (n.client().execute_command("CLUSTER", "MYID").decode()
                    for n in agent_cluster[:2])
        try:
            subprocess.run(
                ["redis-cli", "-p", str(port), "--cluster", "reshard", f"127.0.0.1:{port}",
                 "--cluster-from", src, "--cluster-to", dst, "--cluster-slots", "300",
                 "--cluster-pipeline", "3", "--cluster-yes"],
                check=True, capture_output=True, timeout=120,
            )
        finally:
            stop.set()
            thread.join()
        assert errors == [], errors[:5]
        assert writes[0] > 0
        agent_rc.nodes_manager.initialize()
        for k in keys:
            snap = agent.get(k)
            assert snap is not None and snap.version == versions[k]
    finally:
        admin_rc.close()
        agent_rc.close()


def test_cas_lua_cannot_be_pointed_at_another_slots_copy(agent_cluster: list[EmbeddedRedis]) -> None:
    from ctxlink._cluster import _slot_tag
    from ctxlink._scripts import null_plan_script

    rc = RedisCluster(host="127.0.0.1", port=agent_cluster[0].port)
    try:
        script = null_plan_script()  # cas.lua as assembled; it reads the registry by tag + name
        key = "ctx:{slot-check}"
        other = _slot_tag((rc.keyslot(key) + 1) % 16384)
        with pytest.raises(redis.ResponseError, match="same slot|non local key"):
            rc.execute_command("EVAL", script.source, 1, key, 0, b"", 1, "", 1048576, 32,
                               "reject", "order", other)
        assert rc.exists(key) == 0
    finally:
        rc.close()


def _half_migrated(nodes: list[EmbeddedRedis], key: str, first: list[str]) -> tuple[Any, Any, int]:
    """Starts migrating ``key``'s slot from its owner to another primary and moves only the keys
    ``first`` of that slot; returns (source, target, slot)."""
    rc = RedisCluster(host="127.0.0.1", port=nodes[0].port)
    slot = rc.keyslot(key)
    owner = rc.nodes_manager.get_node_from_slot(slot)
    rc.close()
    primaries = [n.client() for n in nodes[:3]]
    src = next(c for c in primaries if c.connection_pool.connection_kwargs["port"] == owner.port)
    dst = next(c for c in primaries if c is not src)
    src_id, dst_id = (c.execute_command("CLUSTER", "MYID").decode() for c in (src, dst))
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    dst_port = dst.connection_pool.connection_kwargs["port"]
    src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *first)
    return src, dst, slot


def _finish_migration(src: Any, dst: Any, slot: int, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        dst_port = dst.connection_pool.connection_kwargs["port"]
        rest = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if rest:
            src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *rest)
        dst_id = dst.execute_command("CLUSTER", "MYID").decode()
        for c in (dst, src):
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("moves_first", ["registry", "context"])
def test_cas_lua_during_a_slot_migration_is_retried_until_the_slot_settles(
    agent_cluster: list[EmbeddedRedis], pb, moves_first: str
) -> None:
    """Registry copy moved first: the script on the old owner cannot read it ("non local key").
    Context moved first: the script runs on the new owner (ASK) before the copy arrives
    ("unknown schema"). Either way the SDK retries and the write lands once the slot settles."""
    from ctxlink._cluster import _slot_tag

    agent_rc = RedisCluster(host="127.0.0.1", port=agent_cluster[0].port,
                            username="agent", password="pw")
    try:
        agent = ctxlink.connect(agent_rc)
        key = f"ctx:mig:{moves_first}"
        assert agent.cas(key, 0, pb.order(1), schema="order").ok
        slot = agent_rc.keyslot(key)
        tag = _slot_tag(slot)
        copy, index = f"__ctx:{{{tag}}}:schema:order", f"__ctx:{{{tag}}}:schemas"
        first = [copy, index] if moves_first == "registry" else [key]
        src, dst, slot = _half_migrated(agent_cluster, key, first)
        if moves_first == "registry":  # what the script meets without the SDK's retry
            sha = agent._st.scripts["cas:order"].sha  # the plan script the write used
            with pytest.raises(redis.ResponseError, match="non local key"):
                src.execute_command("EVALSHA", sha, 1, key, 1, pb.order(2), 0, "", 1048576, 32,
                                    "reject", "order", tag)
        thread = _finish_migration(src, dst, slot, delay=0.03)
        try:
            assert agent.cas(key, 1, pb.order(2)).version == 2
        finally:
            thread.join()
        agent_rc.nodes_manager.initialize()
        assert agent.get(key).version == 2
        assert decode(dst.get(key)).version == 2
    finally:
        agent_rc.close()
