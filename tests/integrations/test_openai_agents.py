"""CtxlinkSession against the contract of the OpenAI Agents SDK's sessions (both engines).

Each test names the framework test whose contract it checks, in openai-agents 0.24.0's sdist
(tests/extensions/memory/test_redis_session.py, tests/memory/test_session.py,
tests/memory/test_compaction_suffix.py); our own code, the same rules. The compaction tests
give ``OpenAIResponsesCompactionSession`` a stand-in for the OpenAI client whose
``responses.compact`` returns a canned summary (no network), as the agent's model is
``CannedModel`` of examples/openai_agents_session.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import redis.asyncio
from agents import Agent, RunConfig, Runner, set_tracing_disabled
from agents.memory import OpenAIResponsesCompactionSession, Session, SessionSettings
from conftest import ROOT, registry_blind_agent

import ctxlink
import ctxlink.aio
from ctxlink.integrations import SetupRequiredError
from ctxlink.integrations.openai_agents import (
    SESSION_SCHEMA,
    CtxlinkSession,
    HistoryChangedError,
    SessionMessage,
)

sys.path.insert(0, str(ROOT / "examples"))
from openai_agents_session import CannedModel  # noqa: E402

T = TypeVar("T")
set_tracing_disabled(True)

#: openai-agents before 0.24 replaces the history of a manual compaction by clear_session then
#: add_items (its own path, not atomic); from 0.24.0 through _atomic_replace_items
AGENTS = tuple(int(x) for x in version("openai-agents").split(".")[:2])
atomic_manual_compaction = pytest.mark.skipif(
    AGENTS < (0, 24), reason="openai-agents < 0.24 does not call _atomic_replace_items")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def msg(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


class Compactor:
    """Stands in for the OpenAI client of OpenAIResponsesCompactionSession: ``responses.compact``
    returns ``output`` and records its calls; ``during`` runs inside the call."""

    def __init__(self, output: list[Any], during: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.output = output
        self.during = during
        self.responses = SimpleNamespace(compact=self.compact)

    async def compact(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.during is not None:
            await self.during()
        return SimpleNamespace(output=list(self.output), usage=None)


# -- the Session protocol (test_redis_session.py) --------------------------------------------
def test_is_a_session_and_direct_ops(redis_url: str) -> None:
    """test_redis_session_direct_ops: add, get, pop (the newest item), clear."""
    async def go() -> None:
        s = CtxlinkSession.from_url("direct", url=redis_url)
        assert isinstance(s, Session)
        items = [msg("user", "Hello"), msg("assistant", "Hi there!")]
        await s.add_items(items)
        assert await s.get_items() == items
        assert await s.pop_item() == items[1]
        assert await s.get_items() == items[:1]
        await s.clear_session()
        assert await s.get_items() == []
        await s.close()
    run(go)


def test_runner_carries_history_between_turns(redis_url: str) -> None:
    """test_runner_integration / test_session_memory_basic_functionality_parametrized: the
    second turn's model input holds the first turn; the session holds all four items."""
    async def go() -> None:
        model = CannedModel(["San Francisco", "California"])
        agent = Agent(name="a", model=model)
        s = CtxlinkSession.from_url("runner", url=redis_url)
        r1 = await Runner.run(agent, "Where is the Golden Gate Bridge?", session=s)
        assert r1.final_output == "San Francisco"
        r2 = await Runner.run(agent, "What state is it in?", session=s)
        assert r2.final_output == "California"
        second_input = model.inputs[1]
        assert "Golden Gate" in str(second_input) and "San Francisco" in str(second_input)
        stored = await s.get_items()
        assert len(stored) == 4
        assert stored[0] == msg("user", "Where is the Golden Gate Bridge?")
        await s.close()
    run(go)


