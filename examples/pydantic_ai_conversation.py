"""pydantic-ai conversations kept in ctxlink, with two writers racing on one conversation.

Runs without an LLM key: the agent uses pydantic-ai's ``TestModel``. Starts a throwaway
redis-server (with build/ctxlink.so when it is built, else a stock one and the Lua scripts),
then: a first turn is saved; two workers load the conversation at the same revision and save a
turn each at the same moment; exactly one save lands and the other gets ``ConversationConflict``,
reloads and runs its turn again. Afterwards the conversation holds both turns, once each.

    pip install 'ctxlink[pydantic-ai]'
    .venv-int-pydantic-ai/bin/python examples/pydantic_ai_conversation.py
"""

from __future__ import annotations

import asyncio

from pydantic_ai import Agent
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import ConversationConflict
from pydantic_ai.models.test import TestModel

from ctxlink.embedded import EmbeddedRedis, find_module
from ctxlink.integrations.pydantic_ai import CtxlinkConversationStore


async def worker(url: str, name: str, agent: Agent[None, str], start: asyncio.Event) -> str:
    store = CtxlinkConversationStore.from_url(url)  # its own client, as another process would
    try:
        tries = 0
        while True:
            tries += 1
            conversation = await store.load("support-42")
            assert conversation is not None
            result = await agent.run(f"{name}: what is the status?", conversation=conversation)
            await start.wait()  # both hold the same revision now: save at the same moment
            try:
                await store.save(result)
                return f"{name}: saved on try {tries}"
            except ConversationConflict:
                print(f"{name}: ConversationConflict, the conversation changed: reload, run again")
    finally:
        await store.close()


async def main(url: str) -> None:
    agent = Agent(TestModel(custom_output_text="Your order ships tomorrow."))
    async with CtxlinkConversationStore.from_url(url) as store:
        conversation = await store.load("support-42") or Conversation(conversation_id="support-42")
        await store.save(await agent.run("Hello, where is my order?", conversation=conversation))

        start = asyncio.Event()
        tasks = [asyncio.create_task(worker(url, name, agent, start))
                 for name in ("triage", "billing")]
        await asyncio.sleep(0.2)
        start.set()
        for line in await asyncio.gather(*tasks):
            print(line)

        final = await store.load("support-42")
        assert final is not None
        prompts = [p.content for m in final.messages if m.kind == "request"
                   for p in m.parts if p.part_kind == "user-prompt"]
        print(f"{len(final.messages)} messages, revision {final.revision}")
        for text in prompts:
            print("  user:", text)
        assert sorted(prompts[1:]) == ["billing: what is the status?",
                                       "triage: what is the status?"]


if __name__ == "__main__":
    try:
        module = find_module()
    except Exception:
        module = None  # a stock redis-server: the SDK uses the Lua scripts
    with EmbeddedRedis(module=module) as server:
        asyncio.run(main(server.url))
