"""Several OS processes adding to one OpenAI Agents SDK session through CtxlinkSession, one of
them killed with SIGKILL mid-run, on a real redis-server and both engines: afterwards every
acknowledged pair of items is there exactly once and together, nothing is doubled, and of the
killed process's unacknowledged work at most its one in-flight pair landed (whole)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from hammer import hammer

from ctxlink.integrations.openai_agents import CtxlinkSession

WORKER = Path(__file__).with_name("oa_worker.py")


def test_processes_and_kill9_lose_and_double_nothing(redis_url: str) -> None:
    session_id = "hammer"
    count = 60
    outputs = hammer(WORKER, lambda n: [redis_url, session_id, f"p{n}", str(count)],
                     lambda seen: len(seen) >= 8)
    acked = {line.split()[1] for out in outputs for line in out.splitlines()
             if line.startswith("ack ")}
    assert len(acked) >= 3 * count + 8

    async def read() -> list[str]:
        session = CtxlinkSession.from_url(session_id, url=redis_url)
        try:
            return [item["content"] for item in await session.get_items()]
        finally:
            await session.close()

    texts = asyncio.run(read())
    assert not [t for t, k in Counter(texts).items() if k > 1], "an item is doubled"
    pairs = [t[:-1] for t in texts[0::2]]
    assert [t[:-1] for t in texts[1::2]] == pairs, "a pair was split"
    assert all(t.endswith("a") for t in texts[0::2])
    assert acked <= set(pairs)
    unacked = set(pairs) - acked
    assert len(unacked) <= 1 and all(u.startswith("p0-") for u in unacked)
