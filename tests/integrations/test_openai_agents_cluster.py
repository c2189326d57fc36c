"""CtxlinkSession on a real Redis Cluster of three primaries (module and Lua engines): sessions
land in several slots, concurrent adds from two cluster clients all land once, pop, the
compaction hooks and clear work there as on one server."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from ctxlink.integrations.openai_agents import CtxlinkSession, HistoryChangedError


@pytest.fixture
def cluster_port(redis_cluster: Any) -> tuple[str, int]:
    return redis_cluster.engine, redis_cluster.port


def test_sessions_on_a_cluster(cluster_port: tuple[str, int]) -> None:
    engine, port = cluster_port

    async def go() -> None:
        a = RedisCluster(host="127.0.0.1", port=port)
        b = RedisCluster(host="127.0.0.1", port=port)
        try:
            sessions = [CtxlinkSession(f"s{i}", redis_client=a, key_prefix=f"cl{engine}")
                        for i in range(6)]
            assert len({a.keyslot(s.key) for s in sessions}) > 1
            twins = [CtxlinkSession(s.session_id, redis_client=b, key_prefix=f"cl{engine}")
                     for s in sessions]

            async def add(s: CtxlinkSession, who: str) -> None:
                for n in range(10):
                    await s.add_items([{"role": "user", "content": f"{who}-{n}"}])

            await asyncio.gather(*(add(s, "a") for s in sessions),
                                 *(add(t, "b") for t in twins))
            for s in sessions:
                texts = [i["content"] for i in await s.get_items()]
                assert len(texts) == 20 and not [t for t, k in Counter(texts).items() if k > 1]
            s, t = sessions[0], twins[0]
            last = (await s.get_items())[-1]
            assert await t.pop_item() == last
            snap = await s._get_compaction_snapshot(3)
            await t.add_items([{"role": "user", "content": "late"}])
            assert not await snap.replace_suffix(0, [{"role": "user", "content": "S"}])
            snap = await s._get_compaction_snapshot(3)
            assert await snap.replace_suffix(0, [{"role": "user", "content": "S"}])
            assert (await t.get_items())[-1] == {"role": "user", "content": "S"}
            await s.get_items()
            await t.add_items([{"role": "user", "content": "later"}])
            with pytest.raises(HistoryChangedError):
                await s._atomic_replace_items([])
            await t.clear_session()
            assert await s.get_items() == []
            assert len(await sessions[1].get_items()) == 20
        finally:
            await a.aclose()
            await b.aclose()
    asyncio.run(go())
