"""The OpenAI Agents SDK's ``Session`` on ctxlink (``pip install 'ctxlink[openai-agents]'``).

:class:`CtxlinkSession` implements the ``agents.memory.Session`` protocol (openai-agents 0.23.1
to 0.24): ``get_items``, ``add_items``, ``pop_item`` and ``clear_session``, plus the private
compaction hooks the framework's ``OpenAIResponsesCompactionSession`` looks for,
``_get_compaction_snapshot`` and ``_atomic_replace_items``. It takes the constructor of the
framework's ``RedisSession`` (``session_id``, ``redis_client=``, ``key_prefix``, ``ttl``,
``session_settings``; :meth:`CtxlinkSession.from_url`), and ``store=`` (a
:class:`ctxlink.aio.Store`).

Layout: one ctxlink context per session, ``{key_prefix}:{session_id}`` (one key: one slot of a
Redis Cluster), of schema :data:`SESSION_SCHEMA`, a message
``{int64 version = 1; repeated string items = 2;}``. Each item is the framework's own JSON form
of the item (``json.dumps``, as ``RedisSession`` stores it); nothing is pickled.

Guarantees:

- ``add_items`` is one ctxlink append (``CTX.PATCH ... APPEND``): it never conflicts with
  another writer, so concurrent writers (tasks, threads, processes, hosts) all land, each item
  once and the items of one call together and in order. Creating the session is the first
  append: two clients that create it at once make one context holding both their items. A reply
  lost on the way is settled by the write's id (applied exactly once), else
  :class:`ctxlink.OutcomeUnknownError` (read the session to see whether the items landed).
  Because a session has many concurrent appenders, :data:`SESSION_SCHEMA` is registered with
  a write-id window of 64 (``WINDOW 64``, docs/PROTOCOL.md; the default is 16): a re-send is
  settled while its id is among the context's last 64 writes, which with 16 appenders settles
  every lost reply (docs/BENCHMARKS.md, "The window per schema"). A registry holding the schema
  with another window is registered again by :meth:`CtxlinkSession.setup`. The
  client's own connection error comes through only when nothing reached the server: calling
  ``add_items`` again then adds the items once.
- ``pop_item`` removes exactly the last item with a compare-and-swap on the context's version
  and incarnation (re-read and tried again when another write came first); ``clear_session``
  deletes the context with the same compare-and-swap.
- ``_get_compaction_snapshot(limit)``: the last ``limit`` items; its ``replace_suffix(start,
  output)`` writes ``items[:len-len(suffix)] + output`` only if the context is still at the
  version and incarnation of the snapshot, else it returns False and writes nothing: a tail that
  changed (an add, a pop, a clear, another compaction) is never replaced.
- ``_atomic_replace_items(items)`` writes the whole history with a compare-and-swap on the
  version and incarnation of the last read of this session in the calling task (asyncio
  context: ``get_items``, a snapshot, or the state a ``pop_item``, ``clear_session`` or
  replacement of that task wrote; the instance's last one when the task has none). When
  anything was written since, it raises :class:`HistoryChangedError` and writes nothing: it never
  returns False, so the framework never falls back to its clear-then-add replacement.
  openai-agents calls it for a manual ``run_compaction`` from 0.24.0 on; 0.23.x replaces the
  history of a manual compaction by ``clear_session`` then ``add_items`` (its own path, not
  atomic). The automatic compaction of the Runner uses the snapshot on both.
- Mutations run to their end when the caller is cancelled (the caller's cancellation is raised
  after the outcome is known), as the framework's own backends do.

Limits: the whole history is one context, so it is bounded by the server's
``max-payload-bytes`` (1 MiB by default: the module's ``max-payload-bytes`` argument, on the
Lua engine the Store's ``max_payload_bytes``): the ``add_items`` that would take it over is
refused with :class:`ctxlink.PayloadTooLarge` and nothing of it is written (the history stays
as it was, readable and poppable). A long session is kept below the limit by compaction
(``OpenAIResponsesCompactionSession`` over this session), by ``clear_session``, or by raising
the server's limit; the adapter does not split a session into segments. ``ttl`` (seconds) is
set again by every write: the session expires ``ttl`` seconds after its last write.
"""

from __future__ import annotations

import contextvars
import json
import os
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any, Callable, Literal, Optional, TypeVar

