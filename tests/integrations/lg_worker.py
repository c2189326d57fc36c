"""A worker process of test_langgraph_processes.py: puts checkpoints and writes on one thread
and prints each acknowledged one ("cp <id>" / "w <checkpoint id> <task id>"), flushed."""

from __future__ import annotations

import sys

from langgraph.checkpoint.base import empty_checkpoint

from ctxlink.integrations.langgraph import CtxlinkSaver


def main(url: str, thread: str, name: str, count: int) -> None:
    saver = CtxlinkSaver.from_url(url)
    cfg = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    for i in range(count):
        latest = saver.get_tuple(cfg)
        parent = latest.config if latest is not None else cfg
        cp = empty_checkpoint()
        cp["channel_values"] = {"n": i, "by": name}
        got = saver.put(parent, cp, {"worker": name, "step": i}, {})
        print("cp", got["configurable"]["checkpoint_id"], flush=True)
        task = f"{name}-{i}"
        saver.put_writes(got, [("ch", i), ("ch2", name)], task)
        saver.put_writes(got, [("ch", i), ("ch2", name)], task)  # a re-send
        print("w", got["configurable"]["checkpoint_id"], task, flush=True)
    saver.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
