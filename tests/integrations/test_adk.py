"""CtxlinkSessionService beyond ADK's own tests: concurrent sessions of one user, the layout,
TTL, the payload limit, the constructor and the ACL set-up, on both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio
from google.adk.errors import StaleSessionError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.genai import types

import ctxlink
import ctxlink.aio
from ctxlink.integrations import SetupRequiredError
from ctxlink.integrations.adk import SESSION_SCHEMA, CtxlinkSessionService, SessionMessage

from conftest import registry_blind_agent

APP = "app"


def delta_event(delta: dict[str, Any], inv: str = "inv") -> Event:
    return Event(invocation_id=inv, author="user", actions=EventActions(state_delta=delta))


def test_six_concurrent_sessions_of_one_user_lose_no_user_or_app_key(redis_url: str) -> None:
    """Six sessions of one user, five appends each, all at once, each writing a ``user:`` and an
    ``app:`` key of its own: every key is there with its last value, every event once."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            sessions = [await s.create_session(app_name=APP, user_id="u", session_id=f"s{n}")
                        for n in range(6)]

            async def writer(n: int) -> None:
                for i in range(5):
                    await s.append_event(sessions[n], delta_event(
                        {f"user:k{n}": i, f"app:a{n}": i, "own": i}, f"s{n}-{i}"))

            await asyncio.gather(*(writer(n) for n in range(6)))
            assert await s.get_user_state(app_name=APP, user_id="u") == {
                f"k{n}": 4 for n in range(6)}
            for n in range(6):
                got = await s.get_session(app_name=APP, user_id="u", session_id=f"s{n}")
                assert got is not None
                assert [e.invocation_id for e in got.events] == [f"s{n}-{i}" for i in range(5)]
                assert got.state["own"] == 4
                assert {k: v for k, v in got.state.items() if k.startswith("app:")} == {
                    f"app:a{m}": 4 for m in range(6)}
    asyncio.run(go())


def test_two_services_racing_on_one_session_object_exactly_one_wins(redis_url: str) -> None:
    """Two service instances (two clients) append through the same Session object at once:
    one StaleSessionError, one stored event."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as a, \
                CtxlinkSessionService.from_url(redis_url) as b:
            made = await a.create_session(app_name=APP, user_id="u", session_id="s")
            for rnd in range(5):
                got = await a.get_session(app_name=APP, user_id="u", session_id="s")
                assert got is not None
                out = await asyncio.gather(a.append_event(got, delta_event({"x": 1}, f"a{rnd}")),
                                           b.append_event(got, delta_event({"x": 2}, f"b{rnd}")),
                                           return_exceptions=True)
                assert sum(isinstance(x, StaleSessionError) for x in out) == 1, out
            final = await b.get_session(app_name=APP, user_id="u", session_id=made.id)
            assert final is not None and len(final.events) == 5
    asyncio.run(go())


def test_layout_events_are_adk_json_in_one_context(redis_url: str) -> None:
    """The session is one context of schema adk_session; each event is its
    ``model_dump_json`` (no pickle), app and user state live under their own keys."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url, key_prefix="t:") as s:
            session = await s.create_session(app_name="a:b", user_id="u%1", session_id="s",
                                             state={"user:k": 1})
            event = delta_event({"app:z": [1, 2]})
            await s.append_event(session, event)
            store = await ctxlink.aio.connect(redis_url)
            try:
                snap = await store.get("t:session:a%3Ab:u%251:s")
                assert snap is not None and snap.schema == SESSION_SCHEMA
                msg = snap.decode(SessionMessage)
                assert [Event.model_validate_json(e) for e in msg.events] == [event]
                assert msg.last_update_time == event.timestamp
                assert await store.get("t:user:a%3Ab:u%251") is not None
                assert await store.get("t:app:a%3Ab") is not None
            finally:
                await store.close()
            listed = (await s.list_sessions(app_name="a:b")).sessions
            assert [(x.user_id, x.state) for x in listed] == [
                ("u%1", {"user:k": 1, "app:z": [1, 2]})]
            assert (await s.list_sessions(app_name="a")).sessions == []
    asyncio.run(go())


