"""The asyncio twin of :mod:`ctxlink`: same names and arguments, for ``redis.asyncio`` clients.

    store = await ctxlink.aio.connect(redis.asyncio.Redis(...))
    snap = await store.get("order:1")

    async with await ctxlink.aio.connect("redis://localhost:6379") as store:  # owns its client
        ...

``update``'s function (and ``default``) may be ``async def`` here.

Everything but the awaiting is shared with the sync front end (:mod:`ctxlink._instr`).
"""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar, Union

from google.protobuf.message import Message
from redis.exceptions import RedisError, ResponseError

from ctxlink._client import (
    choose_engine,
    is_cluster,
    make_state,
    op_check_protocol,
    op_detect,
    open_client,
)
from ctxlink._cluster import cluster_targets, merge_node_replies
from ctxlink._instr import Await, Cmd, LoadScript, Op, Sleep, Write
from ctxlink._precheck import enable_local_check
from ctxlink._protocol import MODULE, cas_command, map_error, parse_state, parse_write
from ctxlink._registry import (
    SchemaInfo,
    op_drop_schema,
    op_get_schema,
    op_register_schema,
    op_schemas,
)
from ctxlink._settle import UPDATE_TIMEOUT
from ctxlink._state import State
from ctxlink._update import op_update
from ctxlink._write import MAX_EXPECTED_MODULE, new_write_id, op_cas, op_delete, op_get
from ctxlink._exceptions import *  # noqa: F401,F403  (same names as ctxlink)
from ctxlink._exceptions import __all__ as _exc_all
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, send_write_async
from ctxlink._types import Backoff, CasResult, M, Snapshot, Updated, new_cas_result

T = TypeVar("T")

# the same names as ctxlink (its exception classes, not the helpers of _exceptions)
__all__ = [
    "Store", "connect", "Snapshot", "CasResult", "Updated", "SchemaInfo", "Backoff",
    *(name for name in _exc_all if name[0].isupper() and name != "EXCEPTION_CLASSES"),
]

EngineName = Literal["auto", "module", "lua"]


async def _run(client: Any, op: Op[T]) -> T:
    reply: Any = None
    error: Optional[BaseException] = None
    while True:
        try:
            instr = op.send(reply) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if type(instr) is Cmd:
                if instr.nodes is not None:  # keyless command on a Redis Cluster
                    # sent to the node(s) directly: redis-py's cluster router refuses
                    # command names with two dots (CTX.SCHEMA.SET); all must agree
                    await client.initialize()  # the asyncio cluster client discovers lazily
                    results: list[tuple[str, Any]] = []
                    for node in cluster_targets(client, instr.nodes):
                        try:
                            results.append((node.name, await node.execute_command(*instr.args)))
                        except ResponseError as exc:
                            results.append((node.name, map_error(exc)))
                        except RedisError as exc:
                            results.append((node.name, exc))
                    reply = merge_node_replies(results)
                else:
                    reply = await client.execute_command(*instr.args)
            elif type(instr) is Write:  # once, on a connection of ours: no redis-py retry
                try:
                    reply = await send_write_async(client, instr.key, instr.args)
                except TRANSPORT_ERRORS as exc:  # the reply was lost: the op decides
                    error = exc
            elif type(instr) is LoadScript:
                reply = await client.script_load(instr.source)
            elif type(instr) is Sleep:
                await asyncio.sleep(instr.seconds)
            elif type(instr) is Await:  # update()'s async function
                reply = await instr.awaitable
            else:  # pragma: no cover
                raise TypeError(f"unknown instruction {instr!r}")
        except ResponseError as exc:
            error = map_error(exc)
        except TRANSPORT_ERRORS as exc:  # a read on the way to a write: the op settles it
            if not getattr(instr, "settle", False):
                raise
            error = exc


_MAX_EXPECTED = MAX_EXPECTED_MODULE


