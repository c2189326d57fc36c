"""CtxlinkSaver: our own tests (both engines; `make integrations`, LangGraph's tested range).

What LangGraph's conformance suite does not cover: a real graph (invoke, state history,
update_state, resuming), strict mode (two workers on one thread: exactly one ConflictError),
put_writes exactly once under re-sends and concurrent tasks, puts never lost under concurrency,
no unpickling, schema registration without a write when the registry has the definition, the
setup error under an ACL that cannot write the registry, TTL, the constructors, and that
`import ctxlink` imports nothing of LangGraph.
"""

from __future__ import annotations

import operator
import subprocess
import sys
import threading
import time
from typing import Annotated, Any, TypedDict

import pytest
import redis
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

import ctxlink
from ctxlink.integrations._common import SetupRequiredError
from ctxlink.integrations.langgraph import SCHEMA_CHECKPOINT, CtxlinkSaver


class State(TypedDict):
    items: Annotated[list[str], operator.add]


def _graph(saver: CtxlinkSaver) -> Any:
    b = StateGraph(State)
    b.add_node("a", lambda s: {"items": ["a"]})
    b.add_node("b", lambda s: {"items": ["b"]})
    b.add_edge(START, "a")
    b.add_edge("a", "b")
    b.add_edge("b", END)
    return b.compile(checkpointer=saver)


def _cp(parent: dict[str, Any] | None = None) -> dict[str, Any]:
    cp = empty_checkpoint()
    cp["channel_values"] = {"x": 1}
    return cp


