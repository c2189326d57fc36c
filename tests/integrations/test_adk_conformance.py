"""The contract of ADK's session-service tests, held against CtxlinkSessionService on both
engines. Each test names the adk-python test whose contract it covers: google-adk 2.13.0's
tests/unittests/sessions/test_session_service.py (read at the adk-python commit 03301454, whose
API is 2.13.0's) and tests/unittests/sessions/_conformance.py (the divergences it lists for
ADK's own Redis service). Our own code: none of theirs is copied or imported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from ctxlink.integrations.adk import CtxlinkSessionService

APP = "my_app"


def run(redis_url: str, body: Callable[[CtxlinkSessionService], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with CtxlinkSessionService.from_url(redis_url) as service:
            return await body(service)
    return asyncio.run(go())


def ev(inv: str = "inv", **kw: Any) -> Event:
    delta = kw.pop("delta", None)
    if delta is not None:
        kw["actions"] = EventActions(state_delta=delta)
    return Event(invocation_id=inv, author=kw.pop("author", "user"), **kw)


def test_get_of_a_missing_session_is_none(redis_url: str) -> None:
    """covers test_session_service.py::test_get_empty_session (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        assert await s.get_session(app_name=APP, user_id="u", session_id="123") is None
    run(redis_url, body)


def test_create_get_delete_round_trip(redis_url: str) -> None:
    """covers test_session_service.py::test_create_get_session (2.13.0): the created session
    equals the one read back, last_update_time is not in the future, delete removes it"""
    async def body(s: CtxlinkSessionService) -> None:
        made = await s.create_session(app_name=APP, user_id="u", state={"key": "value"})
        assert made.id and made.state == {"key": "value"} and made.user_id == "u"
        assert made.last_update_time <= time.time()
        got = await s.get_session(app_name=APP, user_id="u", session_id=made.id)
        assert got == made
        await s.delete_session(app_name=APP, user_id="u", session_id=made.id)
        assert await s.get_session(app_name=APP, user_id="u", session_id=made.id) is None
        await s.delete_session(app_name=APP, user_id="u", session_id=made.id)  # no error
    run(redis_url, body)


def test_list_sessions_of_one_user_and_of_all(redis_url: str) -> None:
    """covers test_session_service.py::test_create_and_list_sessions and
    ::test_list_sessions_all_users (2.13.0): listed sessions carry their state, no events"""
    async def body(s: CtxlinkSessionService) -> None:
        for sid in ("s0", "s1", "s2"):
            await s.create_session(app_name=APP, user_id="u1", session_id=sid,
                                   state={"key": "v" + sid})
        await s.create_session(app_name=APP, user_id="u2", session_id="t0", state={"key": "x"})
        await s.create_session(app_name="other", user_id="u1", session_id="o0")
        await s.append_event((await s.get_session(app_name=APP, user_id="u1",
                                                  session_id="s0")), ev())
        mine = (await s.list_sessions(app_name=APP, user_id="u1")).sessions
        assert {x.id: x.state for x in mine} == {"s0": {"key": "vs0"}, "s1": {"key": "vs1"},
                                                 "s2": {"key": "vs2"}}
        assert all(not x.events for x in mine)
        every = (await s.list_sessions(app_name=APP)).sessions
        assert sorted((x.user_id, x.id) for x in every) == [
            ("u1", "s0"), ("u1", "s1"), ("u1", "s2"), ("u2", "t0")]
        assert (await s.list_sessions(app_name=APP, user_id="nobody")).sessions == []
    run(redis_url, body)


def test_list_sessions_oldest_update_first(redis_url: str) -> None:
    """covers _conformance.py's test_list_sessions_ordered_by_last_update_time (2.13.0; ADK's
    own Redis service diverges): oldest last_update_time first, an append moves a session last"""
    async def body(s: CtxlinkSessionService) -> None:
        made = [await s.create_session(app_name=APP, user_id="u", session_id=f"s{i}")
                for i in range(3)]
        await s.append_event(made[0], ev(timestamp=made[2].last_update_time + 5))
        order = [x.id for x in (await s.list_sessions(app_name=APP, user_id="u")).sessions]
        assert order == ["s1", "s2", "s0"]
    run(redis_url, body)


def test_app_user_and_session_state_scopes(redis_url: str) -> None:
    """covers test_session_service.py::test_app_state_is_shared_by_all_users_of_app,
    ::test_user_state_is_shared_only_by_user_sessions and ::test_session_state_is_not_shared
    (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        s1 = await s.create_session(app_name=APP, user_id="u1", session_id="s1",
                                    state={"app:k1": "v1", "user:k1": "v1", "sk1": "v1"})
        await s.append_event(s1, ev(delta={"app:k2": "v2", "user:k2": "v2", "sk2": "v2"}))
        other_user = await s.create_session(app_name=APP, user_id="u2", session_id="s2")
        assert other_user.state == {"app:k1": "v1", "app:k2": "v2"}
        same_user = await s.create_session(app_name=APP, user_id="u1", session_id="s1b")
        assert same_user.state == {"app:k1": "v1", "app:k2": "v2", "user:k1": "v1",
                                   "user:k2": "v2"}
        again = await s.get_session(app_name=APP, user_id="u1", session_id="s1")
        assert again is not None
        assert again.state == {"app:k1": "v1", "app:k2": "v2", "user:k1": "v1",
                               "user:k2": "v2", "sk1": "v1", "sk2": "v2"}
    run(redis_url, body)


def test_temp_state_is_visible_in_memory_and_never_stored(redis_url: str) -> None:
    """covers test_session_service.py::test_temp_state_is_not_persisted_in_state_or_events and
    ::test_temp_state_visible_across_sequential_events (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u", session_id="s1")
        event = ev(delta={"temp:k1": "v1", "sk": "v2"})
        await s.append_event(session, event)
        assert session.state["temp:k1"] == "v1" and session.state["sk"] == "v2"
        assert "temp:k1" not in event.actions.state_delta
        stored = await s.get_session(app_name=APP, user_id="u", session_id="s1")
        assert stored is not None and stored.state == {"sk": "v2"}
        assert stored.events[0].actions.state_delta == {"sk": "v2"}
    run(redis_url, body)


def test_get_session_respects_user_id(redis_url: str) -> None:
    """covers test_session_service.py::test_get_session_respects_user_id (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        s1 = await s.create_session(app_name=APP, user_id="u1", session_id="s1")
        await s.append_event(s1, ev())
        await s.create_session(app_name=APP, user_id="u2", session_id="s1")
        got = await s.get_session(app_name=APP, user_id="u2", session_id="s1")
        assert got is not None and got.user_id == "u2" and got.events == []
    run(redis_url, body)


def test_create_with_a_taken_id_raises_already_exists(redis_url: str) -> None:
    """covers test_session_service.py::test_create_session_with_existing_id_raises_error
    (2.13.0); of two concurrent creators of one id exactly one wins"""
    async def body(s: CtxlinkSessionService) -> None:
        await s.create_session(app_name=APP, user_id="u", session_id="existing")
        with pytest.raises(AlreadyExistsError):
            await s.create_session(app_name=APP, user_id="u", session_id="existing")
        out = await asyncio.gather(
            *(s.create_session(app_name=APP, user_id="u", session_id="race") for _ in range(2)),
            return_exceptions=True)
        assert sorted(type(x).__name__ for x in out) == ["AlreadyExistsError", "Session"]
    run(redis_url, body)


def test_padded_session_id_reads_and_deletes(redis_url: str) -> None:
    """covers _conformance.py's test_padded_session_id_reads_and_deletes (2.13.0; ADK's Redis
    and database services diverge): a padded id means the stripped one"""
    async def body(s: CtxlinkSessionService) -> None:
        made = await s.create_session(app_name=APP, user_id="u", session_id="  s1 ")
        assert made.id == "s1"
        assert await s.get_session(app_name=APP, user_id="u", session_id=" s1") is not None
        await s.delete_session(app_name=APP, user_id="u", session_id="s1  ")
        assert await s.get_session(app_name=APP, user_id="u", session_id="s1") is None
    run(redis_url, body)


def test_event_with_bytes_and_every_field_round_trips(redis_url: str) -> None:
    """covers test_session_service.py::test_append_event_bytes and ::test_append_event_complete
    (2.13.0): the stored session read back equals the in-memory one"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u")
        content = types.Content(role="user", parts=[
            types.Part.from_bytes(data=b"\x00\xffimage", mime_type="image/png")])
        grounding = types.GroundingMetadata(
            search_entry_point=types.SearchEntryPoint(sdk_blob=b"blob"))
        await s.append_event(session, ev(content=content, grounding_metadata=grounding))
        full = Event(
            invocation_id="invocation", author="user",
            content=types.Content(role="user", parts=[types.Part(text="test_text")]),
            turn_complete=True, partial=False,
            actions=EventActions(artifact_delta={"file": 0}, transfer_to_agent="agent",
                                 escalate=True),
            long_running_tool_ids={"tool1"}, error_code="error_code",
            error_message="error_message", interrupted=True,
            grounding_metadata=types.GroundingMetadata(web_search_queries=["query1"]),
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=1, candidates_token_count=1, total_token_count=2),
            citation_metadata=types.CitationMetadata(),
            custom_metadata={"custom_key": "custom_value"}, timestamp=1700000000.123,
            input_transcription=types.Transcription(text="in", finished=True),
            output_transcription=types.Transcription(text="out", finished=True))
        await s.append_event(session, full)
        got = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None
        assert got.events[0].content == content and got.events[0].grounding_metadata == grounding
        assert got == session
    run(redis_url, body)