def test_an_event_over_max_payload_bytes_raises_and_writes_nothing(redis_url: str) -> None:
    """The append that would take the session past max-payload-bytes (1 MiB) raises
    PayloadTooLarge; the stored and the in-memory session stay as they were."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            session = await s.create_session(app_name=APP, user_id="u", session_id="big")
            await s.append_event(session, delta_event({"k": 1}, "small"))
            huge = Event(invocation_id="huge", author="user", content=types.Content(
                role="user", parts=[types.Part(text="x" * (1100 * 1024))]),
                actions=EventActions(state_delta={"k": 2, "user:u": 1}))
            with pytest.raises(ctxlink.PayloadTooLarge):
                await s.append_event(session, huge)
            assert [e.invocation_id for e in session.events] == ["small"]
            assert session.state == {"k": 1}
            got = await s.get_session(app_name=APP, user_id="u", session_id="big")
            assert got is not None and [e.invocation_id for e in got.events] == ["small"]
            assert got.state == {"k": 1}
            await s.append_event(session, delta_event({"k": 3}, "after"))  # still usable
    asyncio.run(go())


def test_ttl_client_and_store_constructors(redis_url: str) -> None:
    """ttl_seconds is stored with every write; redis_client= and store= work as redis_url=;
    bad arguments are refused."""
    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        s = CtxlinkSessionService(client, ttl_seconds=100)
        session = await s.create_session(app_name=APP, user_id="u", session_id="t",
                                         state={"app:a": 1, "user:b": 2})
        await s.append_event(session, delta_event({"c": 3}))
        for key in ("adk:session:app:u:t", "adk:app:app", "adk:user:app:u"):
            assert 0 < await client.pttl(key) <= 100_000, key
        store = await ctxlink.aio.connect(client)
        via_store = CtxlinkSessionService(store=store)
        got = await via_store.get_session(app_name=APP, user_id="u", session_id="t")
        assert got is not None and got.state == {"app:a": 1, "user:b": 2, "c": 3}
        await client.aclose()

    asyncio.run(go())
    with pytest.raises(ValueError):
        CtxlinkSessionService()
    with pytest.raises(ValueError):
        CtxlinkSessionService(redis.asyncio.Redis(), redis_url=redis_url)
    with pytest.raises(ValueError):
        CtxlinkSessionService.from_url(redis_url, key_prefix="a b")
    for bad in (0, -1, True, float("inf"), "10"):
        with pytest.raises(ctxlink.ArgumentError):
            CtxlinkSessionService.from_url(redis_url, ttl_seconds=bad)


def test_setup_registers_once_then_writes_nothing(redis_url: str) -> None:
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            assert await s.setup() == 0  # the first use registered both
        async with CtxlinkSessionService.from_url(redis_url) as again:
            assert await again.setup() == 0
    asyncio.run(go())


def test_agent_acl_without_registry_writes(redis_url: str, redis_server: Any) -> None:
    """An agent with docs/PROTOCOL.md's least-privilege ACL (keys ``ctx:*``: the service's
    key_prefix) cannot register the schemas: SetupRequiredError says to run ``setup()``; after an
    administrator's ``setup()`` the agent (``register=False``) works."""
    admin = redis.Redis.from_url(redis_url)
    line = ["on", ">pw", "~ctx:*", "%R~__ctx:*", "+@all", "-@admin", "-@dangerous"]
    if redis_server.engine == "module":
        line += ["-ctx.schema.set", "-ctx.schema.del"]
    else:
        line += ["&__ctx:wait:*"]
    admin.execute_command("ACL", "SETUSER", "adk-agent", "reset", *line)
    admin.close()
    agent_url = redis_url.replace("redis://", "redis://adk-agent:pw@", 1)

    async def as_agent(register: bool) -> None:
        async with CtxlinkSessionService.from_url(agent_url, key_prefix="ctx:adk:",
                                                  register=register) as s:
            session = await s.create_session(app_name=APP, user_id="u",
                                             state={"user:a": 1})
            await s.append_event(session, delta_event({"app:b": 2}))
            got = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
            assert got is not None and got.state == {"user:a": 1, "app:b": 2}

    with pytest.raises(SetupRequiredError, match=r"setup\(\)"):
        asyncio.run(as_agent(True))

    async def as_admin() -> None:
        async with CtxlinkSessionService.from_url(redis_url, key_prefix="ctx:adk:") as s:
            assert await s.setup() == 0  # the context manager's first use registered them
    asyncio.run(as_admin())
    asyncio.run(as_agent(False))