from agents.memory.session import _CompactionSnapshot
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import ctxlink.aio
from ctxlink import (
    ConflictError,
    ContextReplacedError,
    Snapshot,
)
from ctxlink.integrations._aio_adapter import AsyncAdapter, check_ttl, settled
from ctxlink.integrations._common import (
    SchemaSpec,
    check_prefix,
)

__all__ = ["CtxlinkSession", "HistoryChangedError", "SESSION_SCHEMA", "SessionMessage"]

#: the schema name the adapter registers (when the registry lacks this exact definition)
SESSION_SCHEMA = "openai_agents.session"

_PACKAGE = "ctxlink.integrations.openai_agents"
_T = TypeVar("_T")


class HistoryChangedError(ConflictError):
    """``_atomic_replace_items``: the session was written after the read the replacement is
    based on; nothing was written."""

    def __init__(self, key: str, current: Optional[Snapshot]) -> None:
        super().__init__(
            f"session {key!r} changed after the history being replaced was read: the "
            "replacement was not written (read the session again and compact that)",
            current, (), 0, key)


def _message_class() -> Any:
    """``{int64 version = 1; repeated string items = 2;}`` in a pool of its own."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="ctxlink/integrations/openai_agents.proto", package=_PACKAGE, syntax="proto3")
    msg = fdp.message_type.add(name="Session")
    msg.field.add(name="version", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    msg.field.add(name="items", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Session"))


#: the session's message class (``version``, ``items``)
SessionMessage: Any = _message_class()

#: write-id window of the session schema: many processes append to one session, and a lost
#: reply is settled only while its write id is among the context's last ``window`` writes
_WINDOW = 64
_SPECS = (SchemaSpec(SESSION_SCHEMA, SessionMessage, window=_WINDOW),)
_ADAPTER = "CtxlinkSession"

#: per asyncio context: session token -> (version, incarnation) of that session's last read
_READS: contextvars.ContextVar[Optional[Mapping[str, tuple[int, str]]]] = (
    contextvars.ContextVar("ctxlink_openai_agents_reads", default=None))
#: how many sessions' last reads a task keeps (a session dropped from it falls back to the
#: instance's last read)
_READS_KEPT = 64


class CtxlinkSession(AsyncAdapter):
    """An OpenAI Agents SDK session stored in one ctxlink context (see the module docstring).

    Give exactly one of ``redis_client`` (a ``redis.asyncio.Redis`` or ``RedisCluster``),
    ``redis_url=`` (the session owns that client: :meth:`close`) or ``store=`` (a
    :class:`ctxlink.aio.Store`), else ``ValueError``. ``key_prefix`` (non-empty, no whitespace,
    else ``ValueError``) and ``session_id`` make the key ``{key_prefix}:{session_id}``. ``ttl``
    (seconds > 0, else :class:`ctxlink.ArgumentError`) is set by every write. ``engine``: as
    :func:`ctxlink.aio.connect`. ``register=False`` skips the schema check (an administrator ran
    :meth:`setup` or ``ctxlink schema push``). The connection and the schema check happen on
    first use (:meth:`setup` does them at once).
    """

    session_settings: Optional[SessionSettings] = None
    _SPECS = _SPECS
    _ADAPTER = _ADAPTER

    def __init__(
        self,
        session_id: str,
        *,
        redis_client: Any = None,
        redis_url: Optional[str] = None,
        store: Optional[ctxlink.aio.Store] = None,
        key_prefix: str = "agents:session",
        ttl: Optional[float] = None,
        session_settings: Optional[SessionSettings | dict[str, Any]] = None,
        engine: Literal["auto", "module", "lua"] = "auto",
        register: bool = True,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty str, not {session_id!r}")
        self._adapter_init(redis_client, redis_url, store, engine, register)
        check_prefix(key_prefix)
        check_ttl(ttl)
        self.session_id = session_id
        self.session_settings = (coerce_session_settings(session_settings)
                                 if session_settings is not None else SessionSettings())
        self._token = uuid.uuid4().hex
        self._last_read: Optional[tuple[int, str]] = None
        self.key_prefix = key_prefix
        self.ttl = ttl
        self.key = f"{key_prefix}:{session_id}"

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        redis_kwargs: Optional[dict[str, Any]] = None,
        session_settings: Optional[SessionSettings | dict[str, Any]] = None,
        **kwargs: Any,
    ) -> "CtxlinkSession":
        """A session on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``),
        which it owns (:meth:`close`); ``redis_kwargs`` go to ``redis.asyncio.from_url``, the
        other keywords to the constructor. Usable at once: it connects on first use."""
        if redis_kwargs:
            import redis.asyncio

            session = cls(session_id, redis_client=redis.asyncio.from_url(url, **redis_kwargs),
                          session_settings=session_settings, **kwargs)
            session._owns = True
            return session
        return cls(session_id, redis_url=url, session_settings=session_settings, **kwargs)

    async def close(self) -> None:
        """Closes the client when the session opened it (``redis_url=``, :meth:`from_url`);
        the session is then closed (``RuntimeError`` on use). A no-op for a client or Store
        given to it."""
        if not self._owns:
            return
        self._closed = True
        if self._store is not None:
            await self._store.close()  # closes the client it opened from a URL
            self._store = None
        if self._target is not None and not isinstance(self._target, str):
            # the client from_url(redis_kwargs=...) built, which the Store does not own
            close = getattr(self._target, "aclose", None) or self._target.close
            await close()
        self._target = None

    async def ping(self) -> bool:
        """True when the server answers."""
        try:
            store = await self._ctx()
            client: Any = store.client
            return bool(await client.ping())
        except RuntimeError:
            raise
        except Exception:
            return False

    # -- plumbing --------------------------------------------------------------------------
    def _remember(self, seen: tuple[int, str]) -> None:
        """Records the state (version, incarnation; (0, "") for none) this task last read or
        wrote with a compare-and-swap: the base of ``_atomic_replace_items``."""
        self._last_read = seen
        reads = dict(_READS.get() or {})
        reads.pop(self._token, None)
        reads[self._token] = seen
        if len(reads) > _READS_KEPT:  # the sessions this task used least recently
            for token in list(reads)[:len(reads) - _READS_KEPT]:
                del reads[token]
        _READS.set(reads)

    async def _read(self) -> tuple[Optional[Snapshot], list[str]]:
        snap = await (await self._ctx()).get(self.key)
        self._remember(_state(snap))
        return snap, [] if snap is None else list(snap.decode(SessionMessage).items)

    def _serialize_item(self, item: Any) -> str:
        """An item as stored: the framework's JSON (as ``RedisSession``'s)."""
        return json.dumps(item, separators=(",", ":"))

    def _deserialize_item(self, data: str) -> Any:
        return json.loads(data)

    def _decode(self, raw: list[str]) -> list[Any]:
        """The items of ``raw``; one that is not JSON (written by another client) is skipped."""
        out = []
        for data in raw:
            try:
                out.append(self._deserialize_item(data))
            except (json.JSONDecodeError, TypeError):
                continue
        return out

    async def _cas_items(self, snap: Optional[Snapshot],
                         items: list[str]) -> Optional[tuple[int, str]]:
        """Writes ``items`` as the whole history if the context is still ``snap`` (version and
        incarnation; absent when None): the state written, or None when another write came
        first (nothing written)."""
        store = await self._ctx()
        message = SessionMessage(items=items)
        # a create names its incarnation, so the state written is known exactly
        incarnation = os.urandom(8).hex() if snap is None else snap.incarnation
        try:
            if snap is None:
                res = await self._write(lambda: store.cas(
                    self.key, 0, message, schema=SESSION_SCHEMA, ttl=self.ttl,
                    incarnation=incarnation))
            else:
                res = await self._write(lambda: store.cas(
                    self.key, snap.version, message, ttl=self.ttl,
                    incarnation=incarnation or None))
        except ContextReplacedError:
            return None
        return (res.version, incarnation) if res.ok else None

    # -- the Session protocol --------------------------------------------------------------
    async def get_items(self, limit: Optional[int] = None) -> list[Any]:
        """The history in order; with ``limit`` (else ``session_settings.limit``) the newest
        ``limit`` items, none for ``limit <= 0``. One read."""
        limit = resolve_session_limit(limit, self.session_settings)
        _, raw = await self._read()
        items = self._decode(raw)
        if limit is None:
            return items
        return items[-limit:] if limit > 0 else []

    async def add_items(self, items: list[Any]) -> None:
        """Appends ``items`` (one atomic append; see the module docstring)."""
        store = await self._ctx()
        if not items:
            return
        data = [self._serialize_item(item) for item in items]
        await settled(self._append(store, data))

    async def _append(self, store: ctxlink.aio.Store, data: list[str]) -> None:
        base: Optional[int] = None
        for _ in range(8):
            res = await self._write(partial(
                store.append, self.key, "items", data, base_version=base,
                schema=SESSION_SCHEMA, message_class=SessionMessage, ttl=self.ttl))
            if res.ok:
                return
            # not applied: the context this client last saw was deleted (clear_session):
            # append to a new one (base 0 creates it, or lands on whoever created it first)
            base = 0
        raise ConflictError(f"append to session {self.key!r} was refused 8 times in a row "
                            "(the session was cleared each time); it was not applied",
                            None, (), 8, self.key)

    async def pop_item(self) -> Optional[Any]:
        """Removes and returns the newest item (None when there is none), with a
        compare-and-swap: exactly that item goes, even with other writers at work."""
        await self._ctx()
        got, seen = await settled(self._pop())
        self._remember(seen)  # in this task (the work ran in a task of its own)
        return got

    async def _pop(self) -> tuple[Optional[Any], tuple[int, str]]:
        snap, raw = await self._read()
        while True:
            if snap is None or not raw:
                return None, _state(snap)
            written = await self._cas_items(snap, raw[:-1])
            if written is not None:
                try:
                    return self._deserialize_item(raw[-1]), written
                except (json.JSONDecodeError, TypeError):
                    pass  # not an item (written by another client): dropped, pop the next one
            snap, raw = await self._read()

    async def clear_session(self) -> None:
        """Deletes the session's context (compare-and-swap; items appended during the call are
        deleted too, or land in a new context after it)."""
        await self._ctx()
        await settled(self._clear())
        self._remember((0, ""))

    async def _clear(self) -> None:
        store = await self._ctx()
        snap = await store.get(self.key)
        while snap is not None:
            try:
                res = await store.delete(self.key, snap.version,
                                         incarnation=snap.incarnation or None)
            except ContextReplacedError:
                snap = await store.get(self.key)
                continue
            if res.ok:
                break
            snap = res.current
        self._remember((0, ""))

    # -- the compaction hooks (openai-agents >= 0.23.1) ------------------------------------
    async def _get_compaction_snapshot(
        self,
        limit: int,
        *,
        prune_prefix: Optional[Callable[[Any], bool]] = None,
    ) -> Any:
        """The newest ``limit`` items, whether they are the whole history, and a
        ``replace_suffix(start, output)`` that swaps ``items[start:]`` for ``output`` only if
        nothing was written since this read (compare-and-swap on version and incarnation;
        False and nothing written otherwise). ``prune_prefix``: items before the suffix for
        which it is True, from the oldest on, are dropped in the same write. None when a stored
        item is not JSON."""
        snap, raw = await self._read()
        tail = raw[-limit:] if limit > 0 else []
        try:
            items = [self._deserialize_item(data) for data in tail]
        except (json.JSONDecodeError, TypeError):
            return None
        complete = len(tail) == len(raw)

        async def replace_suffix(start: int, output: list[Any]) -> bool:
            expected = tail[start:]
            if not expected or snap is None:
                return False
            keep = raw[:len(raw) - len(expected)]
            if prune_prefix is not None:
                cut = 0
                for data in keep:
                    try:
                        if not prune_prefix(self._deserialize_item(data)):
                            break
                    except (json.JSONDecodeError, TypeError):
                        break
                    cut += 1
                keep = keep[cut:]
            written = await self._cas_items(snap, keep + [self._serialize_item(o)
                                                          for o in output])
            if written is None:
                return False
            self._remember(written)
            return True

        return _CompactionSnapshot(items, complete, replace_suffix)

    async def _atomic_replace_items(self, items: list[Any]) -> bool:
        """Replaces the whole history with ``items`` in one compare-and-swap against this
        task's last read of the session (see the module docstring); True, or
        :class:`HistoryChangedError` with nothing written."""
        store = await self._ctx()
        seen = (_READS.get() or {}).get(self._token, self._last_read)
        if seen is None:  # never read here: replace what is there now
            snap = await store.get(self.key)
        else:
            version, incarnation = seen
            current = await store.get(self.key)
            if _state(current) != (version, incarnation):
                raise HistoryChangedError(self.key, current)
            snap = current
        data = [self._serialize_item(item) for item in items]
        written = await self._cas_items(snap, data)
        if written is None:
            raise HistoryChangedError(self.key, await store.get(self.key))
        self._remember(written)
        return True


def _state(snap: Optional[Snapshot]) -> tuple[int, str]:
    """(version, incarnation) of a context; (0, "") for none."""
    return (0, "") if snap is None else (snap.version, snap.incarnation)