def test_list_input_and_input_callback(redis_url: str) -> None:
    """test_session_memory_appends_list_input_by_default, test_session_callback_prepared_input:
    a list input is appended after the history; a session_input_callback decides what the model
    sees, and the session keeps every turn."""
    async def go() -> None:
        s = CtxlinkSession.from_url("cb", url=redis_url)
        await s.add_items([msg("user", "h1"), msg("assistant", "h2")])
        model = CannedModel(["one", "two"])
        agent = Agent(name="a", model=model)
        await Runner.run(agent, [msg("user", "n1"), msg("user", "n2")], session=s)
        assert [i.get("content") for i in model.inputs[0]] == ["h1", "h2", "n1", "n2"]
        await Runner.run(agent, "n3", session=s, run_config=RunConfig(
            session_input_callback=lambda history, new: history[-1:] + new))
        assert len(model.inputs[1]) == 2 and model.inputs[1][1]["content"] == "n3"
        assert len(await s.get_items()) == 7
        await s.close()
    run(go)


def test_sessions_are_isolated(redis_url: str) -> None:
    """test_session_isolation / test_session_memory_different_sessions_parametrized."""
    async def go() -> None:
        a = CtxlinkSession.from_url("iso-a", url=redis_url)
        b = CtxlinkSession.from_url("iso-b", url=redis_url)
        await a.add_items([msg("user", "a")])
        await b.add_items([msg("user", "b")])
        assert await a.get_items() == [msg("user", "a")]
        assert await b.get_items() == [msg("user", "b")]
        await a.clear_session()
        assert await b.get_items() == [msg("user", "b")]
        await a.close()
        await b.close()
    run(go)


def test_get_items_limit_is_the_newest_in_order(redis_url: str) -> None:
    """test_get_items_with_limit: the latest N in chronological order; 0 gives none; more
    than there are gives all."""
    async def go() -> None:
        s = CtxlinkSession.from_url("limit", url=redis_url)
        items = [msg("user", str(i)) for i in range(5)]
        await s.add_items(items)
        assert await s.get_items(limit=2) == items[3:]
        assert await s.get_items(limit=0) == []
        assert await s.get_items(limit=-1) == []
        assert await s.get_items(limit=50) == items
        await s.close()
    run(go)


def test_pop_from_empty_and_add_nothing(redis_url: str) -> None:
    """test_pop_from_empty_session, test_add_empty_items_list: None; an empty add writes
    nothing (no context is created)."""
    async def go() -> None:
        s = CtxlinkSession.from_url("empty", url=redis_url)
        assert await s.pop_item() is None
        await s.add_items([])
        assert await s.get_items() == []
        store = await ctxlink.aio.connect(redis_url)
        assert await store.get(s.key) is None
        await store.close()
        await s.close()
    run(go)


@pytest.mark.parametrize("text", [
    "こんにちは 🎉 Ünïcødé", "quote \" backslash \\ newline \n tab \t nul \x00",
    "'; DROP TABLE x; --", "{\"json\": [1, 2]}", "",
])
def test_content_round_trips_exactly(redis_url: str, text: str) -> None:
    """test_unicode_content, test_special_characters_and_json_safety,
    test_data_integrity_with_problematic_strings."""
    async def go() -> None:
        s = CtxlinkSession.from_url("content", url=redis_url)
        item = {"role": "user", "content": text, "nested": {"list": [text, 1, None, True]}}
        await s.add_items([item])
        assert await s.get_items() == [item]
        assert await s.pop_item() == item
        await s.close()
    run(go)


def test_items_are_stored_as_the_frameworks_json(redis_url: str) -> None:
    """Items are JSON strings in a protobuf field (never pickled): a raw read decodes them."""
    async def go() -> None:
        s = CtxlinkSession.from_url("json", url=redis_url)
        await s.add_items([msg("user", "x")])
        store = await ctxlink.aio.connect(redis_url)
        snap = await store.get(s.key)
        assert snap is not None and snap.schema == SESSION_SCHEMA
        assert list(snap.decode(SessionMessage).items) == ['{"role":"user","content":"x"}']
        await store.close()
        await s.close()
    run(go)


def test_item_that_is_not_json_is_skipped(redis_url: str) -> None:
    """test_corrupted_data_handling / test_get_items_limit_skips_corrupt_newest_messages: an
    element another client wrote that is not JSON is skipped by reads and dropped by pop."""
    async def go() -> None:
        s = CtxlinkSession.from_url("corrupt", url=redis_url)
        await s.add_items([msg("user", "good")])
        store = await ctxlink.aio.connect(redis_url)
        await store.append(s.key, "items", ["{not json"], message_class=SessionMessage)
        assert await s.get_items() == [msg("user", "good")]
        assert await s.get_items(limit=1) == [msg("user", "good")]
        assert await s.pop_item() == msg("user", "good")
        assert await s.get_items() == []
        await store.close()
        await s.close()
    run(go)


