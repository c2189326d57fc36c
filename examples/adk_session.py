"""A Google ADK agent whose sessions live in ctxlink, and two writers racing on one session.

Runs without an LLM key and without network: the agent's model is ``CannedLlm``, a ``BaseLlm``
of our own that first calls the agent's tool and then answers with canned text. Starts a
throwaway redis-server (with build/ctxlink.so when it is built, else a stock one and the Lua
scripts), then: the agent runs two turns through ADK's ``Runner`` on a
``CtxlinkSessionService``; its tool writes ``user:`` state, which a second session of the same
user sees; two workers holding the same copy of the session append at the same moment: exactly
one lands, the other gets ``StaleSessionError``, re-reads the session and appends again.

    pip install 'ctxlink[adk]'
    .venv-int-adk/bin/python examples/adk_session.py [redis://...]
"""

from __future__ import annotations

import asyncio
import sys
from typing import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.errors import StaleSessionError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from ctxlink.embedded import EmbeddedRedis, find_module
from ctxlink.integrations.adk import CtxlinkSessionService

APP = "support"
_USAGE = types.GenerateContentResponseUsageMetadata(
    prompt_token_count=0, candidates_token_count=0, total_token_count=0)


class CannedLlm(BaseLlm):
    """A model without a network: calls ``remember_order`` for a new user message, then, given
    the tool's response, answers with fixed text."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1]
        parts = last.parts or []
        done = [p.function_response for p in parts if p.function_response is not None]
        if done:
            order = (done[0].response or {}).get("order_id", "?")
            text = f"Order {order} ships tomorrow."
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]),
                              usage_metadata=_USAGE)
            return
        said = " ".join(p.text or "" for p in parts)
        order = said.split()[-1].strip("?.!") if said.split() else "?"
        call = types.FunctionCall(name="remember_order", args={"order_id": order})
        yield LlmResponse(content=types.Content(role="model",
                                                parts=[types.Part(function_call=call)]),
                          usage_metadata=_USAGE)


def remember_order(order_id: str, tool_context: ToolContext) -> dict[str, str]:
    """Remembers the order the user asked about (user-scoped state)."""
    tool_context.state["user:last_order"] = order_id
    return {"order_id": order_id}


async def racing_writer(service: CtxlinkSessionService, name: str, copy: object,
                        start: asyncio.Event) -> str:
    session = copy
    tries = 0
    while True:
        tries += 1
        await start.wait()
        event = Event(invocation_id=f"note-{name}", author=name,
                      actions=EventActions(state_delta={f"note_{name}": "seen"}))
        try:
            await service.append_event(session, event)  # type: ignore[arg-type]
            return f"{name}: appended on try {tries}"
        except StaleSessionError:
            print(f"{name}: StaleSessionError, the session changed: re-read, append again")
            session = await service.get_session(app_name=APP, user_id="ada",
                                                session_id="chat-1")


async def main(url: str) -> None:
    agent = LlmAgent(name="support", model=CannedLlm(model="canned"), tools=[remember_order],
                     instruction="Help with orders.", output_key="last_answer")
    async with CtxlinkSessionService.from_url(url) as sessions:
        runner = Runner(agent=agent, app_name=APP, session_service=sessions)
        await sessions.create_session(app_name=APP, user_id="ada", session_id="chat-1")
        for question in ("Where is order 1234?", "And order 5678?"):
            msg = types.Content(role="user", parts=[types.Part(text=question)])
            async for event in runner.run_async(user_id="ada", session_id="chat-1",
                                                new_message=msg):
                if event.content and event.content.parts and event.content.parts[0].text:
                    print(f"{event.author}: {event.content.parts[0].text}")

        session = await sessions.get_session(app_name=APP, user_id="ada", session_id="chat-1")
        assert session is not None
        print(f"chat-1: {len(session.events)} events, state {session.state}")
        other = await sessions.create_session(app_name=APP, user_id="ada", session_id="chat-2")
        print(f"chat-2 starts with {other.state}")
        assert other.state == {"user:last_order": "5678"}

        start = asyncio.Event()
        tasks = [asyncio.create_task(racing_writer(sessions, name, session.model_copy(deep=True),
                                                   start)) for name in ("triage", "billing")]
        await asyncio.sleep(0.05)
        start.set()
        for line in await asyncio.gather(*tasks):
            print(line)
        final = await sessions.get_session(app_name=APP, user_id="ada", session_id="chat-1")
        assert final is not None
        notes = sorted(e.invocation_id for e in final.events if e.invocation_id.startswith("note"))
        print(f"chat-1: {len(final.events)} events; notes {notes}")
        assert notes == ["note-billing", "note-triage"]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        try:
            module = find_module()
        except Exception:
            module = None  # a stock redis-server: the SDK uses the Lua scripts
        with EmbeddedRedis(module=module) as server:
            asyncio.run(main(server.url))
