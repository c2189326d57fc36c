"""ctxlink.integrations.pydantic_ai: CtxlinkConversationStore against real redis-servers, both
engines (the module, and a stock server with the Lua scripts).

What pydantic-ai-slim 2.78.0's ``ConversationStore`` contract says (its docstrings: the wheel ships
no store tests, and the repository snapshot available here predates the store) and what is
checked here: a save of a stale copy raises ``ConversationConflict``; of two concurrent stale
writers exactly one wins; a conversation deleted and created again gets a new revision, so a copy
loaded before the delete cannot be saved over it; ``update`` (title, metadata) keeps the revision
and a save keeps the title; two creators of one id: one wins; forks share entries; scope and
limit in ``list_conversations``. Plus concurrent writers that retry on conflict: nothing lost,
nothing doubled. The agent runs use pydantic-ai's ``TestModel`` (no LLM key).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

pytest.importorskip(
    "pydantic_ai.conversation_store",
    reason="pydantic-ai (pydantic-ai-slim 2.78, Python 3.11+) is not installed: "
           "pip install 'ctxlink[pydantic-ai]' (make integrations does)")

import redis  # noqa: E402
from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.conversation import Conversation  # noqa: E402
from pydantic_ai.conversation_store import ConversationConflict  # noqa: E402
from pydantic_ai.messages import ModelRequest, UserPromptPart  # noqa: E402
from pydantic_ai.models.test import TestModel  # noqa: E402

import ctxlink  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402
from ctxlink.integrations.pydantic_ai import (  # noqa: E402
    ENTRY_SCHEMA,
    RECORD_SCHEMA,
    CtxlinkConversationStore,
)

from conftest import registry_blind_agent  # noqa: E402


@pytest.fixture(scope="module", params=["module", "lua"])
def server(request: Any) -> Any:
    module = find_module() if request.param == "module" else None
    with EmbeddedRedis(module=module, die_with_parent=True) as srv:
        srv.engine = request.param
        yield srv


@pytest.fixture
def url(server: Any) -> str:
    redis.Redis.from_url(server.url).flushall()
    return str(server.url)


def make(url: str, **kw: Any) -> CtxlinkConversationStore:
    return CtxlinkConversationStore.from_url(url, **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def prompt(text: str) -> ModelRequest:
    return ModelRequest(parts=[UserPromptPart(text)])


def test_save_load_with_an_agent_and_stale_copy_conflicts(url: str) -> None:
    async def go() -> None:
        async with make(url) as store:
            agent = Agent(TestModel())
            conv = await store.load("c") or Conversation(conversation_id="c")
            assert conv.revision is None
            saved = await store.save(await agent.run("hello", conversation=conv))
            assert len(saved) == 2
            a = await store.load("c")
            b = await store.load("c")
            assert a is not None and b is not None and a.revision == b.revision
            assert [m.parts for m in a.messages] == [e.message.parts for e in saved]
            await store.save(await agent.run("from a", conversation=a))
            with pytest.raises(ConversationConflict):
                await store.save(await agent.run("from b", conversation=b))
            again = await store.load("c")
            assert again is not None and len(again.messages) == 4
    run(go())


def test_two_stale_writers_exactly_one_wins(url: str) -> None:
    """Each round both writers hold the same revision and save at once, each on its own client:
    exactly one save lands; the stored history has exactly the winners' messages."""
    async def go() -> None:
        s1, s2 = make(url), make(url)
        wins = 0
        for i in range(20):
            a = await s1.load("race") or Conversation(conversation_id="race")
            b = await s2.load("race") or Conversation(conversation_id="race")
            assert a.revision == b.revision
            a.messages.append(prompt(f"a{i}"))
            b.messages.append(prompt(f"b{i}"))
            out = await asyncio.gather(s1.save(a), s2.save(b), return_exceptions=True)
            ok = [r for r in out if not isinstance(r, BaseException)]
            lost = [r for r in out if isinstance(r, ConversationConflict)]
            assert len(ok) == 1 and len(lost) == 1, out
            wins += 1
        final = await s1.load("race")
        assert final is not None and len(final.messages) == wins
        await s1.close()
        await s2.close()
    run(go())


