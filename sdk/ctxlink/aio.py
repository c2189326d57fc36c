"""The asyncio twin of :mod:`ctxlink`: same names and arguments, for ``redis.asyncio`` clients.

    store = await ctxlink.aio.connect(redis.asyncio.Redis(...))
    snap = await store.get("order:1")

    async with await ctxlink.aio.connect("redis://localhost:6379") as store:  # owns its client
        ...

``update``'s function (and ``default``) may be ``async def`` here.

Everything but the awaiting is shared with the sync front end: what each call does is described
once, in :mod:`ctxlink._dispatch`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, TypeVar, Union

from google.protobuf.message import Message
from redis.exceptions import RedisError, ResponseError

from ctxlink._client import is_cluster, open_client
from ctxlink._cluster import cluster_targets, merge_node_replies
from ctxlink._dispatch import Call, Fast, Runner, StoreBase, node_result, op_connect
from ctxlink._exceptions import (
    ArgumentError,
    ConflictError,
    ContextReplacedError,
    CtxError,
    CursorExpiredError,
    EngineError,
    FieldError,
    MessageTypeError,
    NotFoundError,
    OutcomeUnknownError,
    PayloadTooLarge,
    SchemaError,
    ServerError,
    ValidationError,
    VersionError,
    WrongTypeError,
)
from ctxlink._feed import ChangeBatch
from ctxlink._history import Change
from ctxlink._instr import Await, Cmd, Instr, LoadScript, Op, Sleep, Write
from ctxlink._protocol import MODULE, map_error
from ctxlink._registry import SchemaInfo
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, send_write_async
from ctxlink._settle import UPDATE_TIMEOUT
from ctxlink._telemetry import check_stale_after
from ctxlink._types import Backoff, CasResult, M, Snapshot, Updated
from ctxlink._wait import check_wait_args, op_wait_module, socket_timeout, wait_lua_async

T = TypeVar("T")

# the same public names as ctxlink (apart from the embedded test server)
__all__ = [
    "connect",
    "Store",
    "Snapshot",
    "CasResult",
    "Updated",
    "Backoff",
    "SchemaInfo",
    "Change",
    "ChangeBatch",
    "CtxError",
    "CursorExpiredError",
    "ServerError",
    "ValidationError",
    "SchemaError",
    "VersionError",
    "PayloadTooLarge",
    "WrongTypeError",
    "FieldError",
    "ConflictError",
    "ContextReplacedError",
    "OutcomeUnknownError",
    "NotFoundError",
    "EngineError",
    "ArgumentError",
    "MessageTypeError",
]

EngineName = Literal["auto", "module", "lua"]


async def _run(client: Any, op: Op[T]) -> T:
    """Runs one operation on ``client`` (see :class:`ctxlink._dispatch.Runner`)."""
    run = Runner(op)
    while run.instr is not None:
        try:
            reply = await _carry_out(client, run.instr)
        except Exception as exc:
            run.fail(exc)
            continue
        run.reply(reply)
    return run.result


async def _carry_out(client: Any, instr: Instr) -> Any:
    if type(instr) is Cmd:
        if instr.nodes is not None:
            return await _on_nodes(client, instr)
        return await client.execute_command(*instr.args)
    if type(instr) is Write:  # once, on a connection of ours: no redis-py retry
        return await send_write_async(client, instr.key, instr.args)
    if type(instr) is LoadScript:
        return await client.script_load(instr.source)
    if type(instr) is Sleep:
        await asyncio.sleep(instr.seconds)
        return None
    if type(instr) is Await:  # update()'s async function
        return await instr.awaitable
    raise TypeError(f"unknown instruction {instr!r}")  # pragma: no cover


async def _on_nodes(client: Any, instr: Cmd) -> Any:
    """A keyless command on a Redis Cluster, sent to the node(s) directly: redis-py's cluster
    router refuses command names with two dots (CTX.SCHEMA.SET); all must agree."""
    assert instr.nodes is not None
    await client.initialize()  # the asyncio cluster client discovers lazily
    results: list[tuple[str, Any]] = []
    for node in cluster_targets(client, instr.nodes):
        try:
            results.append((node.name, await node.execute_command(*instr.args)))
        except RedisError as exc:
            results.append((node.name, node_result(exc)))
    return merge_node_replies(results)


class Store(StoreBase):
    """Async twin of :class:`ctxlink.Store`; every method is awaitable, same semantics.

    A Store built from a URL owns its client: ``await store.close()`` (or leaving ``async
    with``) closes it; a Store given a client never closes it.
    """

    _sync = False
    _name = "ctxlink.aio.Store"

    async def _call(self, call: Call[T]) -> T:
        if type(call) is not Fast:
            return await _run(self._client, call)  # type: ignore[arg-type]
        client = self._client
        args, parse, key, resend = call
        try:
            if key is None:
                reply = await client.execute_command(*args)
            else:
                reply = await send_write_async(client, key, args)
        except ResponseError as exc:
            raise map_error(exc)  # noqa: B904 - map_error sets __cause__ (or returns exc)
        except TRANSPORT_ERRORS as exc:
            if resend is None:
                raise
            sent = not isinstance(exc, WriteNotSent)  # else nothing went out
            return await _run(client, resend(sent))
        return parse(reply)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Async :meth:`ctxlink.Store.close`: closes the client when the Store created it from a
        URL; else does nothing."""
        if self._owns:
            await _close_client(self._client)

    aclose = close

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    # -- contexts --------------------------------------------------------------------------
    async def get(self, key: Union[str, bytes]) -> Optional[Snapshot]:
        """Async :meth:`ctxlink.Store.get`: the context at ``key``, or None. One round trip."""
        return await self._call(self._get(key))

    async def cas(
        self,
        key: Union[str, bytes],
        expected_version: int,
        payload: Union[bytes, Message],
        *,
        schema: Optional[str] = None,
        by: Optional[str] = None,
        write_id: Optional[Union[str, bytes]] = None,
        ttl: Optional[float] = None,
        incarnation: Optional[str] = None,
    ) -> CasResult:
        """Async :meth:`ctxlink.Store.cas`: writes ``payload`` if the stored version is
        ``expected_version`` (0 = create)."""
        return await self._call(self._cas(key, expected_version, payload, schema, by, write_id,
                                          ttl, incarnation))

    async def append(
        self,
        key: Union[str, bytes],
        field: str,
        items: Iterable[Any],
        *,
        reads: Sequence[str] = (),
        patch: Optional[Message] = None,
        base_version: Optional[int] = None,
        schema: Optional[str] = None,
        message_class: Optional[type[Message]] = None,
        by: Optional[str] = None,
        write_id: Optional[Union[str, bytes]] = None,
        ttl: Optional[float] = None,
        incarnation: Optional[str] = None,
    ) -> CasResult:
        """Async :meth:`ctxlink.Store.append`: appends ``items`` to the repeated field ``field``."""
        return await _run(self._client, self._append(key, field, items, message_class, reads, patch,
                                       base_version, schema, by, write_id, ttl, incarnation))

    async def delete(
        self,
        key: Union[str, bytes],
        expected_version: int,
        *,
        write_id: Optional[Union[str, bytes]] = None,
        incarnation: Optional[str] = None,
    ) -> CasResult:
        """Async :meth:`ctxlink.Store.delete`: deletes the context if its version is
        ``expected_version``."""
        return await _run(self._client, self._delete(key, expected_version, write_id,
                                                      incarnation))

    async def wait(
        self, key: Union[str, bytes], after_version: int, timeout: Optional[float] = None
    ) -> Optional[Snapshot]:
        """Async :meth:`ctxlink.Store.wait`: the Snapshot once the version is above
        ``after_version``, None at the timeout, :class:`NotFoundError` when deleted meanwhile."""
        t = check_wait_args(key, after_version, timeout)
        if self._st.engine == MODULE:
            st = socket_timeout(self._client)
            op = op_wait_module(self._st, key, after_version, t, st / 2 if st else None)
            return await _run(self._client, op)
        return await wait_lua_async(
            self._client, self._st, key, after_version, t, lambda: self.get(key))

    async def update(
        self,
        key: Union[str, bytes],
        fn: Callable[[M], Any],
        *,
        message_class: type[M],
        schema: Optional[str] = None,
        by: Optional[str] = None,
        reads: Optional[Sequence[str]] = None,
        retries: Optional[int] = None,
        timeout: Optional[float] = UPDATE_TIMEOUT,
        backoff: Optional[Backoff] = None,
        default: Optional[Callable[[], Any]] = None,
        ttl: Optional[float] = None,
    ) -> Updated[M]:
        """Async :meth:`ctxlink.Store.update` (``fn`` and ``default`` may be ``async def``)."""
        return await _run(self._client, self._update(
            key, fn, message_class, schema, by, reads, retries, timeout, backoff, default, ttl))

    async def touch(self, key: Union[str, bytes], ttl: float) -> bool:
        """Async :meth:`ctxlink.Store.touch`: sets the context's time to live (seconds > 0);
        False when there is no context."""
        return await _run(self._client, self._touch(key, ttl))

    async def migrate(
        self,
        key: Union[str, bytes],
        message_class: type[M],
        fn: Optional[Callable[[M], Any]] = None,
        *,
        by: Optional[str] = None,
        retries: Optional[int] = None,
        timeout: Optional[float] = UPDATE_TIMEOUT,
    ) -> Updated[M]:
        """Async :meth:`ctxlink.Store.migrate` (``fn`` may be ``async def``)."""
        return await _run(self._client, self._migrate(key, message_class, fn, by, retries, timeout))

    # -- schema registry -------------------------------------------------------------------
    async def register_schema(
        self,
        name: str,
        message_class_or_descriptor_set: Any,
        *,
        force: bool = False,
        version_field: Optional[str] = None,
        message_type: Optional[str] = None,
        compat: Optional[str] = None,
        history: Optional[int] = None,
        history_payloads: Optional[bool] = None,
        feed: Optional[int] = None,
        window: Optional[int] = None,
    ) -> int:
        """Async :meth:`ctxlink.Store.register_schema`."""
        return await _run(self._client, self._register_schema(
            name, message_class_or_descriptor_set, force, version_field, message_type, compat,
            history, history_payloads, feed, window))

    async def schemas(self) -> list[str]:
        """Async :meth:`ctxlink.Store.schemas`."""
        return await _run(self._client, self._schemas())

    async def get_schema(self, name: str) -> Optional[SchemaInfo]:
        """Async :meth:`ctxlink.Store.get_schema`."""
        return await _run(self._client, self._get_schema(name))

    async def drop_schema(self, name: str) -> bool:
        """Async :meth:`ctxlink.Store.drop_schema`."""
        return await _run(self._client, self._drop_schema(name))

    # -- history ---------------------------------------------------------------------------
    async def history(
        self,
        key: Union[str, bytes],
        since_version: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> list[Change]:
        """Async :meth:`ctxlink.Store.history`: the changes kept for ``key``, oldest first."""
        return await _run(self._client, self._history(key, since_version, limit))

    # -- change feed -------------------------------------------------------------------------
    async def changes(
        self,
        schema: str,
        cursor: Optional[str] = None,
        count: int = 100,
        block_ms: Optional[int] = None,
    ) -> ChangeBatch:
        """Async :meth:`ctxlink.Store.changes`: the schema's change feed after ``cursor``."""
        st = socket_timeout(self._client)
        return await _run(self._client, self._changes(schema, cursor, count, block_ms,
                                                      st / 2 if st else None))


async def _close_client(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close  # redis-py >= 5.0.1: aclose
    await close()


async def connect(
    client: Union[Any, str],
    *,
    engine: EngineName = "auto",
    max_payload_bytes: int = 1048576,
    max_depth: int = 32,
    unknown_fields: Literal["reject", "allow"] = "reject",
    max_schema_bytes: int = 4194304,
    local_check: bool = False,
    stale_after_ms: Optional[float] = None,
) -> Store:
    """Async :func:`ctxlink.connect` for ``redis.asyncio.Redis`` / ``RedisCluster``, or a
    ``redis://``, ``rediss://`` or ``unix://`` URL (the Store then owns a new
    ``redis.asyncio.Redis``). A synchronous client raises ``TypeError``: use
    :func:`ctxlink.connect`. ``stale_after_ms``: as there (a warning on the ``ctxlink`` logger
    for an ``update`` staler than that)."""
    stale = check_stale_after(stale_after_ms)  # before anything is opened
    client, owned = open_client(client, asyncio=True)
    options = dict(max_payload_bytes=max_payload_bytes, max_depth=max_depth,
                   unknown_fields=unknown_fields, max_schema_bytes=max_schema_bytes,
                   stale_after_ms=stale)
    try:
        state = await _run(client, op_connect(is_cluster(client), engine, options, local_check))
    except BaseException:
        if owned:
            await _close_client(client)
        raise
    return Store(client, state, owned)


def __dir__() -> list[str]:
    """``dir(ctxlink.aio)``: the public names only."""
    return list(__all__)
