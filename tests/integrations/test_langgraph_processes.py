"""Several OS processes hammering one LangGraph thread through CtxlinkSaver, one of them killed
with SIGKILL mid-run, on a real redis-server and both engines: afterwards every acknowledged
checkpoint is listed, no checkpoint id is listed twice, and every acknowledged task's writes are
there exactly once (the killed process's one in-flight put may or may not be there)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hammer import hammer

from ctxlink.integrations.langgraph import CtxlinkSaver

WORKER = Path(__file__).with_name("lg_worker.py")


def test_processes_and_kill9_lose_and_double_nothing(redis_url: str) -> None:
    thread = "hammer"
    n_steps = 40
    # the victim is killed once it has acknowledged a few checkpoints
    outputs = hammer(WORKER, lambda n: [redis_url, thread, f"w{n}", str(n_steps)],
                     lambda seen: sum(1 for x in seen if x.startswith("cp ")) >= 5)
    acked_cps: set[str] = set()
    acked_writes: list[tuple[str, str]] = []
    for out in outputs:
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["cp"]:
                acked_cps.add(parts[1])
            elif parts[:1] == ["w"] and len(parts) == 3:
                acked_writes.append((parts[1], parts[2]))
    with CtxlinkSaver.from_url(redis_url) as saver:
        thread_msg = saver._read_thread(thread)
        ids = [c for n in thread_msg.namespaces for c in n.checkpoint_ids]
        assert not [c for c, k in Counter(ids).items() if k > 1]
        assert acked_cps <= set(ids)
        assert len(ids) - len(acked_cps) <= 1  # the victim's in-flight put, at most
        listed = list(saver.list({"configurable": {"thread_id": thread}}))
        assert {t.config["configurable"]["checkpoint_id"] for t in listed} >= acked_cps
        by_cp = {t.config["configurable"]["checkpoint_id"]: t for t in listed}
        for cid, task in acked_writes:
            writes = [w for w in by_cp[cid].pending_writes if w[0] == task]
            assert sorted(w[1] for w in writes) == ["ch", "ch2"], writes
