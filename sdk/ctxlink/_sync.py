"""The synchronous front end: runs the operations of :mod:`ctxlink._instr` on a redis-py client."""

from __future__ import annotations

import inspect
import time
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar, Union

import redis
from google.protobuf.message import Message
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, send_write
from ctxlink._types import Backoff, CasResult, M, Snapshot, Updated, new_cas_result

T = TypeVar("T")

__all__ = ["Store", "connect"]

EngineName = Literal["auto", "module", "lua"]

_ASYNC_FN = (
    "update() got an async function (or one returning an awaitable): the sync Store cannot "
    "await it; use ctxlink.aio (`await store.update(...)` on `await ctxlink.aio.connect(...)`)"
)
_MAX_EXPECTED = MAX_EXPECTED_MODULE
_ASYNC_FLAGS = inspect.CO_COROUTINE


def _is_async(fn: Any) -> bool:
    """An ``async def`` function (cheap test; other awaitables are caught when fn returns one)."""
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _ASYNC_FLAGS)


def _run(client: Any, op: Op[T]) -> T:
    """Drives one operation: sends what it yields, feeds back replies or mapped errors."""
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
                    results: list[tuple[str, Any]] = []
                    for node in cluster_targets(client, instr.nodes):
                        try:
                            node_client = client.get_redis_connection(node)
                            results.append((node.name, node_client.execute_command(*instr.args)))
                        except ResponseError as exc:
                            results.append((node.name, map_error(exc)))
                        except RedisError as exc:
                            results.append((node.name, exc))
                    reply = merge_node_replies(results)
                else:
                    reply = client.execute_command(*instr.args)
            elif type(instr) is Write:  # once, on a connection of ours: no redis-py retry
                try:
                    reply = send_write(client, instr.key, instr.args)
                except TRANSPORT_ERRORS as exc:  # the reply was lost: the op decides
                    error = exc
            elif type(instr) is LoadScript:
                reply = client.script_load(instr.source)
            elif type(instr) is Sleep:
                time.sleep(instr.seconds)
            elif type(instr) is Await:  # an async function given to the sync front end
                close = getattr(instr.awaitable, "close", None)
                if close is not None:
                    close()  # no "coroutine was never awaited" warning
                error = TypeError(_ASYNC_FN)
            else:  # pragma: no cover
                raise TypeError(f"unknown instruction {instr!r}")
        except ResponseError as exc:
            error = map_error(exc)
        except TRANSPORT_ERRORS as exc:  # a read on the way to a write: the op settles it
            if not getattr(instr, "settle", False):
                raise
            error = exc


_recorder: Any
try:  # redis-py >= 6: OpenTelemetry metrics, recorded by execute_command when enabled
    from redis.observability import recorder as _recorder
except ImportError:  # pragma: no cover - older redis-py
    _recorder = None


def _metrics_off() -> bool:
    if _recorder is None:  # pragma: no cover
        return True
    if not hasattr(_recorder, "_metrics_collector") or _recorder._metrics_collector is not None:
        return False
    make = getattr(_recorder, "_get_or_create_collector", None)
    return make is not None and make() is None


def _plain_client(client: Any) -> bool:
    """A stock ``redis.Redis`` (no subclass overriding the command path) on a plain pool."""
    if not isinstance(client, redis.Redis) or is_cluster(client):
        return False
    cls, base = type(client), redis.Redis
    for name in ("execute_command", "_execute_command", "parse_response"):
        if getattr(cls, name, None) is not getattr(base, name, None):
            return False
    try:
        major = int(redis.__version__.split(".")[0])
    except ValueError:  # pragma: no cover
        return False
    pool = getattr(client, "connection_pool", None)
    return (
        major >= 6
        and isinstance(pool, redis.ConnectionPool)
        and getattr(pool, "cache", None) is None  # client-side caching: through redis-py
        and hasattr(getattr(pool, "connection_class", None), "should_reconnect")
        and _metrics_off()
    )