def test_ping_from_url_and_ownership(redis_url: str) -> None:
    """test_redis_connectivity, test_from_url_constructor, test_internal_client_ownership,
    test_redis_session_closed_operations_raise_runtime_error, test_close_is_idempotent."""
    async def go() -> None:
        s = CtxlinkSession.from_url("own", url=redis_url, key_prefix="p",
                                    redis_kwargs={"socket_timeout": 5, "client_name": "oa-owned"})
        assert await s.ping()
        assert s.key == "p:own"
        await s.add_items([msg("user", "x")])
        admin = redis.asyncio.from_url(redis_url)
        assert b"name=oa-owned" in await admin.execute_command("CLIENT", "LIST")
        await s.close()
        await s.close()
        assert b"name=oa-owned" not in await admin.execute_command("CLIENT", "LIST")
        await admin.aclose()
        for call in (s.get_items(), s.add_items([]), s.pop_item(), s.clear_session()):
            with pytest.raises(RuntimeError):
                await call
    run(go)


def test_external_client_is_not_closed(redis_url: str) -> None:
    """test_external_client_not_closed, test_redis_session_close_is_noop_for_injected_client.
    Unlike RedisSession (test_decode_responses_client_compatibility), a client with
    decode_responses=True is refused with ValueError: ctxlink payloads are bytes."""
    async def go() -> None:
        client = redis.asyncio.from_url(redis_url)
        s = CtxlinkSession("ext", redis_client=client)
        await s.add_items([msg("user", "x")])
        assert await s.get_items() == [msg("user", "x")]
        await s.close()
        assert await client.ping()
        assert await s.get_items() == [msg("user", "x")]
        await client.aclose()
        decoding = redis.asyncio.from_url(redis_url, decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses"):
            await CtxlinkSession("ext", redis_client=decoding).get_items()
        await decoding.aclose()
    run(go)


def test_key_prefix_isolation(redis_url: str) -> None:
    """test_key_prefix_isolation: one session id under two prefixes is two sessions."""
    async def go() -> None:
        a = CtxlinkSession.from_url("same", url=redis_url, key_prefix="app1")
        b = CtxlinkSession.from_url("same", url=redis_url, key_prefix="app2")
        await a.add_items([msg("user", "1")])
        assert await b.get_items() == []
        await a.close()
        await b.close()
    run(go)


def test_ttl_is_set_by_every_write(redis_url: str) -> None:
    """test_ttl_functionality / test_add_items_applies_ttl_in_the_write_transaction: the
    key's expiry is set with the write (add, pop, compaction)."""
    async def go() -> None:
        s = CtxlinkSession.from_url("ttl", url=redis_url, ttl=3600)
        raw = redis.asyncio.from_url(redis_url)
        await s.add_items([msg("user", "a"), msg("user", "b")])
        assert 0 < await raw.pttl(s.key) <= 3_600_000
        await raw.persist(s.key)
        await s.pop_item()
        assert 0 < await raw.pttl(s.key) <= 3_600_000
        await raw.persist(s.key)
        await s.get_items()
        assert await s._atomic_replace_items([msg("user", "c")])
        assert 0 < await raw.pttl(s.key) <= 3_600_000
        with pytest.raises(ctxlink.ArgumentError):
            CtxlinkSession("x", redis_url=redis_url, ttl=0)
        await raw.aclose()
        await s.close()
    run(go)


def test_session_settings(redis_url: str) -> None:
    """test_session_settings_default, _constructor (object and dict), _from_url,
    test_get_items_uses_session_settings_limit, test_get_items_explicit_limit_overrides."""
    async def go() -> None:
        assert CtxlinkSession("d", redis_url=redis_url).session_settings == SessionSettings()
        s = CtxlinkSession("st", redis_url=redis_url, session_settings={"limit": 2})
        assert s.session_settings == SessionSettings(limit=2)
        u = CtxlinkSession.from_url("st", url=redis_url,
                                    session_settings=SessionSettings(limit=3))
        assert u.session_settings is not None and u.session_settings.limit == 3
        items = [msg("user", str(i)) for i in range(5)]
        await s.add_items(items)
        assert await s.get_items() == items[3:]
        assert await s.get_items(limit=4) == items[1:]
        await s.close()
        await u.close()
    run(go)


def test_runner_session_settings_override(redis_url: str) -> None:
    """test_runner_with_session_settings_override: RunConfig's session limit bounds the
    history the model sees."""
    async def go() -> None:
        s = CtxlinkSession.from_url("rso", url=redis_url)
        await s.add_items([msg("user", f"old {i}") for i in range(6)])
        model = CannedModel(["ok"])
        await Runner.run(Agent(name="a", model=model), "new", session=s,
                         run_config=RunConfig(session_settings=SessionSettings(limit=2)))
        seen = model.inputs[0]
        assert "old 5" in str(seen) and "old 4" in str(seen) and "old 3" not in str(seen)
        await s.close()
    run(go)


def test_cancelled_add_and_pop_settle_before_raising(redis_url: str) -> None:
    """test_mutation_cancellation_waits_for_authoritative_outcome: a caller cancelled while its
    add or pop is under way gets CancelledError once the write settled; it landed once."""
    async def go() -> None:
        s = CtxlinkSession.from_url("cancel", url=redis_url)
        await s.setup()
        task = asyncio.create_task(s.add_items([msg("user", "a"), msg("user", "b")]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await s.get_items() == [msg("user", "a"), msg("user", "b")]
        task = asyncio.create_task(s.pop_item())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await s.get_items() == [msg("user", "a")]
        await s.close()
    run(go)


def test_constructor_takes_exactly_one_connection(redis_url: str) -> None:
    with pytest.raises(ValueError):
        CtxlinkSession("x")
    with pytest.raises(ValueError):
        CtxlinkSession("x", redis_url=redis_url, store=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CtxlinkSession("x", redis_url=redis_url, key_prefix="a b")


# -- the compaction hooks (test_redis_session.py, test_compaction_suffix.py) -----------------
def test_manual_compaction_leaves_its_output(redis_url: str) -> None:
    """test_compaction_replaces_redis_history_atomically's end state, on every version of the
    range (0.23.x through clear_session and add_items): the history is the output."""
    async def go() -> None:
        s = CtxlinkSession.from_url("cmp-any", url=redis_url)
        await s.add_items([msg("user", "original"), msg("assistant", "answer")])
        session = OpenAIResponsesCompactionSession(
            "cmp-any", s, client=Compactor([msg("user", "summary")]), compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        await session.run_compaction({"force": True})
        assert await s.get_items() == [msg("user", "summary")]
        await s.close()
    run(go)


@atomic_manual_compaction
@pytest.mark.parametrize("empty", [False, True])
def test_manual_compaction_replaces_history_atomically(redis_url: str, empty: bool) -> None:
    """test_compaction_replaces_redis_history_atomically (manual run_compaction): the history
    becomes the compaction's output in one write; an observer never sees it empty."""
    async def go() -> None:
        s = CtxlinkSession.from_url("cmp", url=redis_url)
        await s.add_items([msg("user", "original"), msg("assistant", "answer")])
        output = [] if empty else [msg("user", "summary")]
        client = Compactor(output)
        session = OpenAIResponsesCompactionSession(
            "cmp", s, client=client, compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        store = await ctxlink.aio.connect(redis_url)
        before = (await store.get(s.key)).version  # type: ignore[union-attr]
        await session.run_compaction({"force": True})
        assert len(client.calls) == 1
        assert await s.get_items() == output
        assert (await store.get(s.key)).version == before + 1  # type: ignore[union-attr]
        await store.close()
        await s.close()
    run(go)


def test_automatic_compaction_through_the_runner(redis_url: str) -> None:
    """test_compaction_replaces_redis_history_atomically (automatic): the Runner compacts the
    latest exchange through _get_compaction_snapshot and replace_suffix."""
    async def go() -> None:
        s = CtxlinkSession.from_url("auto", url=redis_url)
        summary = {"type": "compaction", "id": "cmp_1", "encrypted_content": "synthetic"}
        client = Compactor([summary])
        session = OpenAIResponsesCompactionSession(
            "auto", s, client=client, compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        await Runner.run(Agent(name="a", model=CannedModel(["reply"])), "next", session=session)
        assert len(client.calls) == 1
        assert await s.get_items() == [summary]
        await s.close()
    run(go)


def test_write_during_compaction_invalidates_the_snapshot(redis_url: str) -> None:
    """test_new_backend_write_invalidates_snapshot: an item added while the compaction request
    runs stays, and the compaction is not applied."""
    async def go() -> None:
        s = CtxlinkSession.from_url("inval", url=redis_url)
        other = CtxlinkSession.from_url("inval", url=redis_url)
        original = [msg("user", str(i)) for i in range(4)]
        await s.add_items(original)
        newer = msg("user", "concurrent backend append")
        client = Compactor([{"type": "compaction", "id": "c", "encrypted_content": "x"}],
                           during=lambda: other.add_items([newer]))
        session = OpenAIResponsesCompactionSession(
            "inval", s, client=client, compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        await Runner.run(Agent(name="a", model=CannedModel(["done"])), "continue",
                         session=session, run_config=RunConfig(session_settings={"limit": 1}))
        assert len(client.calls) == 1
        got = await s.get_items()
        assert got[:4] == original and got[-1] == newer and len(got) == 7
        await s.close()
        await other.close()
    run(go)


@atomic_manual_compaction
def test_write_during_manual_compaction_refuses_the_replacement(redis_url: str) -> None:
    """The manual path (_atomic_replace_items) after a write by another client: refused with
    HistoryChangedError, nothing written, the item there (never the clear-then-add fallback)."""
    async def go() -> None:
        s = CtxlinkSession.from_url("man", url=redis_url)
        other = CtxlinkSession.from_url("man", url=redis_url)
        await s.add_items([msg("user", "a"), msg("assistant", "b")])
        newer = msg("user", "late")

        original_get = s.get_items

        async def get_then_race(limit: Any = None) -> Any:
            got = await original_get(limit)
            await other.add_items([newer])  # lands after the read the replacement is based on
            return got

        s.get_items = get_then_race  # type: ignore[method-assign]
        session = OpenAIResponsesCompactionSession(
            "man", s, client=Compactor([msg("user", "summary")]), compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        with pytest.raises(HistoryChangedError):
            await session.run_compaction({"force": True})
        assert (await original_get())[-1] == newer
        assert len(await original_get()) >= 3
        await s.close()
        await other.close()
    run(go)


def test_replace_suffix_contract(redis_url: str) -> None:
    """_CompactionSnapshot (session.py of 0.24.0; sqlite_session.py's replace_suffix): items are
    the newest ``limit``, ``complete`` says whether that is all; replace_suffix swaps exactly the
    suffix, refuses an empty suffix, and refuses once the tail changed (add or pop)."""
    async def go() -> None:
        s = CtxlinkSession.from_url("suffix", url=redis_url)
        items = [msg("user", str(i)) for i in range(5)]
        await s.add_items(items)
        snap = await s._get_compaction_snapshot(3)
        assert snap.items == items[2:] and not snap.complete
        full = await s._get_compaction_snapshot(10)
        assert full.items == items and full.complete
        assert not await snap.replace_suffix(3, [msg("user", "x")])  # empty suffix
        assert await snap.replace_suffix(1, [msg("user", "S")])
        assert await s.get_items() == items[:3] + [msg("user", "S")]
        assert not await snap.replace_suffix(1, [msg("user", "again")])  # stale now
        stale = await s._get_compaction_snapshot(2)
        await s.pop_item()
        assert not await stale.replace_suffix(0, [])
        assert await s.get_items() == items[:3]
        await s.close()
    run(go)


def test_replace_suffix_prunes_the_expired_prefix(redis_url: str) -> None:
    """test_expired_prefix_does_not_block_full_live_window / test_prefix_cleanup_stops_before_
    retained_history: prune_prefix drops leading items it marks, in the same write, and stops at
    the first it keeps."""
    async def go() -> None:
        s = CtxlinkSession.from_url("prune", url=redis_url)
        old = [msg("user", "expired")] * 3
        kept = [msg("user", "kept"), msg("user", "expired")]
        live = [msg("user", "live")]
        await s.add_items(old + kept + live)
        snap = await s._get_compaction_snapshot(1, prune_prefix=lambda i: i == old[0])
        assert await snap.replace_suffix(0, [msg("user", "S")])
        assert await s.get_items() == kept + [msg("user", "S")]
        await s.close()
    run(go)


def test_atomic_replace_serializes_before_writing(redis_url: str) -> None:
    """test_atomic_replacement_serializes_before_deleting_history: an item that is not JSON
    raises TypeError and the history stays."""
    async def go() -> None:
        s = CtxlinkSession.from_url("ser", url=redis_url)
        await s.add_items([msg("user", "retained")])
        await s.get_items()
        with pytest.raises(TypeError):
            await s._atomic_replace_items([{"content": object()}])
        assert await s.get_items() == [msg("user", "retained")]
        await s.close()
    run(go)


def test_atomic_replace_after_clear_and_recreate_is_refused(redis_url: str) -> None:
    """The compare-and-swap covers the incarnation: a session cleared and written again to the
    same version since the read is another context, and the replacement is refused."""
    async def go() -> None:
        s = CtxlinkSession.from_url("inc", url=redis_url)
        other = CtxlinkSession.from_url("inc", url=redis_url)
        await s.add_items([msg("user", "a")])
        await s.get_items()
        await other.clear_session()
        await other.add_items([msg("user", "b")])  # version 1 again, a new incarnation
        with pytest.raises(HistoryChangedError):
            await s._atomic_replace_items([msg("user", "S")])
        assert await s.get_items() == [msg("user", "b")]
        await s.close()
        await other.close()
    run(go)


def test_setup_registers_once(redis_url: str) -> None:
    """setup() writes the schema only when the registry lacks this exact definition."""
    async def go() -> None:
        s = CtxlinkSession.from_url("setup", url=redis_url)
        await s.setup()
        store = await ctxlink.aio.connect(redis_url)
        info = await store.get_schema(SESSION_SCHEMA)
        assert info is not None
        await CtxlinkSession.from_url("setup", url=redis_url).setup()
        assert (await store.get_schema(SESSION_SCHEMA)).revision == info.revision  # type: ignore[union-attr]
        await store.close()
        await s.close()
    run(go)


@pytest.mark.parametrize("register", [True, False])
def test_a_write_waits_for_a_registration_on_its_way(redis_url: str, register: bool) -> None:
    """An add_items meeting an unknown schema while the session registers its schema is sent
    again for about 1.5 s (another client's registration may still be on its way); a session
    that does not register raises SetupRequiredError at once."""
    async def go() -> None:
        s = CtxlinkSession.from_url("waits", url=redis_url, register=register)
        await s.setup()
        admin = await ctxlink.aio.connect(redis_url)
        assert await admin.drop_schema(SESSION_SCHEMA)

        async def register_later() -> None:
            await asyncio.sleep(0.3)
            other = CtxlinkSession.from_url("other", url=redis_url)
            await other.setup()
            await other.close()

        later = asyncio.ensure_future(register_later())
        t0 = time.monotonic()
        try:
            if register:
                await s.add_items([msg("user", "hi")])
                assert time.monotonic() - t0 >= 0.25
                assert await s.get_items() == [msg("user", "hi")]
            else:
                with pytest.raises(SetupRequiredError, match="does not know"):
                    await s.add_items([msg("user", "hi")])
                assert time.monotonic() - t0 < 0.25
        finally:
            await later
            await admin.close()
            await s.close()
    run(go)


def test_agent_acl_without_registry_writes(redis_url: str, redis_server: Any) -> None:
    """An agent with docs/PROTOCOL.md's least-privilege ACL line (keys ``ctx:*``) cannot
    register the schema: SetupRequiredError says to run setup(); after an administrator's
    setup() the agent works (register=False, or the default check, which then writes nothing)."""
    import redis as sync_redis

    admin = sync_redis.Redis.from_url(redis_url)
    line = ["on", ">pw", "~ctx:*", "%R~__ctx:*", "+@all", "-@admin", "-@dangerous"]
    if redis_server.engine == "module":
        line += ["-ctx.schema.set", "-ctx.schema.del"]
    else:
        line += ["&__ctx:wait:*"]
    admin.execute_command("ACL", "SETUSER", "oa-agent", "reset", *line)
    admin.close()
    agent_url = redis_url.replace("redis://", "redis://oa-agent:pw@", 1)

    async def as_agent(**kw: Any) -> None:
        s = CtxlinkSession.from_url("acl", url=agent_url, key_prefix="ctx:s", **kw)
        await s.add_items([msg("user", "hi")])
        assert (await s.get_items())[-1] == msg("user", "hi")
        assert await s.pop_item() == msg("user", "hi")
        await s.close()

    with pytest.raises(SetupRequiredError, match=r"setup\(\)"):
        run(as_agent)
    with pytest.raises(SetupRequiredError, match=r"setup\(\)"):
        run(lambda: as_agent(register=False))

    async def as_admin() -> None:
        await CtxlinkSession.from_url("acl", url=redis_url, key_prefix="ctx:s").setup()
    run(as_admin)
    run(as_agent)
    run(lambda: as_agent(register=False))


def test_agent_that_cannot_read_the_registry(redis_url: str, redis_server: Any) -> None:
    """An agent whose ACL may not read the schema registry trusts an administrator's setup():
    without it the first write raises SetupRequiredError naming setup() and ``ctxlink schema
    push``; after it the agent works, and the schema has the session's window of 64."""
    agent_url = registry_blind_agent(redis_url, redis_server.engine, "oa-reader")

    async def as_agent() -> None:
        s = CtxlinkSession.from_url("acl", url=agent_url, key_prefix="ctx:s")
        try:
            await s.add_items([msg("user", "hi")])
            assert await s.get_items() == [msg("user", "hi")]
            assert await s.pop_item() == msg("user", "hi")
        finally:
            await s.close()

    with pytest.raises(SetupRequiredError) as err:
        run(as_agent)
    assert "setup()" in str(err.value) and "ctxlink schema push" in str(err.value)
    # module: the first write meets the missing schema; Lua: the registration is refused
    assert ("does not know" if redis_server.engine == "module"
            else "may not write") in str(err.value)

    async def as_admin() -> None:
        s = CtxlinkSession.from_url("acl", url=redis_url, key_prefix="ctx:s")
        await s.setup()
        await s.close()
        store = await ctxlink.aio.connect(redis_url)
        info = await store.get_schema(SESSION_SCHEMA)
        await store.close()
        assert info is not None and info.window == 64
    run(as_admin)
    run(as_agent)


def test_encrypted_session_over_ctxlink(redis_url: str) -> None:
    """test_redis_compaction_preserves_encryption_wrapper: EncryptedSession over CtxlinkSession
    stores only ciphertext, reads it back, and the Runner's automatic compaction goes through
    the wrapper's snapshot (its prune_prefix included) to ours."""
    pytest.importorskip("cryptography")
    from agents.extensions.memory.encrypt_session import EncryptedSession

    async def go() -> None:
        inner = CtxlinkSession.from_url("enc", url=redis_url)
        enc = EncryptedSession("enc", inner, encryption_key="synthetic-key", ttl=600)
        await enc.add_items([msg("user", "secret words")])
        assert await enc.get_items() == [msg("user", "secret words")]
        store = await ctxlink.aio.connect(redis_url)
        snap = await store.get(inner.key)
        assert snap is not None and b"secret words" not in snap.raw
        summary = {"type": "compaction", "id": "cmp_e", "encrypted_content": "synthetic"}
        client = Compactor([summary])
        session = OpenAIResponsesCompactionSession(
            "enc", enc, client=client, compaction_mode="input",
            should_trigger_compaction=lambda _: True)
        await Runner.run(Agent(name="a", model=CannedModel(["reply"])), "next", session=session)
        assert len(client.calls) == 1
        assert await enc.get_items() == [summary]  # the whole (complete) history compacted
        await store.close()
        await inner.close()
    run(go)
