"""An OpenAI Agents SDK agent whose conversation lives in ctxlink, with two writers at once.

Runs without an API key and without network: the agent's model is ``CannedModel`` below (a
``Model`` that answers from a list), tracing is off. Starts a throwaway redis-server (with
build/ctxlink.so when it is built, else a stock one and the Lua scripts), or uses the URL given
as the first argument. Then: two turns of the agent on session "support-42"; two other clients
add notes to the same session at the same moment (appends: both land, once each); ``pop_item``
takes back exactly the last item; the history is printed.

    pip install 'ctxlink[openai-agents]'
    .venv-int-openai-agents/bin/python examples/openai_agents_session.py
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from ctxlink.embedded import EmbeddedRedis, find_module
from ctxlink.integrations.openai_agents import CtxlinkSession


class CannedModel(Model):
    """Answers each call with the next of ``replies``, and records the input it was given."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.inputs: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any,
                           **kwargs: Any) -> ModelResponse:
        self.inputs.append(input)
        text = self.replies.pop(0)
        message = ResponseOutputMessage(
            id=f"msg_{len(self.inputs)}", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text=text, annotations=[])])
        # a response id: the Runner's automatic compaction (when the session compacts) needs one
        return ModelResponse(output=[message], usage=Usage(),
                             response_id=f"resp_{len(self.inputs)}")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("CannedModel answers Runner.run only")
        yield  # an async generator


def text_of(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content)
    return str(content)


async def run(url: str) -> None:
    set_tracing_disabled(True)
    model = CannedModel(["Your order ships today.", "It arrives Thursday."])
    agent = Agent(name="support", instructions="Answer briefly.", model=model)
    # RedisSession.from_url("support-42", url=url) -> CtxlinkSession.from_url(...)
    session = CtxlinkSession.from_url("support-42", url=url)
    await session.clear_session()
    try:
        first = await Runner.run(agent, "Where is my order?", session=session)
        print("turn 1:", first.final_output)
        second = await Runner.run(agent, "When will it arrive?", session=session)
        print("turn 2:", second.final_output)
        print("the model saw", len(model.inputs[1]), "items on turn 2 (the history + the question)")

        # two other clients (as other processes would) append at the same moment: no conflict
        others = [CtxlinkSession.from_url("support-42", url=url) for _ in range(2)]
        await asyncio.gather(*(o.add_items([{"role": "user", "content": f"note from client {i}"}])
                               for i, o in enumerate(others)))
        for o in others:
            await o.close()

        popped = await session.pop_item()
        print("pop_item took back:", text_of(popped) if popped else None)
        print("history:")
        for item in await session.get_items():
            print(f"  {item.get('role')}: {text_of(item)}")
    finally:
        await session.close()


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(run(sys.argv[1]))
        return
    with EmbeddedRedis(module=find_module()) as server:
        asyncio.run(run(server.url))


if __name__ == "__main__":
    main()
