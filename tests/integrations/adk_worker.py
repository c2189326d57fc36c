"""A worker process of test_adk_processes.py: appends ``count`` events (invocation ids
``<name>-<i>``) to one ADK session through CtxlinkSessionService, re-reading the session after
each StaleSessionError, and prints each acknowledged one ("ack <invocation id>"), flushed."""

from __future__ import annotations

import asyncio
import sys

from google.adk.errors import StaleSessionError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig

from ctxlink import OutcomeUnknownError
from ctxlink.integrations.adk import CtxlinkSessionService


async def main(url: str, session_id: str, name: str, count: int) -> None:
    async with CtxlinkSessionService.from_url(url) as service:
        for i in range(count):
            inv = f"{name}-{i}"
            while True:
                session = await service.get_session(
                    app_name="hammer", user_id="u", session_id=session_id,
                    config=GetSessionConfig(num_recent_events=1))
                assert session is not None
                event = Event(invocation_id=inv, author=name, actions=EventActions(
                    state_delta={f"user:{name}": i, "last": inv}))
                try:
                    await service.append_event(session, event)
                except StaleSessionError:
                    continue
                except OutcomeUnknownError:
                    full = await service.get_session(app_name="hammer", user_id="u",
                                                     session_id=session_id)
                    assert full is not None
                    if inv not in {e.invocation_id for e in full.events}:
                        continue
                print("ack", inv, flush=True)
                break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