def test_agent_that_cannot_read_the_registry(redis_url: str, redis_server: Any) -> None:
    """An agent whose ACL may not read the schema registry trusts an administrator's setup():
    without it the first write raises SetupRequiredError naming setup() and ``ctxlink schema
    push``; after it the agent works."""
    agent_url = registry_blind_agent(redis_url, redis_server.engine, "adk-reader")

    async def as_agent() -> None:
        async with CtxlinkSessionService.from_url(agent_url, key_prefix="ctx:adk:") as s:
            session = await s.create_session(app_name=APP, user_id="u", state={"user:a": 1})
            await s.append_event(session, delta_event({"app:b": 2}))
            got = await s.get_session(app_name=APP, user_id="u", session_id=session.id)
            assert got is not None and got.state == {"user:a": 1, "app:b": 2}

    with pytest.raises(SetupRequiredError) as err:
        asyncio.run(as_agent())
    assert "setup()" in str(err.value) and "ctxlink schema push" in str(err.value)
    # module: the first write meets the missing schema; Lua: the registration is refused
    assert ("does not know" if redis_server.engine == "module"
            else "may not write") in str(err.value)

    async def as_admin() -> None:
        async with CtxlinkSessionService.from_url(redis_url, key_prefix="ctx:adk:") as s:
            assert await s.setup() == 0  # the context manager's first use registered them
    asyncio.run(as_admin())
    asyncio.run(as_agent())


def test_a_lost_reply_stores_the_event_once(redis_url: str, redis_server: Any) -> None:
    """The reply of an append_event is lost after the server applied it (tests/faultproxy.py),
    and meanwhile another writer appends to the session: the SDK re-sends the same write, the
    server replays it, and each event is stored exactly once; the state merge of a lost
    ``user:`` update is applied once too."""
    from faultproxy import FaultProxy

    from ctxlink import connect

    def other_writer(args: list[bytes]) -> None:
        store = connect(redis_url)
        try:
            snap = store.get("adk:session:app:u:s")
            assert snap is not None
            other = Event(invocation_id="other", author="x")
            store.append("adk:session:app:u:s", "events",
                         [other.model_dump_json(exclude_none=True).encode()],
                         patch=SessionMessage(state=b"{}", last_update_time=other.timestamp),
                         base_version=snap.version)
        finally:
            store.close()

    with FaultProxy(redis_server.port) as proxy:
        async def go() -> None:
            async with CtxlinkSessionService.from_url(
                    f"redis://127.0.0.1:{proxy.port}") as s:
                session = await s.create_session(app_name=APP, user_id="u", session_id="s")
                proxy.arm(lambda args: any(b"lost-reply" in a for a in args), times=1,
                          hook=other_writer)
                await s.append_event(session, delta_event({"k": 1}, "lost-reply"))
                assert proxy.faults == 1
                proxy.arm(lambda args: any(b'{"counter":7}' in a for a in args), times=1)
                fresh = await s.get_session(app_name=APP, user_id="u", session_id="s")
                assert fresh is not None
                await s.append_event(fresh, delta_event({"user:counter": 7}, "second"))
                assert proxy.faults == 2
                got = await s.get_session(app_name=APP, user_id="u", session_id="s")
                assert got is not None
                assert [e.invocation_id for e in got.events] == ["lost-reply", "other", "second"]
                assert await s.get_user_state(app_name=APP, user_id="u") == {"counter": 7}
        asyncio.run(go())


