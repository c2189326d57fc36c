"""LangGraph on ctxlink: a two-node graph whose state lives in Redis, no LLM needed.

    pip install 'ctxlink[langgraph]'
    python examples/langgraph_checkpointer.py [redis://host:port]

Without a URL it starts a throwaway redis-server (ctxlink.embedded; build/ctxlink.so loaded when
it exists, else the Lua engine). It runs the graph twice on one thread, shows the history, then
two workers on one thread in strict mode: one wins, the other gets ctxlink.ConflictError.
"""

from __future__ import annotations

import operator
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

import ctxlink
from ctxlink.integrations.langgraph import CtxlinkSaver


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def build(saver: CtxlinkSaver) -> Any:
    b = StateGraph(State)
    b.add_node("plan", lambda s: {"steps": ["plan"]})
    b.add_node("act", lambda s: {"steps": ["act"]})
    b.add_edge(START, "plan")
    b.add_edge("plan", "act")
    b.add_edge("act", END)
    return b.compile(checkpointer=saver)


def run(url: str) -> None:
    with CtxlinkSaver.from_url(url) as saver:  # was: RedisSaver.from_conn_string(url)
        graph = build(saver)
        cfg = {"configurable": {"thread_id": "demo"}}
        print(graph.invoke({"steps": ["start"]}, cfg)["steps"])
        print(graph.invoke({"steps": ["again"]}, cfg)["steps"])
        print("checkpoints on the thread:", len(list(graph.get_state_history(cfg))))

    with CtxlinkSaver.from_url(url, strict=True) as strict:
        base = strict.put({"configurable": {"thread_id": "race", "checkpoint_ns": ""}},
                          empty_checkpoint(), {"step": 0}, {})
        strict.put(base, empty_checkpoint(), {"step": 1, "worker": "A"}, {})
        try:
            strict.put(base, empty_checkpoint(), {"step": 1, "worker": "B"}, {})
        except ctxlink.ConflictError as exc:
            print("worker B refused:", exc)


def main() -> None:
    if len(sys.argv) > 1:
        run(sys.argv[1])
        return
    from ctxlink.embedded import EmbeddedRedis

    so = Path(__file__).resolve().parents[1] / "build" / "ctxlink.so"
    with EmbeddedRedis(module=so if so.exists() else None) as server:
        run(server.url)


if __name__ == "__main__":
    main()