class _Direct:
    """Sends one data command on a pooled connection without ``execute_command``'s per-call
    machinery (retry closure, option handling, metric hooks that are off anyway).

    Only built for a stock ``redis.Redis`` (see :func:`_plain_client`); each call still falls back
    to ``client.execute_command`` when the client holds a single connection, when its
    ``execute_command`` was replaced on the instance, when a response callback is registered for
    the command, or when redis-py's metrics got enabled. Connection errors are handled as redis-py
    does: the connection is closed and, unless the client's retry policy allows no retries, the
    command goes through ``execute_command`` (and its retry policy) again.
    """

    __slots__ = ("_client", "_pool")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pool = client.connection_pool

    def __call__(self, args: tuple[Any, ...]) -> Any:
        client = self._client
        if (
            client.connection is not None
            or "execute_command" in client.__dict__
            or args[0] in client.response_callbacks
            or (_recorder is not None and _recorder._metrics_collector is not None)
        ):
            return client.execute_command(*args)
        pool = self._pool
        conn = pool.get_connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except (RedisConnectionError, RedisTimeoutError):
            conn.disconnect()
            if conn.retry.get_retries() == 0:
                raise
        finally:
            try:
                if conn.should_reconnect():
                    conn.disconnect()
                    conn.connect()
            finally:
                pool.release(conn)
        return client.execute_command(*args)  # the retries, by redis-py's own path


def _sender(client: Any, state: State) -> Optional[Callable[[tuple[Any, ...]], Any]]:
    """The module engine's hot-path sender, or None (Lua engine: the generic path)."""
    if state.engine != MODULE:
        return None
    if _plain_client(client):
        return _Direct(client)

    def send(args: tuple[Any, ...]) -> Any:
        return client.execute_command(*args)

    return send