class Store:
    """Async twin of :class:`ctxlink.Store`; every method is awaitable, same semantics.

    A Store built from a URL owns its client: ``await store.close()`` (or leaving ``async
    with``) closes it; a Store given a client never closes it.
    """

    def __init__(self, client: Any, state: State, owns_client: bool = False) -> None:
        self._client = client
        self._st = state
        self._owns = owns_client
        # module engine: get/cas skip the generic operation machinery (same replies, same errors)
        self._fast = state.engine == MODULE

    @property
    def engine(self) -> str:
        return self._st.engine

    @property
    def client(self) -> Any:
        return self._client

    def __repr__(self) -> str:
        return f"<ctxlink.aio.Store engine={self.engine!r} client={self._client!r}>"

    async def close(self) -> None:
        """Closes the client when the Store created it from a URL; else does nothing."""
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

    async def get(self, key: Union[str, bytes]) -> Optional[Snapshot]:
        if not self._fast or (type(key) is not str and type(key) is not bytes):
            return await _run(self._client, op_get(self._st, key))
        try:
            reply = await self._client.execute_command("CTX.GET", key)
        except ResponseError as exc:
            raise map_error(exc)  # map_error sets __cause__
        return parse_state(reply)

    async def cas(
        self,
        key: Union[str, bytes],
        expected_version: int,
        payload: Union[bytes, Message],
        *,
        schema: Optional[str] = None,
        by: Optional[str] = None,
        write_id: Optional[Union[str, bytes]] = None,
    ) -> CasResult:
        if (
            not self._fast
            or type(payload) is not bytes
            or type(expected_version) is not int
            or not 0 <= expected_version <= _MAX_EXPECTED
            or self._st.local is not None
            or write_id is not None
            or (type(key) is not str and type(key) is not bytes)
            or (by is not None and (type(by) is not str or len(by) > 16383))
        ):
            return await _run(
                self._client,
                op_cas(self._st, key, expected_version, payload, schema, by, write_id),
            )
        wid = new_write_id()
        args = cas_command(key, expected_version, payload, schema, by, wid)
        try:
            reply = await send_write_async(self._client, key, args)
        except ResponseError as exc:
            raise map_error(exc)  # map_error sets __cause__
        except TRANSPORT_ERRORS as exc:  # re-send the same write (same id), settled there
            sent = not isinstance(exc, WriteNotSent)  # else nothing went out
            return await _run(
                self._client,
                op_cas(self._st, key, expected_version, payload, schema, by, wid, sent),
            )
        if type(reply) is int:
            return new_cas_result((True, reply, None, False, ()))
        return parse_write(reply)

    async def delete(
        self,
        key: Union[str, bytes],
        expected_version: int,
        *,
        write_id: Optional[Union[str, bytes]] = None,
    ) -> CasResult:
        return await _run(
            self._client, op_delete(self._st, key, expected_version, write_id)
        )

    async def update(
        self,
        key: Union[str, bytes],
        fn: Callable[[M], Optional[M]],
        *,
        message_class: type[M],
        schema: Optional[str] = None,
        by: Optional[str] = None,
        reads: Optional[Sequence[str]] = None,
        retries: Optional[int] = None,
        timeout: Optional[float] = UPDATE_TIMEOUT,
        backoff: Optional[Backoff] = None,
        default: Optional[Callable[[], M]] = None,
    ) -> Updated[M]:
        """Async :meth:`ctxlink.Store.update` (``fn`` and ``default`` may be ``async def``)."""
        return await _run(
            self._client,
            op_update(self._st, key, fn, message_class, schema, by, retries, default,
                            reads=reads, timeout=timeout, backoff=backoff),
        )

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
        return await _run(
            self._client,
            op_update(
                self._st, key, fn, message_class, None, by, retries, None, drop_unknown=True,
                timeout=timeout,
            ),
        )

    async def register_schema(
        self,
        name: str,
        message_class_or_descriptor_set: Any,
        *,
        force: bool = False,
        version_field: Optional[str] = None,
        message_type: Optional[str] = None,
    ) -> int:
        return await _run(
            self._client,
            op_register_schema(
                self._st, name, message_class_or_descriptor_set, force, version_field, message_type
            ),
        )

    async def schemas(self) -> list[str]:
        return await _run(self._client, op_schemas(self._st))

    async def get_schema(self, name: str) -> Optional[SchemaInfo]:
        return await _run(self._client, op_get_schema(self._st, name))

    async def drop_schema(self, name: str) -> bool:
        return await _run(self._client, op_drop_schema(self._st, name))


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
) -> Store:
    """Async :func:`ctxlink.connect` for ``redis.asyncio.Redis`` / ``RedisCluster``, or a
    ``redis://``, ``rediss://`` or ``unix://`` URL (the Store then owns a new
    ``redis.asyncio.Redis``). A synchronous client raises ``TypeError``: use
    :func:`ctxlink.connect`."""
    client, owned = open_client(client, asyncio=True)
    try:
        store = await _connect(client, engine, max_payload_bytes, max_depth, unknown_fields,
                               max_schema_bytes, local_check)
    except BaseException:
        if owned:
            await _close_client(client)
        raise
    store._owns = owned
    return store


async def _connect(
    client: Any,
    engine: EngineName,
    max_payload_bytes: int,
    max_depth: int,
    unknown_fields: Literal["reject", "allow"],
    max_schema_bytes: int,
    local_check: bool,
) -> Store:
    has_module: Optional[bool] = None
    if engine != "lua":
        has_module = await _run(client, op_detect(is_cluster(client)))
    chosen = choose_engine(engine, has_module)
    if chosen == MODULE:
        await _run(client, op_check_protocol(is_cluster(client)))
    options = dict(
        max_payload_bytes=max_payload_bytes,
        max_depth=max_depth,
        unknown_fields=unknown_fields,
        max_schema_bytes=max_schema_bytes,
    )
    state = make_state(chosen, is_cluster(client), options)
    if local_check:  # opt-in: check payloads with the cffi core first (server only if not built)
        enable_local_check(state)
    return Store(client, state)
