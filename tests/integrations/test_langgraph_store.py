"""CtxlinkStore: our own tests (both engines), beside LangGraph's store tests
(test_langgraph_store_suite.py): TTL on the context and its refresh, concurrent puts of one item
(never torn, created_at kept), query= refused, constructors, abatch, a graph using the store."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langgraph.store.base import GetOp, PutOp

import ctxlink
from ctxlink.integrations.langgraph import CtxlinkStore


def test_ttl_is_the_contexts_and_reads_refresh_it(redis_server: Any, redis_url: str) -> None:
    client = redis_server.client()
    with CtxlinkStore(redis_client=client, key_prefix="mem",
                      ttl={"default_ttl": 1, "refresh_on_read": True}) as st:
        st.put(("u", "1"), "a", {"v": 1})
        key = st._key(("u", "1"), "a")
        assert key.startswith("mem:") and 0 < client.pttl(key) <= 60_000
        st.put(("u", "1"), "short", {"v": 2}, ttl=0.001)  # 60 ms
        time.sleep(0.3)
        assert st.get(("u", "1"), "short") is None
        client.pexpire(key, 5_000)
        assert st.get(("u", "1"), "a") is not None
        assert client.pttl(key) > 5_000  # the read renewed it to a minute
        st.get(("u", "1"), "a", refresh_ttl=False)
    client.close()


def test_concurrent_puts_of_one_item(redis_url: str) -> None:
    with CtxlinkStore.from_url(redis_url) as st:
        st.put(("docs",), "x", {"n": -1})
        created = st.get(("docs",), "x").created_at

        def worker(w: int) -> None:
            for i in range(10):
                st.put(("docs",), "x", {"n": i, "w": w, "pad": [w] * 50})

        ts = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        item = st.get(("docs",), "x")
        assert item.created_at == created
        assert item.value["pad"] == [item.value["w"]] * 50  # one writer's whole value


def test_query_is_refused_and_bad_input(redis_url: str) -> None:
    with CtxlinkStore.from_url(redis_url) as st:
        with pytest.raises(NotImplementedError, match="vector"):
            st.search(("a",), query="hello")
        with pytest.raises(TypeError):
            st.batch([PutOp(("a",), "k", ["not", "a", "dict"])])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            CtxlinkStore(redis_url, ttl={"default_ttl": 0})
        with pytest.raises(ValueError):
            CtxlinkStore()


def test_store_param_and_abatch(redis_url: str) -> None:
    with ctxlink.connect(redis_url) as s:
        st = CtxlinkStore(store=s)

        async def go() -> list[Any]:
            await st.aput(("n",), "k", {"v": 1})
            return await st.abatch([GetOp(("n",), "k"), GetOp(("n",), "missing")])

        got, missing = asyncio.run(go())
        assert got.value == {"v": 1} and missing is None


def test_graph_uses_the_store(redis_url: str) -> None:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.store.base import BaseStore

    class S(TypedDict):
        n: int

    def node(state: S, *, store: BaseStore) -> S:
        store.put(("memories",), "last", {"n": state["n"]})
        return {"n": state["n"] + 1}

    b = StateGraph(S)
    b.add_node("remember", node)
    b.add_edge(START, "remember")
    b.add_edge("remember", END)
    with CtxlinkStore.from_url(redis_url) as st:
        g = b.compile(store=st)
        assert g.invoke({"n": 41}) == {"n": 42}
        assert st.get(("memories",), "last").value == {"n": 41}
