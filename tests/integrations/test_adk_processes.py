"""Several OS processes hammering one ADK session through CtxlinkSessionService, one of them
killed with SIGKILL mid-run, on a real redis-server and both engines: afterwards every
acknowledged event is stored exactly once, nothing is doubled, and the killed process's one
in-flight event may or may not be there."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ctxlink.integrations.adk import CtxlinkSessionService

WORKER = Path(__file__).with_name("adk_worker.py")


def test_processes_and_kill9_lose_and_double_no_event(redis_url: str) -> None:
    async def create() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            await s.create_session(app_name="hammer", user_id="u", session_id="one")
    asyncio.run(create())
    n_events = 25
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), redis_url, "one", f"w{n}",
                               str(n_events)], stdout=subprocess.PIPE, text=True, env=env)
             for n in range(4)]
    victim = procs[0]
    assert victim.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in victim.stdout:
        seen.append(line)
        if len(seen) >= 5 or time.monotonic() > deadline:
            break
    time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    rest, _ = victim.communicate()
    outputs = ["".join(seen) + rest]
    for p in procs[1:]:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        outputs.append(out)
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