def test_direct_write_record_race_is_a_cas(url: str) -> None:
    """The primitive itself: two write_record calls that expect the same revision."""
    async def go() -> None:
        s1, s2 = make(url), make(url)
        conv = Conversation(conversation_id="w")
        conv.messages.append(prompt("x"))
        await s1.save(conv)
        rec = await s1.read_record("w")
        assert rec is not None
        r1 = dataclasses.replace(rec, revision="r1-new")
        r2 = dataclasses.replace(rec, revision="r2-new")
        out = await asyncio.gather(s1.write_record(r1, expected_revision=rec.revision),
                                   s2.write_record(r2, expected_revision=rec.revision),
                                   return_exceptions=True)
        assert sum(1 for r in out if r is None) == 1
        assert sum(1 for r in out if isinstance(r, ConversationConflict)) == 1
        now = await s1.read_record("w")
        assert now is not None and now.revision in ("r1-new", "r2-new")
        await s1.close()
        await s2.close()
    run(go())


def test_concurrent_writers_retrying_lose_nothing(url: str) -> None:
    """Four writers, eight turns each, retrying on ConversationConflict from a fresh load:
    afterwards every turn is stored exactly once."""
    async def writer(name: str) -> int:
        store = make(url)
        conflicts = 0
        for i in range(8):
            while True:
                conv = await store.load("busy") or Conversation(conversation_id="busy")
                conv.messages.append(prompt(f"{name}-{i}"))
                try:
                    await store.save(conv)
                    break
                except ConversationConflict:
                    conflicts += 1
        await store.close()
        return conflicts

    async def go() -> None:
        conflicts = await asyncio.gather(*(writer(f"w{n}") for n in range(4)))
        async with make(url) as store:
            final = await store.load("busy")
            assert final is not None
            texts = [m.parts[0].content for m in final.messages]  # type: ignore[union-attr]
            assert sorted(texts) == sorted(f"w{n}-{i}" for n in range(4) for i in range(8))
        assert sum(conflicts) >= 0
    run(go())


def test_create_race_and_recreated_conversation_gets_a_new_revision(url: str) -> None:
    async def go() -> None:
        s1, s2 = make(url), make(url)
        a, b = Conversation(conversation_id="n"), Conversation(conversation_id="n")
        a.messages.append(prompt("a"))
        b.messages.append(prompt("b"))
        out = await asyncio.gather(s1.save(a), s2.save(b), return_exceptions=True)
        assert sum(1 for r in out if isinstance(r, ConversationConflict)) == 1, out
        old = await s1.load("n")
        assert old is not None
        await s1.delete("n")
        assert await s1.load("n") is None
        fresh = Conversation(conversation_id="n")
        fresh.messages.append(prompt("again"))
        await s2.save(fresh)
        assert fresh.revision != old.revision
        old.messages.append(prompt("stale"))
        with pytest.raises(ConversationConflict):
            await s1.save(old)
        await s1.close()
        await s2.close()
    run(go())


def test_update_keeps_the_revision_and_saves_keep_the_title(url: str) -> None:
    async def go() -> None:
        async with make(url) as store:
            conv = Conversation(conversation_id="t")
            conv.messages.append(prompt("x"))
            await store.save(conv)
            rev = conv.revision
            rec = await store.update("t", title="Trip", metadata={"model": "m"},
                                     expected_title=None)
            assert rec.title == "Trip" and rec.revision == rev
            with pytest.raises(ConversationConflict):
                await store.update("t", title="Other", expected_title=None)
            conv.messages.append(prompt("y"))
            await store.save(conv)  # the loaded revision still holds after update
            rec2 = await store.read_record("t")
            assert rec2 is not None and rec2.title == "Trip" and rec2.metadata == {"model": "m"}
    run(go())


def test_fork_branch_scope_list_and_ttl(url: str) -> None:
    async def go() -> None:
        async with make(url, ttl=600) as store:
            conv = Conversation(conversation_id="f")
            conv.messages.extend([prompt("1"), prompt("2"), prompt("3")])
            await store.save(conv, scope="alice")
            fork = await store.fork("f", at=2, new_conversation_id="g")
            assert [m.parts[0].content for m in fork.messages] == ["1", "2"]  # type: ignore[union-attr]
            other = Conversation(conversation_id="h")
            other.messages.append(prompt("bob's"))
            await store.save(other, scope="bob")
            assert {r.conversation_id for r in await store.list_conversations(scope="alice")} \
                == {"f", "g"}
            assert len(await store.list_conversations(limit=1)) == 1
            assert await store.load("f", scope="bob") is None
            branched = await store.branch("f", at=1, expected_revision=conv.revision)
            assert len(branched.messages) == 1
            r = redis.Redis.from_url(url)
            assert 0 < r.pttl("pydantic_ai:conversation:f") <= 600_000
    run(go())