def test_last_update_time_is_the_events_timestamp(redis_url: str) -> None:
    """covers test_session_service.py::test_session_last_update_time_updates_on_event (2.13.0;
    ADK's own Redis service diverges: it stamps the wall clock)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u")
        before = session.last_update_time
        await s.append_event(session, ev(timestamp=before + 10))
        assert session.last_update_time == pytest.approx(before + 10, abs=1e-6)
        got = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None and got.last_update_time == pytest.approx(before + 10, abs=1e-6)
    run(redis_url, body)


def test_append_to_a_stale_session_is_refused(redis_url: str) -> None:
    """covers test_session_service.py::test_append_event_to_stale_session (2.13.0): the stale
    writer gets StaleSessionError (a ValueError saying 'modified in storage'), nothing of its
    event is stored"""
    async def body(s: CtxlinkSessionService) -> None:
        now = time.time()
        original = await s.create_session(app_name=APP, user_id="u")
        await s.append_event(original, ev("inv1", timestamp=now + 1, delta={"sk1": "v1"}))
        updated = await s.get_session(app_name=APP, user_id="u", session_id=original.id)
        assert updated is not None
        await s.append_event(updated, ev("inv2", timestamp=now + 2, delta={"sk2": "v2"}))
        assert original.last_update_time < updated.last_update_time
        with pytest.raises(StaleSessionError, match="modified in storage"):
            await s.append_event(original, ev("inv3", timestamp=now + 3, delta={"sk3": "v3"}))
        assert isinstance(StaleSessionError("x"), ValueError)
        final = await s.get_session(app_name=APP, user_id="u", session_id=original.id)
        assert final is not None
        assert [e.invocation_id for e in final.events] == ["inv1", "inv2"]
        assert final.state == {"sk1": "v1", "sk2": "v2"}
    run(redis_url, body)


def test_concurrent_stale_writers_exactly_one_wins(redis_url: str) -> None:
    """covers test_session_service.py::test_append_event_concurrent_stale_sessions_reject_stale_
    writer (2.13.0): 8 rounds of two writers holding copies of one read; two tasks appending
    through the very same Session object both land (taken in turn, as the database service's
    per-session lock does)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u")
        rounds = 8
        for i in range(rounds):
            latest = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
            assert latest is not None
            one, two = latest.model_copy(deep=True), latest.model_copy(deep=True)
            base = latest.last_update_time + 10
            out = await asyncio.gather(
                s.append_event(one, ev(f"inv{i}-1", timestamp=base + 1,
                                       delta={f"sk{i}-1": f"v{i}-1"})),
                s.append_event(two, ev(f"inv{i}-2", timestamp=base + 2,
                                       delta={f"sk{i}-2": f"v{i}-2"})),
                return_exceptions=True)
            errors = [x for x in out if isinstance(x, BaseException)]
            assert len(errors) == 1 and isinstance(errors[0], StaleSessionError), out
        final = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert final is not None and len(final.events) == rounds
        for i in range(rounds):
            values = {final.state.get(f"sk{i}-1"), final.state.get(f"sk{i}-2")}
            assert None in values and values & {f"v{i}-1", f"v{i}-2"}
        shared = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert shared is not None
        out = await asyncio.gather(s.append_event(shared, ev("a")),
                                   s.append_event(shared, ev("b")), return_exceptions=True)
        assert not [x for x in out if isinstance(x, BaseException)], out
        final = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert final is not None and len(final.events) == rounds + 2
    run(redis_url, body)