def test_append_to_a_session_never_stored_or_deleted_raises_not_found(redis_url: str) -> None:
    """A Session built by hand, or deleted since it was read: SessionNotFoundError, and no
    session is created by the append (ADK's own Redis service creates one)."""
    from google.adk.errors.session_not_found_error import SessionNotFoundError
    from google.adk.sessions.session import Session

    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            ghost = Session(id="ghost", app_name=APP, user_id="u")
            with pytest.raises(SessionNotFoundError):
                await s.append_event(ghost, delta_event({"k": 1}))
            assert await s.get_session(app_name=APP, user_id="u", session_id="ghost") is None
            made = await s.create_session(app_name=APP, user_id="u", session_id="gone")
            await s.delete_session(app_name=APP, user_id="u", session_id="gone")
            with pytest.raises(SessionNotFoundError):
                await s.append_event(made, delta_event({"k": 1}))
            assert await s.get_session(app_name=APP, user_id="u", session_id="gone") is None
    asyncio.run(go())


def test_on_a_redis_cluster(redis_cluster: Any) -> None:
    """A ``redis.asyncio.RedisCluster`` client on three primaries: sessions, app and user state
    in several slots; appends, the stale-writer race, concurrent ``user:`` keys and
    ``list_sessions`` (a SCAN of every primary)."""
    async def go() -> None:
        client = redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster.port)
        s = CtxlinkSessionService(client)
        try:
            sessions = [await s.create_session(app_name=APP, user_id="u", session_id=f"s{n}")
                        for n in range(6)]
            slots = {client.keyslot(f"adk:session:{APP}:u:s{n}") for n in range(6)}
            owners = {client.get_node_from_key(f"adk:session:{APP}:u:s{n}").port
                      for n in range(6)}
            assert len(slots) == 6 and len(owners) >= 2

            async def writer(n: int) -> None:
                for i in range(3):
                    await s.append_event(sessions[n], delta_event(
                        {f"user:k{n}": i, f"app:a{n}": i}, f"s{n}-{i}"))

            await asyncio.gather(*(writer(n) for n in range(6)))
            assert await s.get_user_state(app_name=APP, user_id="u") == {
                f"k{n}": 2 for n in range(6)}
            stale = await s.get_session(app_name=APP, user_id="u", session_id="s0")
            assert stale is not None
            await s.append_event(sessions[0], delta_event({"x": 1}, "fresh"))
            with pytest.raises(StaleSessionError):
                await s.append_event(stale, delta_event({"x": 2}, "stale"))
            listed = (await s.list_sessions(app_name=APP, user_id="u")).sessions
            assert sorted(x.id for x in listed) == [f"s{n}" for n in range(6)]
            got = await s.get_session(app_name=APP, user_id="u", session_id="s0")
            assert got is not None
            assert [e.invocation_id for e in got.events] == ["s0-0", "s0-1", "s0-2", "fresh"]
        finally:
            await s.close()
            await client.aclose()
    asyncio.run(go())


def test_a_session_deleted_and_created_again_refuses_the_old_session_object(
        redis_url: str) -> None:
    """A Session read before its session was deleted and created again under the same id, the
    new one brought to the very version the old object holds: StaleSessionError, nothing
    written (the marker carries the context's incarnation)."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            old = await s.create_session(app_name=APP, user_id="u", session_id="s")
            await s.append_event(old, delta_event({"k": 1}, "old-1"))
            await s.delete_session(app_name=APP, user_id="u", session_id="s")
            new = await s.create_session(app_name=APP, user_id="u", session_id="s")
            await s.append_event(new, delta_event({"k": 2}, "new-1"))
            with pytest.raises(StaleSessionError):
                await s.append_event(old, delta_event({"k": 3}, "old-2"))
            got = await s.get_session(app_name=APP, user_id="u", session_id="s")
            assert got is not None
            assert [e.invocation_id for e in got.events] == ["new-1"]
            assert got.state == {"k": 2}
    asyncio.run(go())


def test_an_event_appended_twice_is_stored_once(redis_url: str) -> None:
    """The same event appended again through the Session that holds it: nothing is written;
    through a Session that missed the first reply (the event not in it): the server answers
    from its window (the write id comes from the session and the event id), once."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            session = await s.create_session(app_name=APP, user_id="u", session_id="twice")
            stale_copy = session.model_copy(deep=True)
            event = delta_event({"k": 1}, "once")
            await s.append_event(session, event)
            await s.append_event(session, event)
            # a copy taken before the append, its marker moved as if its reply had been lost
            stale_copy._storage_update_marker = session._storage_update_marker
            stale_copy._storage_update_marker = "1:" + str(
                session._storage_update_marker).partition(":")[2]
            await s.append_event(stale_copy, event)
            got = await s.get_session(app_name=APP, user_id="u", session_id="twice")
            assert got is not None and [e.id for e in got.events] == [event.id]
    asyncio.run(go())


