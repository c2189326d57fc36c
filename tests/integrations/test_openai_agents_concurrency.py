"""CtxlinkSession with concurrent writers on one session (both engines): asyncio tasks and
threads adding at once, two clients creating the session at once, pops racing adds, compactions
racing adds, and the history at the server's max-payload-bytes."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any, Iterator

import pytest

import ctxlink
import ctxlink.aio
from ctxlink.embedded import EmbeddedRedis
from ctxlink.integrations.openai_agents import CtxlinkSession, HistoryChangedError

from conftest import ROOT


def item(writer: int, n: int) -> dict[str, Any]:
    return {"role": "user", "content": f"w{writer}-{n}"}


def check_once_and_in_order(got: list[dict[str, Any]], writers: int, per: int) -> None:
    """Every writer's items are there once each, in the order that writer added them."""
    texts = [g["content"] for g in got]
    assert not [t for t, k in Counter(texts).items() if k > 1]
    assert len(texts) == writers * per
    for w in range(writers):
        mine = [t for t in texts if t.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{n}" for n in range(per)]


def test_tasks_adding_at_once_all_land_once(redis_url: str) -> None:
    writers, per = 8, 25

    async def go() -> None:
        sessions = [CtxlinkSession.from_url("tasks", url=redis_url) for _ in range(writers)]

        async def add(w: int) -> None:
            for n in range(0, per, 5):  # batches of five: one append each
                await sessions[w].add_items([item(w, k) for k in range(n, n + 5)])

        await asyncio.gather(*(add(w) for w in range(writers)))
        check_once_and_in_order(await sessions[0].get_items(), writers, per)
        for s in sessions:
            await s.close()
    asyncio.run(go())


def test_one_session_object_shared_by_tasks(redis_url: str) -> None:
    async def go() -> None:
        s = CtxlinkSession.from_url("shared", url=redis_url)
        await asyncio.gather(*(s.add_items([item(w, n)]) for w in range(6) for n in range(10)))
        got = [g["content"] for g in await s.get_items()]
        assert sorted(got) == sorted(f"w{w}-{n}" for w in range(6) for n in range(10))
        await s.close()
    asyncio.run(go())


def test_threads_adding_at_once_all_land_once(redis_url: str) -> None:
    writers, per = 4, 30
    errors: list[BaseException] = []

    def thread(w: int) -> None:
        async def go() -> None:
            s = CtxlinkSession.from_url("threads", url=redis_url)
            for n in range(per):
                await s.add_items([item(w, n)])
            await s.close()
        try:
            asyncio.run(go())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    async def read() -> list[dict[str, Any]]:
        s = CtxlinkSession.from_url("threads", url=redis_url)
        try:
            return await s.get_items()
        finally:
            await s.close()
    check_once_and_in_order(asyncio.run(read()), writers, per)


def test_two_clients_creating_one_session_make_one_context(redis_url: str) -> None:
    """Each round a new session, created by two clients at the same moment: one context with
    both items (version 2), never one write lost to the other's create."""
    async def go() -> None:
        a_store = await ctxlink.aio.connect(redis_url)
        b_store = await ctxlink.aio.connect(redis_url)
        for r in range(30):
            a = CtxlinkSession(f"create-{r}", store=a_store)
            b = CtxlinkSession(f"create-{r}", store=b_store)
            await asyncio.gather(a.setup(), b.setup())
            await asyncio.gather(a.add_items([item(0, r)]), b.add_items([item(1, r)]))
            got = sorted(g["content"] for g in await a.get_items())
            assert got == [f"w0-{r}", f"w1-{r}"]
            snap = await a_store.get(a.key)
            assert snap is not None and snap.version == 2
        await a_store.close()
        await b_store.close()
    asyncio.run(go())


def test_pops_racing_adds_remove_each_item_once(redis_url: str) -> None:
    async def go() -> None:
        adders = [CtxlinkSession.from_url("pops", url=redis_url) for _ in range(3)]
        poppers = [CtxlinkSession.from_url("pops", url=redis_url) for _ in range(3)]
        popped: list[Any] = []

        async def add(w: int) -> None:
            for n in range(20):
                await adders[w].add_items([item(w, n)])

        async def pop(p: int) -> None:
            for _ in range(15):
                got = await poppers[p].pop_item()
                if got is not None:
                    popped.append(got["content"])

        await asyncio.gather(*(add(w) for w in range(3)), *(pop(p) for p in range(3)))
        left = [g["content"] for g in await adders[0].get_items()]
        assert not [t for t, k in Counter(popped + left).items() if k > 1]
        assert sorted(popped + left) == sorted(f"w{w}-{n}" for w in range(3) for n in range(20))
        for s in adders + poppers:
            await s.close()
    asyncio.run(go())


def test_compaction_racing_an_add_never_drops_it(redis_url: str) -> None:
    """replace_suffix and an add from another client at the same moment: the add is always
    there afterwards; the compaction either landed before it or was refused."""
    async def go() -> None:
        s = CtxlinkSession.from_url("race", url=redis_url)
        other = CtxlinkSession.from_url("race", url=redis_url)
        applied = refused = 0
        for r in range(40):
            await s.add_items([item(0, r), item(1, r)])
            snap = await s._get_compaction_snapshot(2)
            summary = {"type": "compaction", "id": f"c{r}", "encrypted_content": "x"}
            late = {"role": "user", "content": f"late-{r}"}
            ok, _ = await asyncio.gather(snap.replace_suffix(0, [summary]),
                                         other.add_items([late]))
            got = await s.get_items()
            assert got.count(late) == 1
            if ok:
                applied += 1
                assert got[-2:] == [summary, late]
            else:
                refused += 1
                assert got[-3:] == [item(0, r), item(1, r), late]
        assert applied + refused == 40
        await s.close()
        await other.close()
    asyncio.run(go())


def test_atomic_replace_racing_an_add_never_drops_it(redis_url: str) -> None:
    async def go() -> None:
        s = CtxlinkSession.from_url("race2", url=redis_url)
        other = CtxlinkSession.from_url("race2", url=redis_url)
        for r in range(30):
            await s.add_items([item(0, r)])
            await s.get_items()
            late = {"role": "user", "content": f"late-{r}"}

            async def replace() -> bool:
                try:
                    return await s._atomic_replace_items([{"role": "user", "content": "S"}])
                except HistoryChangedError:
                    return False

            ok, _ = await asyncio.gather(replace(), other.add_items([late]))
            got = await s.get_items()
            assert got.count(late) == 1
            if ok:
                assert got == [{"role": "user", "content": "S"}, late]
        await s.close()
        await other.close()
    asyncio.run(go())


@pytest.fixture
def small_limit_store(redis_server: EmbeddedRedis) -> Iterator[Any]:
    """A Store whose payload limit is 4096 bytes: the module's own (a server of its own with
    max-payload-bytes 4096) or the Lua engine's (the Store's max_payload_bytes)."""
    engine = redis_server.engine  # type: ignore[attr-defined]
    if engine == "module":
        server = EmbeddedRedis(module=ROOT / "build" / "ctxlink.so",
                               module_args=["max-payload-bytes", "4096"],
                               die_with_parent=True).start()
        try:
            yield server.url, {}
        finally:
            server.close()
    else:
        client = redis_server.client()
        client.flushall()
        client.close()
        yield redis_server.url, {"max_payload_bytes": 4096}


def test_history_at_max_payload_bytes_is_refused_whole(small_limit_store: Any) -> None:
    """The add that would take the history over the limit raises PayloadTooLarge and writes
    nothing of itself; the history stays readable and poppable, and a compaction brings it
    under the limit again."""
    url, options = small_limit_store

    async def go() -> None:
        store = await ctxlink.aio.connect(url, **options)
        s = CtxlinkSession("big", store=store)
        chunk = "x" * 500
        added = 0
        with pytest.raises(ctxlink.PayloadTooLarge):
            while True:
                await s.add_items([{"role": "user", "content": f"{added} {chunk}"},
                                   {"role": "user", "content": f"{added}b"}])
                added += 1
        got = await s.get_items()
        assert len(got) == 2 * added and added >= 5
        assert await s.pop_item() == {"role": "user", "content": f"{added - 1}b"}
        assert await s._atomic_replace_items([{"role": "user", "content": "summary"}])
        await s.add_items([{"role": "user", "content": "after"}])
        assert len(await s.get_items()) == 2
        await store.close()
    asyncio.run(go())


def test_connections_killed_mid_write_lose_and_double_nothing(redis_url: str) -> None:
    """Writers' connections are killed again and again (CLIENT KILL) while they add: a lost
    reply is re-sent and applied once. Every acknowledged item is there exactly once; an item
    whose outcome the SDK could not settle (OutcomeUnknownError) is there at most once."""
    import redis as sync_redis

    writers, per = 4, 40

    async def go() -> None:
        sessions = [CtxlinkSession.from_url("killed", url=redis_url) for _ in range(writers)]
        for s in sessions:
            await s.setup()
        acked: list[str] = []
        unknown: list[str] = []
        retried = [0]
        done = asyncio.Event()

        async def add(w: int) -> None:
            for n in range(per):
                text = f"w{w}-{n}"
                for _ in range(20):
                    try:
                        await sessions[w].add_items([{"role": "user", "content": text}])
                        acked.append(text)
                        break
                    except ctxlink.OutcomeUnknownError:
                        unknown.append(text)
                        break
                    except (ConnectionError, OSError, sync_redis.exceptions.ConnectionError):
                        retried[0] += 1
                        await asyncio.sleep(0.001)  # not sent: the next call is a new write
                        continue

        async def killer() -> int:
            admin = sync_redis.Redis.from_url(redis_url)
            kills = 0
            while not done.is_set():
                kills += int(await asyncio.to_thread(
                    admin.execute_command, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
                await asyncio.sleep(0.003)
            admin.close()
            return kills

        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(add(w) for w in range(writers)))
        done.set()
        kills = await kill_task
        reader = CtxlinkSession.from_url("killed", url=redis_url)
        texts = [i["content"] for i in await reader.get_items()]
        counts = Counter(texts)
        assert kills > 0
        assert all(counts[t] == 1 for t in acked), "an acknowledged item is missing or doubled"
        assert all(counts[t] <= 1 for t in unknown)
        assert set(texts) <= set(acked) | set(unknown)
        assert len(acked) + len(unknown) == writers * per
        for s in [*sessions, reader]:
            await s.close()
    asyncio.run(go())
