"""Google ADK's session service on ctxlink: ``CtxlinkSessionService`` (``ctxlink[adk]``).

    from ctxlink.integrations.adk import CtxlinkSessionService
    sessions = CtxlinkSessionService.from_url("redis://localhost:6379")  # was RedisSessionService
    runner = Runner(agent=agent, app_name="app", session_service=sessions)

A ``google.adk.sessions.BaseSessionService`` (tested with google-adk 2.7.0 and 2.13.0):
``create_session``, ``get_session`` (``GetSessionConfig``), ``list_sessions``,
``delete_session``, ``get_user_state`` and ``append_event``, on the SDK's asyncio twin
(:mod:`ctxlink.aio`).

Layout (``key_prefix`` ``adk:`` by default; ``%`` and ``:`` escaped in every name part):

- ``{prefix}session:{app}:{user}:{session}``: one context per session (schema ``adk_session``):
  its ids, the session-scoped state (JSON), ``last_update_time`` and ``create_time``, and
  ``events``, a repeated field of ADK's own event JSON (``Event.model_dump_json``), one element
  per event in append order.
- ``{prefix}app:{app}`` and ``{prefix}user:{app}:{user}`` (schema ``adk_state``): the ``app:``
  and ``user:`` state (JSON, keys without their prefix), shared by every session of the app or
  of the user.

Nothing is pickled: every value is pydantic's JSON (state values that JSON cannot hold are
stored as their ``str``, as ADK's database service does).

``append_event`` is one atomic write on the session's context: ``CTX.PATCH ... APPEND``
appends the event's JSON to ``events`` and writes the session state and ``last_update_time``
(the event's timestamp, which ``list_sessions`` orders by) in the same write, based on the
version of the context the Session object was read at (kept in the Session's private storage
marker). Appends never conflict with each other as appends, but the state patch conflicts with
any other ``append_event`` since that version: an append through a Session object older than
the stored session raises ``google.adk.errors.StaleSessionError`` and writes nothing; of two
writers holding copies of one read (or one Session object, through two services or processes)
exactly one wins. A Session without the marker (built by hand, or by another service) is
checked as ADK's database service checks one: stale when the stored session is newer and its
last event is not the Session's last; its event's delta is then applied to the stored state.
The event is applied exactly once. Its write id is derived from the session key and the event
id, so a lost reply re-sent by the SDK, or the same ``append_event`` called again after
:class:`ctxlink.OutcomeUnknownError`, is answered from the server's window of recent writes
instead of storing the event twice (beyond the window the state patch conflicts and the call
raises ``StaleSessionError``: reload the session); an event the Session already holds is not
sent at all. Appends through one Session object are taken one at a time (a lock per session, as
ADK's database service holds), so concurrent appends through it all land. Once the event is
stored, the base class's ``append_event`` applies the delta to the in-memory Session and appends
the event there, and the event's ``app:`` and ``user:`` deltas are merged key by key into their
contexts with compare-and-swap retries (``store.update``), so concurrent sessions of one app or
user never lose each other's keys; a caller cancelled meanwhile does not interrupt this. The
merges are separate writes: a process killed between the event and them leaves the event (its
``state_delta`` included) without the merge; ``temp:`` keys are never stored.

Size: a session is one context, so its events and state together are bounded by the server's
``max-payload-bytes`` (1 MiB by default). The append that would pass it raises
:class:`ctxlink.PayloadTooLarge` and writes nothing (the session stays as it was, and so do the
in-memory Session and the shared state); start a new session then (or raise the limit). This
adapter keeps no segments: a session that must outgrow the limit needs the segment layout of
docs/PROTOCOL.md ("At max-payload-bytes"), which it does not implement.

``ttl_seconds``: every write stores the expiry, so a session lives ``ttl_seconds`` after its last
event, app and user state after their last change. The marker also carries the context's
incarnation: a Session read before its session was deleted and created again under the same id
gets ``StaleSessionError`` on append, whatever version the new session has reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal, Optional

import pydantic_core
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.sessions import _session_util
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session
from google.adk.sessions.state import State
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

import ctxlink.aio
from ctxlink import CasResult, ContextReplacedError
from ctxlink._protocol import new_incarnation
from ctxlink.integrations._aio_adapter import AsyncAdapter, check_ttl, settled
from ctxlink.integrations._common import (
    SchemaSpec,
    check_prefix,
)

__all__ = ["CtxlinkSessionService", "SESSION_SCHEMA", "STATE_SCHEMA"]

#: the schema names the service registers (when the registry lacks this exact definition)
SESSION_SCHEMA = "adk_session"
STATE_SCHEMA = "adk_state"

_PACKAGE = "ctxlink.integrations.adk"
_STALE = ("The session has been modified in storage since it was loaded. "
          "Please reload the session before appending more events.")
_F = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> tuple[Any, Any]:
    """``Session {int64 version = 1; string app_name = 2; string user_id = 3; string id = 4;
    bytes state = 5; double last_update_time = 6; double create_time = 7;
    repeated bytes events = 8;}`` and ``State {int64 version = 1; bytes data = 2;}``."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="ctxlink/integrations/adk.proto", package=_PACKAGE, syntax="proto3")
    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    session = fdp.message_type.add(name="Session")
    for number, (name, kind, label) in enumerate((
            ("version", _F.TYPE_INT64, one), ("app_name", _F.TYPE_STRING, one),
            ("user_id", _F.TYPE_STRING, one), ("id", _F.TYPE_STRING, one),
            ("state", _F.TYPE_BYTES, one), ("last_update_time", _F.TYPE_DOUBLE, one),
            ("create_time", _F.TYPE_DOUBLE, one), ("events", _F.TYPE_BYTES, many)), start=1):
        session.field.add(name=name, number=number, type=kind, label=label)
    state = fdp.message_type.add(name="State")
    state.field.add(name="version", number=1, type=_F.TYPE_INT64, label=one)
    state.field.add(name="data", number=2, type=_F.TYPE_BYTES, label=one)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Session")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.State")))