def test_concurrent_appends_through_one_session_object_all_land(redis_url: str) -> None:
    """Appends through one Session object from several tasks at once are taken in turn (a lock
    per session), as ADK's database service does: none is refused as stale."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            session = await s.create_session(app_name=APP, user_id="u", session_id="shared")
            await asyncio.gather(*(s.append_event(session, delta_event({f"k{n}": n}, f"e{n}"))
                                   for n in range(8)))
            got = await s.get_session(app_name=APP, user_id="u", session_id="shared")
            assert got is not None
            assert sorted(e.invocation_id for e in got.events) == [f"e{n}" for n in range(8)]
            assert got.state == {f"k{n}": n for n in range(8)}
            assert s._locks == {}  # the lock table holds only sessions being appended to
    asyncio.run(go())


def test_a_session_without_marker_adds_its_delta_to_the_stored_state(redis_url: str) -> None:
    """A Session built by hand (no storage marker) appends its event's delta to the stored
    session state, not its own (empty) state over it."""
    from google.adk.sessions.session import Session

    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            made = await s.create_session(app_name=APP, user_id="u", session_id="bare",
                                          state={"k": 1})
            bare = Session(id="bare", app_name=APP, user_id="u",
                           last_update_time=made.last_update_time)
            await s.append_event(bare, delta_event({"n": 5}, "bare-1"))
            got = await s.get_session(app_name=APP, user_id="u", session_id="bare")
            assert got is not None and got.state == {"k": 1, "n": 5}
    asyncio.run(go())


def test_a_cancelled_append_leaves_session_and_store_agreeing(redis_url: str) -> None:
    """append_event cancelled at any point: the event is stored with its user: merge and in
    the Session, or nowhere; the next append through the same Session keeps earlier state."""
    async def go() -> None:
        async with CtxlinkSessionService.from_url(redis_url) as s:
            session = await s.create_session(app_name=APP, user_id="u", session_id="cancel")
            for n in range(12):
                task = asyncio.ensure_future(s.append_event(
                    session, delta_event({f"k{n}": n, f"user:u{n}": n}, f"c{n}")))
                for _ in range(n):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                got = await s.get_session(app_name=APP, user_id="u", session_id="cancel")
                assert got is not None
                assert [e.id for e in got.events] == [e.id for e in session.events]
                assert got.state == session.state
                user = await s.get_user_state(app_name=APP, user_id="u")
                assert all(user.get(f"u{m}") == m for m in range(n + 1)
                           if f"k{m}" in session.state)
            await s.append_event(session, delta_event({"last": 1}, "last"))
            got = await s.get_session(app_name=APP, user_id="u", session_id="cancel")
            assert got is not None and got.state["last"] == 1
            assert {k for k in got.state if k.startswith("k")} == {
                k for k in session.state if k.startswith("k")}
    asyncio.run(go())


def test_a_closed_service_refuses_use(redis_url: str) -> None:
    """close() closes the client the service opened; using it afterwards is a RuntimeError."""
    async def go() -> None:
        s = CtxlinkSessionService.from_url(redis_url)
        await s.create_session(app_name=APP, user_id="u", session_id="c")
        await s.close()
        with pytest.raises(RuntimeError, match="closed"):
            await s.get_session(app_name=APP, user_id="u", session_id="c")
    asyncio.run(go())