def test_schemas_registered_once_and_bad_arguments(url: str) -> None:
    async def go() -> None:
        async with make(url) as store:
            pass
        st = await ctxlink.aio.connect(url)
        revs = [(await st.get_schema(n)).revision for n in (RECORD_SCHEMA, ENTRY_SCHEMA)]  # type: ignore[union-attr]
        async with make(url) as store:
            await store.setup()
        assert revs == [(await st.get_schema(n)).revision  # type: ignore[union-attr]
                        for n in (RECORD_SCHEMA, ENTRY_SCHEMA)]
        async with CtxlinkConversationStore(store=st, key_prefix="p2:") as shared:
            c = Conversation(conversation_id="x")
            c.messages.append(prompt("x"))
            await shared.save(c)
        assert (await st.get("p2:conversation:x")) is not None
        await st.close()
    run(go())
    with pytest.raises(ValueError):
        CtxlinkConversationStore()
    with pytest.raises(ValueError):
        CtxlinkConversationStore(redis.asyncio.Redis(), redis_url=url)
    for prefix in ("", "a b", None):
        with pytest.raises(ValueError):
            CtxlinkConversationStore(redis_url=url, key_prefix=prefix)  # type: ignore[arg-type]
    for bad in (0, -1, True, float("nan"), float("inf"), "5"):
        with pytest.raises(ctxlink.ArgumentError):
            CtxlinkConversationStore(redis_url=url, ttl=bad)  # type: ignore[arg-type]