SessionMessage, StateMessage = _message_classes()
_SPECS = (SchemaSpec(SESSION_SCHEMA, SessionMessage), SchemaSpec(STATE_SCHEMA, StateMessage))
_ADAPTER = "CtxlinkSessionService"
#: how many sessions list_sessions reads at once
_LIST_READS = 64


def _dump(value: dict[str, Any]) -> bytes:
    """ADK's JSON of a state dict (pydantic's encoder; what JSON cannot hold becomes its str)."""
    return pydantic_core.to_json(value, fallback=str)


def _load(data: bytes) -> dict[str, Any]:
    got = json.loads(data) if data else {}
    return got if isinstance(got, dict) else {}


def _part(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A")


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _scoped(state: dict[str, Any]) -> dict[str, Any]:
    """The session-scoped keys of a Session's state (no ``app:``, ``user:``, ``temp:``)."""
    return {k: v for k, v in state.items()
            if not k.startswith((State.APP_PREFIX, State.USER_PREFIX, State.TEMP_PREFIX))}


def _merged(app: dict[str, Any], user: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(own)
    out.update({State.APP_PREFIX + k: v for k, v in app.items()})
    out.update({State.USER_PREFIX + k: v for k, v in user.items()})
    return out


def _marker(version: int, incarnation: str) -> str:
    """The Session's storage marker: ``<version>:<incarnation>`` of the context it was read at
    (or wrote)."""
    return f"{version}:{incarnation}"


class CtxlinkSessionService(AsyncAdapter, BaseSessionService):
    """An ADK session service whose appends are atomic, exactly-once ctxlink appends.

    Give exactly one of ``redis_client`` (a ``redis.asyncio.Redis`` or ``RedisCluster``),
    ``redis_url=`` (``redis://``, ``rediss://``, ``unix://``; the service owns that client:
    :meth:`close`) or ``store=`` (a :class:`ctxlink.aio.Store`), else ``ValueError``.
    ``key_prefix`` (non-empty, no whitespace, else ``ValueError``) starts every key;
    ``ttl_seconds`` (> 0, else :class:`ctxlink.ArgumentError`; None: no expiry) is stored with
    every write, as ADK's ``RedisSessionServiceConfig.ttl_seconds``. ``register=False`` skips the
    schema check (after an administrator's :meth:`setup`; an agent whose ACL cannot read the
    registry skips it anyway, see :mod:`ctxlink.integrations._common`). ``engine``: as
    :func:`ctxlink.aio.connect`. The connection and the schema check happen on first use
    (:meth:`setup` does them at once).
    """

    _SPECS = _SPECS
    _ADAPTER = _ADAPTER

    def __init__(
        self,
        redis_client: Any = None,
        *,
        redis_url: Optional[str] = None,
        store: Optional[ctxlink.aio.Store] = None,
        key_prefix: str = "adk:",
        ttl_seconds: Optional[float] = None,
        register: bool = True,
        engine: Literal["auto", "module", "lua"] = "auto",
    ) -> None:
        self._adapter_init(redis_client, redis_url, store, engine, register)
        self.key_prefix = check_prefix(key_prefix)
        self.ttl_seconds = check_ttl(ttl_seconds, "ttl_seconds")
        self._locks: dict[str, list[Any]] = {}  # session key -> [asyncio.Lock, holders]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "CtxlinkSessionService":
        """A service on a new client for ``url``, which it owns; usable at once (it connects on
        first use, or ``await service.setup()``)."""
        return cls(redis_url=url, **kwargs)

    # -- plumbing --------------------------------------------------------------------------
    def _session_key(self, app_name: str, user_id: str, session_id: str) -> str:
        return f"{self.key_prefix}session:{_part(app_name)}:{_part(user_id)}:{_part(session_id)}"

    def _app_key(self, app_name: str) -> str:
        return f"{self.key_prefix}app:{_part(app_name)}"

    def _user_key(self, app_name: str, user_id: str) -> str:
        return f"{self.key_prefix}user:{_part(app_name)}:{_part(user_id)}"

    async def _read_state(self, store: ctxlink.aio.Store, key: str) -> dict[str, Any]:
        snap = await store.get(key)
        return {} if snap is None else _load(snap.decode(StateMessage).data)

    async def _merge_state(self, store: ctxlink.aio.Store, key: str,
                           delta: dict[str, Any]) -> dict[str, Any]:
        """Merges ``delta`` key by key into the state context ``key`` (compare-and-swap,
        retried on conflict; created when absent); returns the state written (or read)."""
        if not delta:
            return await self._read_state(store, key)
        safe = _load(_dump(delta))

        def apply(msg: Message) -> None:
            state = _load(msg.data)  # type: ignore[attr-defined]
            state.update(safe)
            msg.data = _dump(state)  # type: ignore[attr-defined]

        while True:
            try:
                got = await self._write(lambda: store.update(
                    key, apply, message_class=StateMessage, schema=STATE_SCHEMA,
                    default=StateMessage, ttl=self.ttl_seconds))
            except ContextReplacedError:
                continue  # deleted and created again meanwhile: merge into the new one
            return _load(got.message.data)

    async def _shared(self, store: ctxlink.aio.Store, app_name: str,
                      user_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        app, user = await asyncio.gather(self._read_state(store, self._app_key(app_name)),
                                         self._read_state(store, self._user_key(app_name,
                                                                                user_id)))
        return app, user

    @staticmethod
    def _session_of(msg: Any, version: int, incarnation: str, app: dict[str, Any],
                    user: dict[str, Any], events: list[Event]) -> Session:
        session = Session(id=msg.id, app_name=msg.app_name, user_id=msg.user_id,
                          state=_merged(app, user, _load(msg.state)), events=events,
                          last_update_time=msg.last_update_time)
        session._storage_update_marker = _marker(version, incarnation)
        return session

    # -- BaseSessionService ----------------------------------------------------------------
    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: Optional[dict[str, Any]] = None,
        session_id: Optional[str] = None,
    ) -> Session:
        """Creates the session (``AlreadyExistsError`` when the id is taken: of two creators
        of one id exactly one wins), then merges the ``app:``/``user:`` keys of ``state``."""
        store = await self._ctx()
        sid = (session_id.strip() if session_id else "") or str(uuid.uuid4())
        deltas = _session_util.extract_state_delta(state or {})
        now = time.time()
        msg = SessionMessage(app_name=app_name, user_id=user_id, id=sid,
                             state=_dump(deltas["session"]), last_update_time=now,
                             create_time=now)
        inc = new_incarnation()  # the new context's, kept in the Session's marker
        res = await self._write(lambda: store.cas(
            self._session_key(app_name, user_id, sid), 0, msg, schema=SESSION_SCHEMA,
            ttl=self.ttl_seconds, incarnation=inc))
        if not res.ok:
            raise AlreadyExistsError(f"Session with id {sid} already exists.")
        # the session exists: its app:/user: keys follow, whatever happens to the caller
        app, user = await settled(asyncio.gather(
            self._merge_state(store, self._app_key(app_name), deltas["app"]),
            self._merge_state(store, self._user_key(app_name, user_id), deltas["user"])))
        return self._session_of(msg, res.version, inc, app, user, [])

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: Optional[GetSessionConfig] = None,
    ) -> Optional[Session]:
        """The session with its events in append order, or None. ``config.num_recent_events``
        keeps the last n; ``config.after_timestamp`` the trailing events whose timestamp is at
        least it. Only the events returned are decoded."""
        store = await self._ctx()
        sid = session_id.strip() if session_id else session_id
        snap = await store.get(self._session_key(app_name, user_id, sid))
        if snap is None:
            return None
        msg = snap.decode(SessionMessage)
        limit = config.num_recent_events if config is not None else None
        after = config.after_timestamp if config is not None else None
        picked: list[Event] = []
        for raw in reversed(msg.events):
            if limit is not None and len(picked) >= limit:
                break
            event = Event.model_validate_json(raw)
            if after is not None and event.timestamp < after:
                break
            picked.append(event)
        picked.reverse()
        app, user = await self._shared(store, app_name, user_id)
        return self._session_of(msg, snap.version, snap.incarnation, app, user, picked)

    async def list_sessions(
        self, *, app_name: str, user_id: Optional[str] = None
    ) -> ListSessionsResponse:
        """The app's sessions (of ``user_id``, or of every user), without events, with merged
        state, oldest ``last_update_time`` first (then user id, session id). Scans the keys, then
        reads the sessions 64 at a time."""
        store = await self._ctx()
        client: Any = store.client  # the Store's redis-py client, for SCAN
        pattern = _glob(f"{self.key_prefix}session:{_part(app_name)}:")
        pattern += "*" if user_id is None else _glob(f"{_part(user_id)}:") + "*"
        app = await self._read_state(store, self._app_key(app_name))
        users: dict[str, dict[str, Any]] = {}
        sessions: list[Session] = []
        # SCAN may return a key twice: each once, in the order first seen
        keys = list(dict.fromkeys([k.decode() if isinstance(k, bytes) else str(k)
                                   async for k in client.scan_iter(match=pattern, count=500)]))
        for i in range(0, len(keys), _LIST_READS):  # reads in parallel, a bounded batch at a time
            for snap in await asyncio.gather(*(store.get(k) for k in keys[i:i + _LIST_READS])):
                if snap is None:
                    continue  # deleted since the scan saw it
                msg = snap.decode(SessionMessage)
                if msg.app_name != app_name or (user_id is not None and msg.user_id != user_id):
                    continue
                msg.ClearField("events")
                if msg.user_id not in users:
                    users[msg.user_id] = await self._read_state(
                        store, self._user_key(app_name, msg.user_id))
                sessions.append(self._session_of(msg, snap.version, snap.incarnation, app,
                                                  users[msg.user_id], []))
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Deletes the session and its events (a missing session is no error); the app and
        user state stay."""
        store = await self._ctx()
        sid = session_id.strip() if session_id else session_id
        key = self._session_key(app_name, user_id, sid)
        snap = await store.get(key)
        while snap is not None:
            res = await store.delete(key, snap.version)
            if res.ok:
                return
            snap = res.current

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's ``user:`` state, keys without the prefix ({} when there is none)."""
        store = await self._ctx()
        return await self._read_state(store, self._user_key(app_name, user_id))

    async def append_event(self, session: Session, event: Event) -> Event:
        """Stores ``event`` (partial events are not stored) and its state delta, then applies
        it to ``session`` as the base class does. ``StaleSessionError``: ``session`` is older
        than the stored session (nothing written); ``SessionNotFoundError``: no such session;
        :class:`ctxlink.PayloadTooLarge`: the session would pass max-payload-bytes.

        Appends through one Session object are taken one at a time (a lock per session, as
        ADK's database service holds), so concurrent appends through it all land. An event
        already in ``session`` is not stored again; the write id is derived from the session
        and the event id, so a call repeated after its reply was lost is answered from the
        server's window instead of storing the event twice. Once the event is stored, the
        Session is updated and the ``app:``/``user:`` merges run to their end even when the
        caller is cancelled."""
        if event.partial:
            return event
        store = await self._ctx()
        return await settled(self._append_event(store, session, event))

    async def _append_event(self, store: ctxlink.aio.Store, session: Session,
                            event: Event) -> Event:
        key = self._session_key(session.app_name, session.user_id, session.id)
        async with self._session_lock(key):
            if any(e.id == event.id for e in session.events):
                return event  # appended through this Session already
            # as the base class: temp state is visible in memory for this invocation only
            self._apply_temp_state(session, event)
            event = self._trim_temp_delta_state(event)
            delta = (event.actions.state_delta
                     if event.actions and event.actions.state_delta else {})
            deltas = _session_util.extract_state_delta(delta)
            base, inc, stored = await self._base_version(store, key, session)
            own = stored if stored is not None else _scoped(session.state)
            own.update(deltas["session"])
            patch = SessionMessage(state=_dump(own), last_update_time=event.timestamp)
            res = await self._store_event(store, key, session, event, patch, base, inc)
            # stored: the Session and the shared state follow, whatever happens to the caller
            session._storage_update_marker = _marker(res.version, inc)
            session.last_update_time = event.timestamp
            event = await super().append_event(session, event)
            await self._merge_shared(store, session, deltas)
            return event

    async def _store_event(self, store: ctxlink.aio.Store, key: str, session: Session,
                           event: Event, patch: Message, base: int, inc: str) -> CasResult:
        """The append of ``event`` with ``patch``; StaleSessionError / SessionNotFoundError
        when refused (nothing written)."""
        wid = hashlib.sha1(f"{key}\0{event.id}".encode()).hexdigest()
        try:
            data = [event.model_dump_json(exclude_none=True).encode()]
            res = await self._write(lambda: store.append(
                key, "events", data, patch=patch, base_version=base, schema=SESSION_SCHEMA,
                ttl=self.ttl_seconds, incarnation=inc or None, write_id=wid))
        except ContextReplacedError:
            # deleted and created again since the Session was read: not its session any more
            raise StaleSessionError(_STALE) from None
        if not res.ok:
            if res.current is None:
                raise SessionNotFoundError(f"Session {session.id} not found.")
            raise StaleSessionError(_STALE)
        return res

    async def _merge_shared(self, store: ctxlink.aio.Store, session: Session,
                            deltas: dict[str, dict[str, Any]]) -> None:
        """Merges an event's ``app:`` and ``user:`` deltas into their contexts."""
        if deltas["app"]:
            await self._merge_state(store, self._app_key(session.app_name), deltas["app"])
        if deltas["user"]:
            await self._merge_state(store, self._user_key(session.app_name, session.user_id),
                                    deltas["user"])

    @contextlib.asynccontextmanager
    async def _session_lock(self, key: str) -> AsyncIterator[None]:
        """One append at a time per session key in this service (the entry goes with its last
        holder, so the table holds only the sessions being appended to)."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    async def _base_version(self, store: ctxlink.aio.Store, key: str,
                            session: Session) -> tuple[int, str, Optional[dict[str, Any]]]:
        """The stored version and incarnation ``session`` was read at: its marker; or, for a
        Session without one, the current ones when the Session is not behind them (else
        StaleSessionError), with the stored session state (the Session's own may not hold it:
        the event's delta is applied to the stored state then)."""
        marker = session._storage_update_marker
        if marker is not None:
            version, _, inc = str(marker).partition(":")
            try:
                return max(1, int(version)), inc, None
            except ValueError:
                pass  # another service's marker: check as a marker-less Session
        snap = await store.get(key)
        if snap is None:
            raise SessionNotFoundError(f"Session {session.id} not found.")
        msg = snap.decode(SessionMessage)
        if msg.last_update_time > session.last_update_time:
            stored_last = Event.model_validate_json(msg.events[-1]).id if msg.events else None
            mine = session.events[-1].id if session.events else None
            if stored_last != mine:
                raise StaleSessionError(_STALE)
        return int(snap.version), snap.incarnation, _load(msg.state)
