"""A worker process of test_openai_agents_processes.py: adds pairs of items to one session
through its own CtxlinkSession and prints each acknowledged pair ("ack <name>-<i>"), flushed."""

from __future__ import annotations

import asyncio
import sys

from ctxlink.integrations.openai_agents import CtxlinkSession


async def main(url: str, session_id: str, name: str, count: int) -> None:
    session = CtxlinkSession.from_url(session_id, url=url)
    for i in range(count):
        await session.add_items([{"role": "user", "content": f"{name}-{i}a"},
                                 {"role": "assistant", "content": f"{name}-{i}b"}])
        print("ack", f"{name}-{i}", flush=True)
    await session.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
