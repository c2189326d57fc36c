"""The plumbing every asyncio adapter shares (ADK, OpenAI Agents, pydantic-ai): which client it
talks through, the :class:`ctxlink.aio.Store` opened on first use, its schemas checked once
(:func:`ensure_schemas_async`), ``setup()``, ``close()`` and ``async with``.

An adapter class lists ``_SPECS`` and ``_ADAPTER`` (its name in error messages), calls
:meth:`AsyncAdapter._adapter_init` from its constructor and :meth:`AsyncAdapter._ctx` for the
Store before every operation.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, ClassVar, Literal, Optional, Sequence, TypeVar

import ctxlink.aio
from ctxlink._exceptions import ArgumentError, SchemaError
from ctxlink.integrations._common import (
    SchemaSpec,
    ensure_schemas_async,
    next_schema_wait,
    schema_waits,
)

__all__ = ["AsyncAdapter", "check_ttl", "settled"]

Engine = Literal["auto", "module", "lua"]
_A = TypeVar("_A", bound="AsyncAdapter")
_T = TypeVar("_T")


def check_ttl(ttl: Optional[float], name: str = "ttl") -> Optional[float]:
    """A TTL in seconds: None, or a number > 0 (:class:`ctxlink.ArgumentError` otherwise)."""
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                            or not 0 < ttl < float("inf")):
        raise ArgumentError(f"{name} must be a number of seconds > 0, not {ttl!r}")
    return ttl


async def settled(awaitable: Awaitable[_T]) -> _T:
    """Awaits ``awaitable`` to its end even when the caller is cancelled meanwhile; the
    cancellation is raised once the outcome is known (a write is never left half-done in the
    adapter's own bookkeeping)."""
    task = asyncio.ensure_future(awaitable)
    cancelled: Optional[asyncio.CancelledError] = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the caller's cancellation wins
        raise cancelled
    return task.result()


class AsyncAdapter:
    """Lazily connected, schema-checked access to a :class:`ctxlink.aio.Store`."""

    _SPECS: ClassVar[Sequence[SchemaSpec]]
    _ADAPTER: ClassVar[str]

    _target: Any
    _store: Optional[ctxlink.aio.Store]
    _owns: bool
    _engine: Engine
    _ready: bool
    _closed: bool
    _lock: asyncio.Lock

    def _adapter_init(self, redis_client: Any, redis_url: Optional[str],
                      store: Optional[ctxlink.aio.Store], engine: Engine,
                      register: bool = True) -> None:
        """Exactly one of ``redis_client`` (a ``redis.asyncio`` client), ``redis_url`` (the
        adapter owns the client it opens) and ``store``, else ``ValueError``. ``register``
        False: the schemas are not checked (an administrator's :meth:`setup` did it)."""
        if sum(x is not None for x in (redis_client, redis_url, store)) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one of redis_client, "
                             "redis_url= and store=")
        self._target = redis_url if redis_url is not None else redis_client
        self._store = store
        self._owns = redis_url is not None
        self._engine = engine
        self._ready = not register
        self._registers = register
        self._closed = False
        self._lock = asyncio.Lock()

    async def _connect(self) -> ctxlink.aio.Store:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._store is None:
            self._store = await ctxlink.aio.connect(self._target, engine=self._engine)
        return self._store

    async def _ctx(self) -> ctxlink.aio.Store:
        """The Store, connected and with the schemas checked (once)."""
        if self._ready and self._store is not None and not self._closed:
            return self._store
        async with self._lock:
            store = await self._connect()
            if not self._ready:
                await ensure_schemas_async(store, self._SPECS, self._ADAPTER)
                self._ready = True
        return store

    async def _write(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """One of the adapter's writes (``call`` makes it). A schema the server does not know
        is :class:`SetupRequiredError`, after about 1.5 s of sending it again when this adapter
        registers its schemas (:func:`~ctxlink.integrations._common.next_schema_wait`)."""
        waits = schema_waits(self._registers)
        while True:
            try:
                return await call()
            except SchemaError as exc:
                await asyncio.sleep(next_schema_wait(exc, self._ADAPTER, waits))

    async def setup(self) -> int:
        """Connects and registers the adapter's schemas unless the registry holds them exactly
        as they are; returns how many it wrote (0: nothing). Run it once with an account that
        may write the registry where the agents' ACL cannot (``ctxlink schema push`` does the
        same)."""
        async with self._lock:
            store = await self._connect()
            wrote = await ensure_schemas_async(store, self._SPECS, self._ADAPTER)
            self._ready = True
        return wrote

    async def close(self) -> None:
        """Closes the client when the adapter opened it (``redis_url=``, ``from_url``); the
        adapter is then closed (``RuntimeError`` on use). A client or Store given to it stays
        open, and the adapter usable."""
        if not self._owns:
            return
        self._closed = True
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self: _A) -> _A:
        await self._ctx()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
