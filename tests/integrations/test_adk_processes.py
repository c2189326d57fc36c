"""Several OS processes hammering one ADK session through CtxlinkSessionService, one of them
killed with SIGKILL mid-run, on a real redis-server and both engines: afterwards every
acknowledged event is stored exactly once, nothing is doubled, and the killed process's one
in-flight event may or may not be there."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from hammer import hammer

from ctxlink.integrations.adk import CtxlinkSessionService

WORKER = Path(__file__).with_name("adk_worker.py")


def test_processes_and_kill9_lose_and_double_no_event(redis_url: str) -> None:
    async def create() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            await s.create_session(app_name="hammer", user_id="u", session_id="one")
    asyncio.run(create())
    n_events = 25
    outputs = hammer(WORKER, lambda n: [redis_url, "one", f"w{n}", str(n_events)],
                     lambda seen: len(seen) >= 5)
    acked = {line.split()[1] for out in outputs for line in out.splitlines()
             if line.startswith("ack ")}

    async def stored() -> tuple[list[str], dict[str, object]]:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            got = await s.get_session(app_name="hammer", user_id="u", session_id="one")
            assert got is not None
            return [e.invocation_id or "" for e in got.events], got.state
    invs, state = asyncio.run(stored())
    assert not [i for i, k in Counter(invs).items() if k > 1], "an event was stored twice"
    assert acked <= set(invs), sorted(acked - set(invs))
    extra = set(invs) - acked
    assert len(extra) <= 1 and all(i.startswith("w0-") for i in extra), extra
    assert {f"w{n}-{i}" for n in (1, 2, 3) for i in range(n_events)} <= set(invs)
    assert state["last"] == invs[-1]
    for n in (1, 2, 3):
        assert state[f"user:w{n}"] == n_events - 1