class Store:
    """Contexts on one Redis deployment, through the module or the Lua scripts.

    Build it with :func:`connect`. Thread-safe: share one Store (and one client) between threads.
    A Store built from a URL owns its client: :meth:`close` (or leaving ``with``) closes it; a
    Store given a client never closes it.
    """

    def __init__(self, client: Any, state: State, owns_client: bool = False) -> None:
        self._client = client
        self._st = state
        self._owns = owns_client
        # module engine: get/cas skip the generic operation machinery (same replies, same errors)
        self._send = _sender(client, state)

    @property
    def engine(self) -> str:
        """``"module"`` (CTX.* commands) or ``"lua"`` (scripts from ``lua/``)."""
        return self._st.engine

    @property
    def client(self) -> Any:
        return self._client

    def __repr__(self) -> str:
        return f"<ctxlink.Store engine={self.engine!r} client={self._client!r}>"

    def close(self) -> None:
        """Closes the client when the Store created it from a URL; else does nothing."""
        if self._owns:
            self._client.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- contexts --------------------------------------------------------------------------
    def get(self, key: Union[str, bytes]) -> Optional[Snapshot]:
        """The context at ``key``, or None. One round trip."""
        send = self._send
        if send is None or (type(key) is not str and type(key) is not bytes):
            return _run(self._client, op_get(self._st, key))
        try:
            reply = send(("CTX.GET", key))
        except ResponseError as exc:
            raise map_error(exc)  # map_error sets __cause__
        return parse_state(reply)

    def cas(
        self,
        key: Union[str, bytes],
        expected_version: int,
        payload: Union[bytes, Message],
        *,
        schema: Optional[str] = None,
        by: Optional[str] = None,
        write_id: Optional[Union[str, bytes]] = None,
    ) -> CasResult:
        """Writes ``payload`` if the stored version is ``expected_version`` (0 = create).

        ``payload`` is the encoded bytes (whose version field must already be expected + 1) or a
        message, whose version field the SDK sets to expected + 1 on a copy (the field named by the
        schema; without ``schema=`` the SDK asks the context for it once per key). A conflict is not an
        error: ``ok`` is False and ``current`` holds the state the server has now.

        ``write_id`` (1 to 64 bytes; a fresh random one when not given) makes the write
        idempotent: if its reply is lost the SDK re-sends it (up to 3 times) and the server,
        which remembers the ids of each context's last 16 writes, does not apply it twice:
        ``replayed`` is then True. When that cannot be settled, :class:`OutcomeUnknownError`.
        The id *is* the write: a write whose id is in the window is answered ``replayed`` and not
        applied, whatever its payload, so never reuse an id for another change.
        """
        if (
            self._send is None
            or type(payload) is not bytes
            or type(expected_version) is not int
            or not 0 <= expected_version <= _MAX_EXPECTED
            or self._st.local is not None
            or write_id is not None
            or (type(key) is not str and type(key) is not bytes)
            or (by is not None and (type(by) is not str or len(by) > 16383))
        ):
            return _run(
                self._client,
                op_cas(self._st, key, expected_version, payload, schema, by, write_id),
            )
        wid = new_write_id()
        args = cas_command(key, expected_version, payload, schema, by, wid)
        try:
            reply = send_write(self._client, key, args)
        except ResponseError as exc:
            raise map_error(exc)  # map_error sets __cause__
        except TRANSPORT_ERRORS as exc:  # re-send the same write (same id), settled there
            sent = not isinstance(exc, WriteNotSent)  # else nothing went out
            return _run(
                self._client,
                op_cas(self._st, key, expected_version, payload, schema, by, wid, sent),
            )
        if type(reply) is int:
            return new_cas_result((True, reply, None, False, ()))
        return parse_write(reply)

    def delete(
        self,
        key: Union[str, bytes],
        expected_version: int,
        *,
        write_id: Optional[Union[str, bytes]] = None,
    ) -> CasResult:
        """Deletes the context if its version is ``expected_version``; ``ok`` False on conflict.

        A delete whose reply was lost is re-sent; if the re-sent one finds no context the result
        is ``ok`` with ``replayed`` True: the context is gone either way."""
        return _run(self._client, op_delete(self._st, key, expected_version, write_id))

    def update(
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
        """Read-modify-write with optimistic concurrency, applied exactly once.

        ``fn`` receives a freshly decoded message and changes it in place (or returns a new message
        of the same type, which is then written; any other return value is ignored);
        it must be a plain function (an ``async def`` one needs :mod:`ctxlink.aio`).
        ``message_class`` must be the schema's message type (else :class:`MessageTypeError`).
        On a conflict it is called again at once with the state the conflict reply carried (no
        extra GET); after further conflicts the SDK backs off with jitter (``backoff``, default
        ``Backoff(base=0.001, cap=0.05)``) and reads the context again first. It gives
        up with :class:`ConflictError` (the last state, the changed fields) after ``retries``
        conflicts (default None: no limit) or when ``timeout`` seconds (default 30; None: none)
        have passed. When the key is absent the context is created from ``default()``
        (``schema`` required), else :class:`NotFoundError`. Returns :class:`Updated`
        (``version, message = store.update(...)``).

        ``reads=None`` writes the whole context and conflicts with any other write; it writes even
        when ``fn`` changed nothing, which confirms that the state ``fn`` decided on is current. A list of
        top-level field names (``[]`` too) makes it a field patch: only the fields ``fn`` changed
        are sent (``CTX.PATCH``), and it conflicts only when another writer changed one of those
        or one of ``reads`` since the state ``fn`` saw; the server merges it into the current
        state otherwise. Nothing changed: nothing is written.

        Every attempt carries its own write id. When a reply is lost (timeout, reset), the same
        attempt is re-sent, never ``fn`` called again; if that cannot settle whether it landed,
        :class:`OutcomeUnknownError`.
        """
        if _is_async(fn) or (default is not None and _is_async(default)):
            raise TypeError(_ASYNC_FN)
        return _run(
            self._client,
            op_update(self._st, key, fn, message_class, schema, by, retries, default,
                            reads=reads, timeout=timeout, backoff=backoff),
        )

    def migrate(
        self,
        key: Union[str, bytes],
        message_class: type[M],
        fn: Optional[Callable[[M], Optional[M]]] = None,
        *,
        by: Optional[str] = None,
        retries: Optional[int] = None,
        timeout: Optional[float] = UPDATE_TIMEOUT,
    ) -> Updated[M]:
        """Rewrites a context so that it validates against its schema's newest revision, after
        an incompatible change registered with ``force=True`` (docs/PROTOCOL.md, "Migrating
        contexts after a forced schema change").

        The stored payload is parsed leniently with ``message_class`` (the new revision's class):
        fields it does not know, or whose wire type changed, are dropped. ``fn`` may then fill in
        what was lost (in place, or return a new message). The result is written with
        compare-and-set, retried on conflicts like :meth:`update`. :class:`NotFoundError` when
        there is no context at ``key``.
        """
        if fn is not None and _is_async(fn):
            raise TypeError(_ASYNC_FN.replace("update()", "migrate()"))
        return _run(
            self._client,
            op_update(
                self._st, key, fn, message_class, None, by, retries, None, drop_unknown=True,
                timeout=timeout,
            ),
        )

    # -- schema registry -------------------------------------------------------------------
    def register_schema(
        self,
        name: str,
        message_class_or_descriptor_set: Any,
        *,
        force: bool = False,
        version_field: Optional[str] = None,
        message_type: Optional[str] = None,
    ) -> int:
        """Registers (or re-registers) a schema; returns its revision.

        Accepts a generated/message class (or instance, or its ``Descriptor``), whose descriptor
        set is built with every transitive import, or a serialized ``FileDescriptorSet`` (then
        ``message_type`` names the message unless the set defines exactly one).
        """
        return _run(
            self._client,
            op_register_schema(
                self._st, name, message_class_or_descriptor_set, force, version_field, message_type
            ),
        )

    def schemas(self) -> list[str]:
        """Registered schema names, sorted."""
        return _run(self._client, op_schemas(self._st))

    def get_schema(self, name: str) -> Optional[SchemaInfo]:
        """The registry entry (message type, descriptor set, revision), or None."""
        return _run(self._client, op_get_schema(self._st, name))

    def drop_schema(self, name: str) -> bool:
        """Removes a schema; True when there was one."""
        return _run(self._client, op_drop_schema(self._st, name))


def connect(
    client: Union[Any, str],
    *,
    engine: EngineName = "auto",
    max_payload_bytes: int = 1048576,
    max_depth: int = 32,
    unknown_fields: Literal["reject", "allow"] = "reject",
    max_schema_bytes: int = 4194304,
    local_check: bool = False,
) -> Store:
    """A :class:`Store` on a redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``)
    or on a ``redis://``, ``rediss://`` or ``unix://`` URL.

    From a URL the Store builds a ``redis.Redis`` it owns (``with ctxlink.connect(url) as
    store:`` or ``store.close()`` closes it); for a cluster pass a ``RedisCluster``. A
    ``redis.asyncio`` client raises ``TypeError``: use :func:`ctxlink.aio.connect`.

    ``engine="auto"`` asks the server whether it knows ``CTX.GET`` (no ACL right needed, see
    docs/PROTOCOL.md "ACL") and uses the module when it is loaded, else the Lua scripts. The limits are those the Lua engine enforces (the module uses
    its own load-time arguments); keep them equal to the module's on mixed deployments.

    ``local_check=True`` makes ``cas`` check the payload first with the module's own validation
    core (the optional cffi extension ``ctxlink._ctxcore``, built by ``make ext``) against the
    schema's descriptor set, fetched once; a payload it rejects raises the exception the server
    would raise (``ValidationError``, ``PayloadTooLarge``, ``VersionError``) and is not sent. The
    limits are the module's (read from ``INFO ctx``) or, on the Lua engine, the ones above.
    Without the extension the option does nothing: the server validates, as always.
    """
    client, owned = open_client(client, asyncio=False)
    try:
        store = _connect(client, engine, max_payload_bytes, max_depth, unknown_fields,
                         max_schema_bytes, local_check)
    except BaseException:
        if owned:
            client.close()
        raise
    store._owns = owned
    return store


def _connect(
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
        has_module = _run(client, op_detect(is_cluster(client)))
    chosen = choose_engine(engine, has_module)
    if chosen == MODULE:
        _run(client, op_check_protocol(is_cluster(client)))
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