def test_example_runs_without_an_llm_key() -> None:
    """examples/pydantic_ai_conversation.py: TestModel, two racing workers, one conflict."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "pydantic_ai_conversation.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ConversationConflict" in out.stdout and "6 messages" in out.stdout


_WORKER = r'''
import asyncio, os, sys
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.messages import ModelRequest, UserPromptPart
from ctxlink.integrations.pydantic_ai import CtxlinkConversationStore

async def main(url, name, turns, ack_path):
    store = CtxlinkConversationStore.from_url(url)
    with open(ack_path, "a") as ack:
        for i in range(turns):
            while True:
                conv = await store.load("hammer") or Conversation(conversation_id="hammer")
                conv.messages.append(ModelRequest(parts=[UserPromptPart(f"{name}-{i}")]))
                try:
                    await store.save(conv)
                except ConversationConflict:
                    continue
                ack.write(f"{name}-{i}\n"); ack.flush(); os.fsync(ack.fileno())
                break
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
'''


def test_processes_hammering_one_conversation_with_kill_9(url: str, tmp_path: Any) -> None:
    """Three OS processes append turns to one conversation, retrying on conflicts; one is
    killed with SIGKILL mid-run. Every acknowledged turn is stored exactly once; the killed
    process's one in-flight turn may or may not be there; nothing is doubled."""
    import subprocess
    import sys
    import time

    turns = 15
    procs = {}
    for name in ("p0", "p1", "victim"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, name, str(turns), str(tmp_path / f"{name}.ack")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    victim_ack = tmp_path / "victim.ack"
    while time.monotonic() < deadline and (
            not victim_ack.exists() or len(victim_ack.read_text().split()) < 3):
        time.sleep(0.01)
    procs["victim"].kill()
    procs["victim"].wait()
    for name in ("p0", "p1"):
        _, err = procs[name].communicate(timeout=120)
        assert procs[name].returncode == 0, err.decode()[-2000:]

    async def stored() -> list[str]:
        async with make(url) as store:
            conv = await store.load("hammer")
            assert conv is not None
            return [m.parts[0].content for m in conv.messages]  # type: ignore[union-attr]

    texts = run(stored())
    assert len(texts) == len(set(texts)), "a turn was stored twice"
    acked = {t for n in procs for t in
             ((tmp_path / f"{n}.ack").read_text().split() if (tmp_path / f"{n}.ack").exists()
              else [])}
    assert acked <= set(texts), sorted(acked - set(texts))
    extra = set(texts) - acked
    assert len(extra) <= 1 and all(t.startswith("victim-") for t in extra), extra
    assert {f"p{k}-{i}" for k in (0, 1) for i in range(turns)} <= set(texts)


def test_agent_acl_without_registry_writes(url: str, server: Any) -> None:
    """An agent with docs/PROTOCOL.md's least-privilege ACL line (keys ``ctx:*`` here: the
    store's key_prefix) cannot register the schemas: the error says to run ``setup()`` as an
    administrator; after the administrator's ``setup()`` the agent works and writes nothing to
    the registry."""
    admin = redis.Redis.from_url(url)
    line = ["on", ">pw", "~ctx:*", "%R~__ctx:*", "+@all", "-@admin", "-@dangerous"]
    if server.engine == "module":
        line += ["-ctx.schema.set", "-ctx.schema.del"]
    else:
        line += ["&__ctx:wait:*"]
    admin.execute_command("ACL", "SETUSER", "pyai-agent", "reset", *line)
    agent_url = url.replace("redis://", "redis://pyai-agent:pw@", 1)

    async def as_agent() -> None:
        async with make(agent_url, key_prefix="ctx:chat:") as store:
            conv = Conversation(conversation_id="acl")
            conv.messages.append(prompt("hi"))
            await store.save(conv)
            assert (await store.load("acl")) is not None

    with pytest.raises(ctxlink.SchemaError, match=r"setup\(\)"):
        run(as_agent())

    async def as_admin() -> None:
        await make(url, key_prefix="ctx:chat:").setup()
    run(as_admin())
    run(as_agent())


def test_agent_that_cannot_read_the_registry(url: str, server: Any) -> None:
    """An agent whose ACL may not read the schema registry trusts an administrator's setup():
    without it the first save raises SetupRequiredError naming setup() and ``ctxlink schema
    push``; after it the agent saves and loads."""
    from ctxlink.integrations import SetupRequiredError

    agent_url = registry_blind_agent(url, server.engine, "pyai-reader")

    async def as_agent() -> None:
        async with make(agent_url, key_prefix="ctx:chat:") as store:
            conv = Conversation(conversation_id="acl")
            conv.messages.append(prompt("hi"))
            await store.save(conv)
            assert (await store.load("acl")) is not None

    with pytest.raises(SetupRequiredError) as err:
        run(as_agent())
    assert "setup()" in str(err.value) and "ctxlink schema push" in str(err.value)
    # module: the first write meets the missing schema; Lua: the registration is refused
    assert ("does not know" if server.engine == "module" else "may not write") in str(err.value)

    async def as_admin() -> None:
        await make(url, key_prefix="ctx:chat:").setup()
    run(as_admin())
    run(as_agent())


def test_read_history_in_batches_matches_the_one_by_one_walk(url: str) -> None:
    """read_history reads an entry's listed ancestors at once; it returns what the base class's
    walk (one read_entry per entry) returns, for every limit, across saves, a branch and a fork."""
    from pydantic_ai.conversation_store import ConversationStore

    async def go() -> None:
        async with make(url) as store:
            conv = Conversation(conversation_id="long")
            for turn in range(5):  # 5 saves of 9 messages: chains across saves
                conv.messages.extend(prompt(f"{turn}-{i}") for i in range(9))
                await store.save(conv)
            branched = await store.branch("long", at=20, expected_revision=conv.revision)
            branched.messages.extend(prompt(f"b-{i}") for i in range(20))
            await store.save(branched)
            fork = await store.fork("long", at=30, new_conversation_id="fork")
            fork.messages.extend(prompt(f"f-{i}") for i in range(3))
            await store.save(fork)
            for cid in ("long", "fork"):
                rec = await store.read_record(cid)
                assert rec is not None
                heads = [rec.head_id, *rec.branches]
                for head in heads:
                    for limit in (None, 0, 1, 2, 16, 17, 18, 33, 44, 45, 100):
                        ours = await store.read_history(head, limit=limit)
                        base = await ConversationStore.read_history(store, head, limit=limit)
                        assert [e.id for e in ours] == [e.id for e in base], (cid, head, limit)
            loaded = await store.load("long")
            assert loaded is not None and len(loaded.messages) == 40
    run(go())


@pytest.fixture
def cluster_url(redis_cluster: Any) -> int:
    """Three primaries on 127.0.0.1, slots split evenly; the module loaded or a stock server."""
    return int(redis_cluster.port)


def test_on_a_redis_cluster(cluster_url: int) -> None:
    """A redis.asyncio.RedisCluster client: records and entries spread over the slots; save,
    load, the stale-writer race, a fork and list_conversations (a SCAN of every primary)."""
    from redis.asyncio.cluster import RedisCluster

    async def go() -> None:
        client = RedisCluster(host="127.0.0.1", port=cluster_url)
        other = RedisCluster(host="127.0.0.1", port=cluster_url)
        try:
            store = CtxlinkConversationStore(client, key_prefix="cl:")
            store2 = CtxlinkConversationStore(other, key_prefix="cl:")
            for n in range(6):
                conv = Conversation(conversation_id=f"c{n}")
                conv.messages.extend(prompt(f"{n}-{i}") for i in range(20))
                await store.save(conv)
            a = await store.load("c0")
            b = await store2.load("c0")
            assert a is not None and b is not None
            a.messages.append(prompt("a"))
            b.messages.append(prompt("b"))
            out = await asyncio.gather(store.save(a), store2.save(b), return_exceptions=True)
            assert sum(1 for r in out if isinstance(r, ConversationConflict)) == 1, out
            loaded = await store.load("c0")
            assert loaded is not None and len(loaded.messages) == 21
            await store.fork("c1", at=10, new_conversation_id="c1-fork")
            listed = await store.list_conversations()
            assert {r.conversation_id for r in listed} == {f"c{n}" for n in range(6)} | {"c1-fork"}
        finally:
            await client.aclose()
            await other.aclose()
    run(go())


def test_a_lost_reply_is_applied_once(server: Any) -> None:
    """The reply of the record's write is dropped after the server applied it (tests/faultproxy.py,
    then the connection is reset): the SDK re-sends it with the same write id, the server answers
    "replayed", the save succeeds, and the conversation holds every message once; the same for
    an update's lost reply; afterwards a copy loaded between the two saves is stale."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from faultproxy import FaultProxy

    redis.Redis(port=server.port).flushall()
    marker = b'"conversation_id":"lost"'

    async def go(proxy: Any) -> None:
        async with make(f"redis://127.0.0.1:{proxy.port}/0") as store:
            conv = Conversation(conversation_id="lost")
            conv.messages.extend([prompt("1"), prompt("2")])
            proxy.arm(lambda args: any(marker in a for a in args), times=1)
            await store.save(conv)  # the create's reply is lost
            assert proxy.faults == 1
            other = await store.load("lost")
            assert other is not None and other.revision == conv.revision
            conv.messages.append(prompt("3"))
            proxy.arm(lambda args: any(marker in a for a in args), times=1)
            await store.save(conv)  # an update's reply is lost
            assert proxy.faults == 2
            final = await store.load("lost")
            assert final is not None and final.revision == conv.revision
            assert [m.parts[0].content for m in final.messages] == ["1", "2", "3"]  # type: ignore[union-attr]
            other.messages.append(prompt("stale"))
            with pytest.raises(ConversationConflict):
                await store.save(other)

    with FaultProxy(server.port) as proxy:
        run(go(proxy))


def test_ttl_entries_outlive_their_record(url: str) -> None:
    """ttl=2: the record expires 2 s after its last write, entries 4 s after theirs; a save more
    than ttl/2 after the last extension extends every entry of the history to 4 s again, a save
    sooner does not touch them."""
    import time

    r = redis.Redis.from_url(url)

    async def go() -> None:
        async with make(url, ttl=2) as store:
            conv = Conversation(conversation_id="ttl")
            conv.messages.append(prompt("old"))
            first = await store.save(conv)
            old_key = f"pydantic_ai:entry:{first[0].id}"
            assert 3500 < r.pttl(old_key) <= 4000
            assert 1500 < r.pttl("pydantic_ai:conversation:ttl") <= 2000
            await asyncio.sleep(0.3)
            conv.messages.append(prompt("soon"))
            await store.save(conv)  # 0.3 s < ttl/2: the old entry is not touched
            assert r.pttl(old_key) <= 3750
            await asyncio.sleep(0.9)
            conv.messages.append(prompt("later"))
            started = time.monotonic()
            await store.save(conv)  # 1.2 s > ttl/2: every entry back to 4 s
            assert r.pttl(old_key) > 4000 - 1000 * (time.monotonic() - started) - 250
            assert r.pttl(old_key) > r.pttl("pydantic_ai:conversation:ttl") + 1500
    run(go())