def _config(thread: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def test_graph_runs_resumes_and_time_travels(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        g = _graph(saver)
        cfg = {"configurable": {"thread_id": "t1"}}
        assert g.invoke({"items": ["x"]}, cfg)["items"] == ["x", "a", "b"]
        assert g.invoke({"items": ["y"]}, cfg)["items"] == ["x", "a", "b", "y", "a", "b"]
        history = list(g.get_state_history(cfg))
        assert len(history) == 8  # input, a, b per run, plus the first run's empty start
        # time travel: update_state on an older checkpoint forks (strict mode off)
        old = history[-3]
        g.update_state(old.config, {"items": ["fork"]})
        assert g.get_state(cfg).values["items"][-1] == "fork"
    # a second saver on the same Redis sees the thread
    with CtxlinkSaver.from_url(redis_url) as again:
        assert _graph(again).get_state(cfg).values["items"][-1] == "fork"


def test_strict_two_workers_one_thread_exactly_one_conflict(redis_url: str) -> None:
    for round_ in range(5):
        thread = f"strict-{round_}"
        with CtxlinkSaver.from_url(redis_url, strict=True) as saver:
            base = saver.put(_config(thread), _cp(), {"step": 0}, {})
            barrier = threading.Barrier(2)
            outcomes: list[str] = []

            def worker(n: int) -> None:
                cp = _cp()
                barrier.wait()
                try:
                    saver.put(base, cp, {"step": 1, "worker": n}, {})
                    outcomes.append("ok")
                except ctxlink.ConflictError:
                    outcomes.append("conflict")

            ts = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert sorted(outcomes) == ["conflict", "ok"]
            listed = list(saver.list(_config(thread)))
            assert len(listed) == 2  # base and the winner; the loser's checkpoint is gone
            assert listed[0].parent_config["configurable"]["checkpoint_id"] == (
                base["configurable"]["checkpoint_id"])


def test_strict_refuses_a_stale_parent_non_strict_forks(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url, strict=True) as saver:
        first = saver.put(_config("s"), _cp(), {}, {})
        saver.put(first, _cp(), {}, {})
        with pytest.raises(ctxlink.ConflictError):
            saver.put(first, _cp(), {}, {})  # first is no longer the head
        # a refused put of a checkpoint the thread already has leaves that checkpoint alone
        second = saver.list(_config("s"), limit=1).__next__().checkpoint
        old = saver.get_tuple(first)
        with pytest.raises(ctxlink.ConflictError):
            saver.put(_config("s"), old.checkpoint, {}, {})
        assert saver.get_tuple(first) is not None and second is not None
    with CtxlinkSaver.from_url(redis_url) as lax:
        lax.put(first, _cp(), {}, {})  # time travel: a fork, allowed
        assert len(list(lax.list(_config("s")))) == 3


def test_put_writes_exactly_once_under_resends_and_concurrency(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        cfg = saver.put(_config("w"), _cp(), {}, {})
        for _ in range(3):  # LangGraph re-sending the same task's writes
            saver.put_writes(cfg, [("ch", "v1"), ("ch2", "v2")], "task-1")
        saver.put_writes(cfg, [("__error__", "e1")], "task-1")
        saver.put_writes(cfg, [("__error__", "e2")], "task-1")  # special: replaces

        def task(n: int) -> None:
            for _ in range(2):
                saver.put_writes(cfg, [("ch", n)], f"task-c{n}")

        ts = [threading.Thread(target=task, args=(n,)) for n in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        tup = saver.get_tuple(cfg)
        assert tup is not None
        writes = tup.pending_writes
        assert [w for w in writes if w[0] == "task-1"] == [  # writes_sort_key order
            ("task-1", "__error__", "e2"), ("task-1", "ch", "v1"), ("task-1", "ch2", "v2")]
        assert sorted(w[2] for w in writes if w[0].startswith("task-c")) == list(range(8))


def test_concurrent_puts_are_never_lost(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        base = saver.put(_config("c"), _cp(), {}, {})
        ids: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(5):
                cfg = saver.put(base, _cp(), {}, {})
                with lock:
                    ids.append(cfg["configurable"]["checkpoint_id"])

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        listed = {t.config["configurable"]["checkpoint_id"] for t in saver.list(_config("c"))}
        assert set(ids) <= listed and len(listed) == 21


def test_never_unpickles(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        cfg = saver.put(_config("p"), _cp(), {}, {})
        key = saver._cp_key("p", "", cfg["configurable"]["checkpoint_id"])
        from ctxlink.integrations.langgraph import _Checkpoint

        def poison(msg: Any) -> None:
            msg.checkpoint.type = "pickle"
            msg.checkpoint.data = b"\x80\x04K\x01."

        saver.store.update(key, poison, message_class=_Checkpoint)
        with pytest.raises(ValueError, match="unpickle"):
            saver.get_tuple(cfg)
        assert not getattr(saver.serde, "pickle_fallback", False)


def test_schemas_registered_once_without_a_second_write(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        rev = saver.store.get_schema(SCHEMA_CHECKPOINT).revision
        assert saver.setup() == 0  # the registry has the exact definition: nothing written
        with CtxlinkSaver.from_url(redis_url) as again:
            assert again.store.get_schema(SCHEMA_CHECKPOINT).revision == rev


@pytest.mark.parametrize("register", [True, False])
def test_a_write_waits_for_a_registration_on_its_way(redis_url: str, register: bool) -> None:
    """A put meeting an unknown schema while the saver registers its schemas is sent again for
    about 1.5 s: a registration by another client may still be reaching the server (on a
    cluster, one primary after the other); the refused write was not applied. A saver that
    does not register (an administrator's setup() did) raises SetupRequiredError at once."""
    with CtxlinkSaver.from_url(redis_url, register=register) as saver:
        if not register:
            saver.setup()
        admin = ctxlink.connect(redis_url)
        assert admin.drop_schema(SCHEMA_CHECKPOINT)
        again = threading.Timer(0.3, lambda: CtxlinkSaver.from_url(redis_url).close())
        again.start()  # another client's saver registers the schemas 0.3 s later
        t0 = time.monotonic()
        try:
            if register:
                cfg = saver.put(_config("waits"), _cp(), {}, {})
                assert time.monotonic() - t0 >= 0.25
                assert saver.get_tuple(cfg) is not None
            else:
                with pytest.raises(SetupRequiredError, match="does not know"):
                    saver.put(_config("waits"), _cp(), {}, {})
                assert time.monotonic() - t0 < 0.25
        finally:
            again.join()
            admin.close()


def test_acl_without_registry_rights_names_the_setup(redis_server: Any, redis_url: str) -> None:
    if redis_server.engine != "module":
        pytest.skip("the Lua engine's agents need write rights on __ctx:* to read the registry "
                    "(docs/PROTOCOL.md, ACL): no ACL denies only its writes")
    admin = redis_server.client()
    rules = ["on", ">pw", "~checkpoint:*", "%R~__ctx:*", "+@all", "-@admin", "-@dangerous",
             "-ctx.schema.set", "-ctx.schema.del"]
    admin.execute_command("ACL", "SETUSER", "lgagent", "reset", *rules)
    agent = redis.Redis(host="127.0.0.1", port=redis_server.port, username="lgagent",
                        password="pw")
    try:
        with pytest.raises(SetupRequiredError, match="ctxlink schema push"):
            CtxlinkSaver(redis_client=agent)
        # an administrator runs setup() once; the agent then works without writing the registry
        with CtxlinkSaver(redis_client=admin) as adm:
            assert adm.setup() == 0
        with CtxlinkSaver(redis_client=agent) as saver:
            cfg = saver.put(_config("acl"), _cp(), {}, {})
            assert saver.get_tuple(cfg) is not None
    finally:
        agent.close()
        admin.execute_command("ACL", "DELUSER", "lgagent")
        admin.close()


def test_agent_that_cannot_read_the_registry(redis_server: Any, redis_url: str) -> None:
    """A module-engine agent without rights on __ctx:* nor CTX.SCHEMA.GET trusts an
    administrator's setup(): without it the first put raises SetupRequiredError naming setup()
    and ``ctxlink schema push``; after it the saver works."""
    if redis_server.engine != "module":
        pytest.skip("the Lua engine's agents need read rights on __ctx:* to write (cas.lua "
                    "reads the registry), so they can read it")
    admin = redis_server.client()
    rules = ["on", ">pw", "~checkpoint:*", "+@all", "-@admin", "-@dangerous",
             "-ctx.schema.get", "-ctx.schema.set", "-ctx.schema.del"]
    admin.execute_command("ACL", "SETUSER", "lgreader", "reset", *rules)
    agent = redis.Redis(host="127.0.0.1", port=redis_server.port, username="lgreader",
                        password="pw")
    try:
        with CtxlinkSaver(redis_client=agent) as saver:
            with pytest.raises(SetupRequiredError, match="does not know") as err:
                saver.put(_config("acl"), _cp(), {}, {})
            assert "setup()" in str(err.value) and "ctxlink schema push" in str(err.value)
        with CtxlinkSaver(redis_client=admin) as adm:
            assert adm.setup() == 0
        with CtxlinkSaver(redis_client=agent) as saver:
            cfg = saver.put(_config("acl"), _cp(), {}, {})
            assert saver.get_tuple(cfg) is not None
    finally:
        agent.close()
        admin.execute_command("ACL", "DELUSER", "lgreader")
        admin.close()


def test_ttl_and_constructors(redis_server: Any, redis_url: str) -> None:
    client = redis_server.client()
    with CtxlinkSaver(redis_client=client, key_prefix="lg", ttl={"default_ttl": 2}) as saver:
        cfg = saver.put(_config("ttl"), _cp(), {}, {})
        for key in (saver._thread_key("ttl"),
                    saver._cp_key("ttl", "", cfg["configurable"]["checkpoint_id"])):
            assert key.startswith("lg:")
            assert 0 < client.pttl(key) <= 120_000
    store = ctxlink.connect(client)
    saver2 = CtxlinkSaver(store=store, key_prefix="lg")
    assert saver2.get_tuple(_config("ttl")) is not None
    with pytest.raises(ValueError):
        CtxlinkSaver(redis_url, redis_client=client)
    with pytest.raises(ValueError):
        CtxlinkSaver(redis_url, ttl={"default_ttl": -1})
    with pytest.raises(ValueError):
        CtxlinkSaver(redis_url, key_prefix="")
    client.close()


def test_import_ctxlink_imports_no_framework() -> None:
    code = ("import sys, ctxlink, ctxlink.integrations, ctxlink.integrations._common; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('langgraph', 'langchain_core', 'google', 'agents', 'pydantic_ai')"
            " and not m.startswith(('google.protobuf', 'google._upb')) and m != 'google']; "
            "print(bad); raise SystemExit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_setup_keeps_other_keys(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        assert SCHEMA_CHECKPOINT in saver.store.schemas()


def test_thread_ids_and_namespaces_with_colons_do_not_collide(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        cp = _cp()
        a = saver.put({"configurable": {"thread_id": "a", "checkpoint_ns": "b:c"}}, cp,
                      {"which": "a"}, {})
        b = saver.put({"configurable": {"thread_id": "a:b", "checkpoint_ns": "c"}}, cp,
                      {"which": "b"}, {})
        assert saver.get_tuple(a).metadata["which"] == "a"
        assert saver.get_tuple(b).metadata["which"] == "b"
        threads = {t.config["configurable"]["thread_id"] for t in saver.list(None)}
        assert threads == {"a", "a:b"}


def test_put_writes_exactly_once_when_the_reply_is_lost(redis_server: Any,
                                                        redis_url: str) -> None:
    """The write lands, its reply is dropped and the connection reset (tests/faultproxy.py):
    the SDK re-sends it with the same write id and the server does not apply it twice."""
    from faultproxy import FaultProxy

    with FaultProxy(redis_server.port) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port)
        with CtxlinkSaver(redis_client=client) as saver:
            cfg = saver.put(_config("lost"), _cp(), {}, {})
            proxy.arm(lambda args: any(b"task-fault" in a for a in args), times=1)
            saver.put_writes(cfg, [("ch", "once"), ("ch2", "also once")], "task-fault")
            assert proxy.faults == 1
            tup = saver.get_tuple(cfg)
            assert tup is not None
            assert [w for w in tup.pending_writes if w[0] == "task-fault"] == [
                ("task-fault", "ch", "once"), ("task-fault", "ch2", "also once")]
            # one write for the put, one for put_writes: the re-send was not applied again
            key = saver._cp_key("lost", "", cfg["configurable"]["checkpoint_id"])
            assert saver.store.get(key).version == 2
        client.close()


@pytest.mark.parametrize("frequency", [2, 1000])
def test_prune_keep_latest_keeps_what_a_delta_channel_replays(redis_url: str,
                                                              frequency: int) -> None:
    """A graph whose state is a DeltaChannel (values rebuilt from ancestors' writes back to the
    last snapshot): after prune(keep_latest) the state reads the same; with a snapshot every 2
    updates the thread is shorter, with none yet (1000) every ancestor is still needed."""
    delta = pytest.importorskip("langgraph.channels.delta")

    def reducer(state: list[str] | None, writes: list[list[str]]) -> list[str]:
        out = list(state or [])
        for w in writes:
            out.extend(w)
        return out

    # functional form: the annotation is evaluated here (the module has postponed annotations)
    D = TypedDict("D", {"items": Annotated[list[str],
                                           delta.DeltaChannel(reducer, snapshot_frequency=frequency)]})

    b = StateGraph(D)
    b.add_node("a", lambda s: {"items": ["a"]})
    b.add_edge(START, "a")
    b.add_edge("a", END)
    with CtxlinkSaver.from_url(redis_url) as saver:
        g = b.compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": f"delta{frequency}"}}
        for i in range(4):
            g.invoke({"items": [f"in{i}"]}, cfg)
        before = g.get_state(cfg).values["items"]
        assert before == ["in0", "a", "in1", "a", "in2", "a", "in3", "a"]
        n_before = len(list(saver.list(cfg)))
        saver.prune([f"delta{frequency}"], strategy="keep_latest")
        assert g.get_state(cfg).values["items"] == before
        n_after = len(list(saver.list(cfg)))
        assert n_after < n_before if frequency == 2 else n_after == n_before
        saver.prune([f"delta{frequency}"], strategy="delete")
        assert list(saver.list(cfg)) == []


def test_prune_keep_latest_without_delta_channels_keeps_one(redis_url: str) -> None:
    with CtxlinkSaver.from_url(redis_url) as saver:
        cfg = _config("pr")
        for _ in range(4):
            cfg = saver.put(cfg, _cp(), {}, {})
        saver.prune(["pr"])
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(_config("pr"))] \
            == [cfg["configurable"]["checkpoint_id"]]
        with pytest.raises(ValueError):
            saver.prune(["pr"], strategy="oldest")