def test_current_session_appends_despite_timestamp_drift_or_no_marker(redis_url: str) -> None:
    """covers test_session_service.py::test_append_event_allows_timestamp_drift_for_current_
    session and ::test_append_event_allows_markerless_current_session (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u", session_id="s1")
        await s.append_event(session, ev("inv1", timestamp=session.last_update_time + 10))
        session.last_update_time -= 0.0001
        await s.append_event(session, ev("inv2", timestamp=session.last_update_time + 10))
        session._storage_update_marker = None
        session.last_update_time -= 0.0001
        await s.append_event(session, ev("inv3", timestamp=session.last_update_time + 10))
        got = await s.get_session(app_name=APP, user_id="u", session_id="s1")
        assert got is not None
        assert [e.invocation_id for e in got.events] == ["inv1", "inv2", "inv3"]
        stale = got.model_copy(deep=True)
        await s.append_event(got, ev("inv4", timestamp=got.last_update_time + 10))
        stale._storage_update_marker = None  # marker-less and behind: still refused
        with pytest.raises(StaleSessionError):
            await s.append_event(stale, ev("inv5"))
    run(redis_url, body)


def test_get_session_config_filters(redis_url: str) -> None:
    """covers test_session_service.py::test_get_session_with_config (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u")
        for i in range(1, 6):
            await s.append_event(session, Event(author="user", timestamp=i))

        async def stamps(**cfg: Any) -> list[float]:
            got = await s.get_session(app_name=APP, user_id="u", session_id=session.id,
                                      config=GetSessionConfig(**cfg) if cfg else None)
            assert got is not None
            return [e.timestamp for e in got.events]

        assert await stamps() == [1, 2, 3, 4, 5]
        assert await stamps(num_recent_events=0) == []
        assert await stamps(num_recent_events=3) == [3, 4, 5]
        assert await stamps(after_timestamp=4.0) == [4, 5]
        assert await stamps(after_timestamp=50.0) == []
        assert await stamps(after_timestamp=4.0, num_recent_events=3) == [4, 5]
    run(redis_url, body)


def test_partial_events_are_not_stored(redis_url: str) -> None:
    """covers test_session_service.py::test_partial_events_are_not_persisted (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        session = await s.create_session(app_name=APP, user_id="u")
        await s.append_event(session, Event(author="user", partial=True))
        assert session.events == []
        got = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert got is not None and got.events == []
    run(redis_url, body)


def test_get_user_state(redis_url: str) -> None:
    """covers test_session_service.py::test_get_user_state_returns_empty_dict_when_no_state_
    exists, ::..._returns_state_written_via_append_event, ::..._is_not_visible_across_users,
    ::..._is_not_visible_across_apps, ::..._available_before_session_is_created and
    ::..._reflects_latest_write (2.13.0)"""
    async def body(s: CtxlinkSessionService) -> None:
        assert await s.get_user_state(app_name=APP, user_id="u1") == {}
        session = await s.create_session(app_name=APP, user_id="u1")
        await s.append_event(session, ev(author="system", delta={
            "user:profile": {"name": "Alice"}, "session_key": 1, "user:counter": 1}))
        await s.append_event(session, ev(author="system", delta={"user:counter": 2}))
        assert await s.get_user_state(app_name=APP, user_id="u1") == {
            "profile": {"name": "Alice"}, "counter": 2}
        assert await s.get_user_state(app_name=APP, user_id="u2") == {}
        assert await s.get_user_state(app_name="other_app", user_id="u1") == {}
    run(redis_url, body)

