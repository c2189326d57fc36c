"""The synchronous front end: carries out the instructions of the operations (and the module
engine's :class:`~ctxlink._dispatch.Fast` commands) on a redis-py client. What each call does is
described once, in :mod:`ctxlink._dispatch`, for this and the asyncio front end."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Callable, Iterable, Literal, Optional, Sequence, TypeVar, Union

import redis
from google.protobuf.message import Message
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ctxlink._client import is_cluster, open_client
from ctxlink._cluster import cluster_targets, merge_node_replies
from ctxlink._dispatch import (
    ASYNC_FN,
    Call,
    Fast,
    Runner,
    StoreBase,
    node_result,
    op_connect,
)
from ctxlink._feed import ChangeBatch
from ctxlink._history import Change
from ctxlink._instr import Await, Cmd, Instr, LoadScript, Op, Sleep, Write
from ctxlink._protocol import MODULE, map_error
from ctxlink._registry import SchemaInfo
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, send_write
from ctxlink._settle import UPDATE_TIMEOUT
from ctxlink._state import State
from ctxlink._telemetry import check_stale_after
from ctxlink._types import Backoff, CasResult, M, Snapshot, Updated
from ctxlink._wait import check_wait_args, op_wait_module, socket_timeout, wait_lua_sync

T = TypeVar("T")

__all__ = ["Store", "connect"]

EngineName = Literal["auto", "module", "lua"]


def _run(client: Any, op: Op[T]) -> T:
    """Runs one operation on ``client`` (see :class:`ctxlink._dispatch.Runner`)."""
    run = Runner(op)
    while run.instr is not None:
        try:
            reply = _carry_out(client, run.instr)
        except Exception as exc:
            run.fail(exc)
            continue
        run.reply(reply)
    return run.result


def _carry_out(client: Any, instr: Instr) -> Any:
    if type(instr) is Cmd:
        if instr.nodes is not None:
            return _on_nodes(client, instr)
        return client.execute_command(*instr.args)
    if type(instr) is Write:  # once, on a connection of ours: no redis-py retry
        return send_write(client, instr.key, instr.args)
    if type(instr) is LoadScript:
        return client.script_load(instr.source)
    if type(instr) is Sleep:
        time.sleep(instr.seconds)
        return None
    if type(instr) is Await:  # an async function given to the sync front end
        close = getattr(instr.awaitable, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" warning
        raise TypeError(ASYNC_FN)
    raise TypeError(f"unknown instruction {instr!r}")  # pragma: no cover


def _on_nodes(client: Any, instr: Cmd) -> Any:
    """A keyless command on a Redis Cluster, sent to the node(s) directly: redis-py's cluster
    router refuses command names with two dots (CTX.SCHEMA.SET); all must agree."""
    assert instr.nodes is not None
    results: list[tuple[str, Any]] = []
    for node in cluster_targets(client, instr.nodes):
        try:
            node_client = client.get_redis_connection(node)
            results.append((node.name, node_client.execute_command(*instr.args)))
        except RedisError as exc:
            results.append((node.name, node_result(exc)))
    return merge_node_replies(results)


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


class Store(StoreBase):
    """Contexts on one Redis deployment, through the module or the Lua scripts.

    Build it with :func:`connect`. Thread-safe: share one Store (and one client) between threads.
    A Store built from a URL owns its client: :meth:`close` (or leaving ``with``) closes it; a
    Store given a client never closes it.
    """

    def __init__(self, client: Any, state: State, owns_client: bool = False) -> None:
        super().__init__(client, state, owns_client)
        # module engine: get/cas skip the generic operation machinery (same replies, same errors)
        self._send = _sender(client, state)

    def _call(self, call: Call[T]) -> T:
        if type(call) is not Fast:
            return _run(self._client, call)  # type: ignore[arg-type]
        args, parse, key, resend = call
        try:
            if key is None:
                reply = self._send(args)  # type: ignore[misc]  # set whenever a Fast is made
            else:
                reply = send_write(self._client, key, args)
        except ResponseError as exc:
            raise map_error(exc)  # noqa: B904 - map_error sets __cause__ (or returns exc)
        except TRANSPORT_ERRORS as exc:
            if resend is None:
                raise
            sent = not isinstance(exc, WriteNotSent)  # else nothing went out
            return _run(self._client, resend(sent))  # type: ignore[no-any-return]
        return parse(reply)  # type: ignore[no-any-return]

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
        return self._call(self._get(key))

    def cas(
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
        """Writes ``payload`` if the stored version is ``expected_version`` (0 = create).

        ``payload`` is the encoded bytes (whose version field must already be expected + 1) or a
        message, whose version field the SDK sets to expected + 1 on a copy (the field named by
        the schema; without ``schema=`` the SDK asks the context for it once per key). A conflict
        is not an error: ``ok`` is False and ``current`` holds the state the server has now.

        ``write_id`` (1 to 64 bytes; a fresh random one when not given) makes the write
        idempotent: if its reply is lost the SDK re-sends it (up to 3 times) and the server,
        which remembers the ids of each context's last writes (the schema's ``window``, 16 by
        default), does not apply it twice:
        ``replayed`` is then True. When that cannot be settled, :class:`OutcomeUnknownError`.
        The id *is* the write: a write whose id is in the window is answered ``replayed`` and not
        applied, whatever its payload, so never reuse an id for another change.

        ``ttl`` (seconds, int or float > 0): the context expires that long after this write
        (``PX``); without it a create has no expiry and an update keeps the context's.
        ``incarnation`` (``Snapshot.incarnation`` of the state this write is based on): the write
        is refused with :class:`ContextReplacedError` when the context was deleted and created
        again since. A create always gets a fresh incarnation.
        """
        return self._call(self._cas(key, expected_version, payload, schema, by, write_id, ttl,
                                    incarnation))

    def append(
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
        """Appends ``items`` to the repeated top-level field ``field`` of context ``key`` in one
        atomic write (``CTX.PATCH ... APPEND``, docs/PROTOCOL.md "Appends"), creating the context
        when it does not exist (then ``schema=`` is required). Appenders never conflict with each
        other: an append conflicts only with writes to the fields named in ``reads`` (field
        names, read at ``base_version``) and, with ``patch``, to the fields ``patch`` sets.

        ``items``: messages of the field's type, or scalars of it. ``patch``: a message of the
        context's type whose set fields (a oneof with all its members; not the version field, not
        ``field``) are written whole in the same write. ``base_version``: the version your reads
        and patch are based on; without it (and with reads or patch) the SDK reads the context
        once and uses its version. ``message_class``: the context's message type when neither
        ``patch`` nor the schema's registered type tells it. ``incarnation``
        (``Snapshot.incarnation`` of the state ``base_version`` comes from): the append is
        refused with :class:`ContextReplacedError`, unapplied, when the context was deleted and
        created again since (not sent with a base of 0, where the append may create it).

        Returns a :class:`CasResult` (``version``: the version the append produced). A conflict
        (only possible with ``reads`` or ``patch``) is ``ok`` False with ``current`` and
        ``changed``: re-read and decide, as for ``cas``; an append without reads or patch never
        returns one. Exactly once: a lost reply is re-sent with the same write id; the server
        replays it from its window of recent writes (the schema's ``window``, 16 by default),
        and refuses (``rebase``, not applied) a send whose base the window no longer covers;
        the SDK then re-sends with the reported version unless an earlier send may have landed,
        in which case :class:`OutcomeUnknownError`; refused so 8 times in a row (more writes
        than the window between each read and send), :class:`ConflictError` (not applied).
        """
        return _run(self._client, self._append(key, field, items, message_class, reads, patch,
                                       base_version, schema, by, write_id, ttl, incarnation))

    def delete(
        self,
        key: Union[str, bytes],
        expected_version: int,
        *,
        write_id: Optional[Union[str, bytes]] = None,
        incarnation: Optional[str] = None,
    ) -> CasResult:
        """Deletes the context if its version is ``expected_version``; ``ok`` False on conflict.

        A delete whose reply was lost is re-sent; if the re-sent one finds no context the result
        is ``ok`` with ``replayed`` True: the context is gone either way. ``incarnation``: as
        for :meth:`cas` (:class:`ContextReplacedError` when the context was re-created)."""
        return _run(self._client, self._delete(key, expected_version, write_id,
                                                      incarnation))

    def wait(
        self, key: Union[str, bytes], after_version: int, timeout: Optional[float] = None
    ) -> Optional[Snapshot]:
        """Blocks until the context's version is above ``after_version``; returns its Snapshot
        (at once when it already is), None after ``timeout`` seconds (None: no timeout).

        Raises :class:`NotFoundError` when the context is deleted (or expires) meanwhile, or is
        absent at the call with ``after_version`` > 0 (absent with 0: waits for its creation);
        :class:`ArgumentError` for a bad ``after_version`` or ``timeout``, nothing sent. No
        polling: the module blocks in ``CTX.WAIT``; on the Lua engine the waiter subscribes to
        the key's wait channel on a connection of its own and re-reads at least once a second
        (docs/PROTOCOL.md, "CTX.WAIT")."""
        t = check_wait_args(key, after_version, timeout)
        if self._st.engine == MODULE:
            st = socket_timeout(self._client)
            op = op_wait_module(self._st, key, after_version, t, st / 2 if st else None)
            return _run(self._client, op)
        return wait_lua_sync(self._client, self._st, key, after_version, t, lambda: self.get(key))

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
        ttl: Optional[float] = None,
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
        when ``fn`` changed nothing, which confirms that the state ``fn`` decided on is current. A
        list of top-level field names (``[]`` too) makes it a field patch: only the fields ``fn``
        changed are sent (``CTX.PATCH``), and it conflicts only when another writer changed one
        of those or one of ``reads`` since the state ``fn`` saw; the server merges it into the
        current state otherwise. Nothing changed: nothing is written.

        Every attempt carries its own write id. When a reply is lost (timeout, reset), the same
        attempt is re-sent, never ``fn`` called again; if that cannot settle whether it landed,
        :class:`OutcomeUnknownError`.

        Every write carries the incarnation of the state ``fn`` saw: when the context was deleted
        and created again in between, :class:`ContextReplacedError` (never retried: ``fn``
        decided on the old context). ``ttl`` (seconds > 0): stored with the write (``PX``);
        without it the context's expiry is kept (a create has none).
        """
        return _run(self._client, self._update(
            key, fn, message_class, schema, by, reads, retries, timeout, backoff, default, ttl))

    def touch(self, key: Union[str, bytes], ttl: float) -> bool:
        """Sets the context's time to live to ``ttl`` seconds (int or float > 0; ``CTX.TOUCH``).
        False when there is no context; :class:`WrongTypeError` when the key is not one."""
        return _run(self._client, self._touch(key, ttl))

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
        return _run(self._client, self._migrate(key, message_class, fn, by, retries, timeout))

    # -- schema registry -------------------------------------------------------------------
    def register_schema(
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
        """Registers (or re-registers) a schema; returns its revision.

        Accepts a generated/message class (or instance, or its ``Descriptor``), whose descriptor
        set is built with every transitive import, or a serialized ``FileDescriptorSet`` (then
        ``message_type`` names the message unless the set defines exactly one). ``compat``
        ("WIRE_JSON" or "WIRE") sets the schema's compatibility category; None keeps the
        registered one (WIRE_JSON for a new name). A change that breaks a rule of the category
        raises SchemaError unless ``force`` (docs/PROTOCOL.md, "Compatibility categories").

        ``history`` (0 to 1000) keeps each context's last that many changes (:meth:`history`;
        0 = off) and ``history_payloads`` makes those entries keep the payload (at most 64 KiB);
        None keeps the registered setting (off for a new name). Other settings for the same
        definition are a new revision (docs/PROTOCOL.md, "History").

        ``feed`` (0 to 10,000,000) keeps the schema's last that many changes, of all its
        contexts, in its change feed (:meth:`changes`; 0 = off; None keeps the setting). A
        Redis Cluster has no feed: ``feed`` > 0 raises SchemaError there (docs/PROTOCOL.md,
        "Change feed").

        ``window`` (1 to 255) is how many write records each context keeps (None keeps the
        setting; 16 for a new name): a write re-sent after a lost reply is replayed, and an
        append's ``rebase`` avoided, while fewer than that many writes happened since. Raise it
        for contexts with many concurrent writers (docs/PROTOCOL.md, "Write ids"); each record
        costs 8 bytes per context. A smaller setting trims a context at its next write.
        """
        return _run(self._client, self._register_schema(
            name, message_class_or_descriptor_set, force, version_field, message_type, compat,
            history, history_payloads, feed, window))

    def schemas(self) -> list[str]:
        """Registered schema names, sorted."""
        return _run(self._client, self._schemas())

    def get_schema(self, name: str) -> Optional[SchemaInfo]:
        """The registry entry (message type, descriptor set, revision), or None."""
        return _run(self._client, self._get_schema(name))

    def drop_schema(self, name: str) -> bool:
        """Removes a schema; True when there was one."""
        return _run(self._client, self._drop_schema(name))

    # -- history ---------------------------------------------------------------------------
    def history(
        self,
        key: Union[str, bytes],
        since_version: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> list[Change]:
        """The changes kept for ``key`` (its schema registered with ``history=n``), oldest
        first: those after ``since_version`` (exclusive), at most the newest ``limit``. Empty
        when the schema keeps no history or there is no context. ArgumentError for a negative or
        non-int ``since_version``/``limit``, before anything is sent."""
        return _run(self._client, self._history(key, since_version, limit))

    # -- change feed -------------------------------------------------------------------------
    def changes(
        self,
        schema: str,
        cursor: Optional[str] = None,
        count: int = 100,
        block_ms: Optional[int] = None,
    ) -> ChangeBatch:
        """Up to ``count`` changes from schema ``schema``'s change feed (registered with
        ``feed=n``) after ``cursor`` (None: from the oldest retained), deletes included, each
        context's in order; ``.cursor`` of the result resumes after them (save it: nothing is
        skipped or repeated). ``block_ms`` > 0 waits up to that long when there is nothing yet.
        :class:`CursorExpiredError` when changes after the cursor were trimmed away;
        :class:`ArgumentError` for a malformed cursor, ``count`` <= 0 or a negative
        ``block_ms`` (nothing sent); SchemaError on a Redis Cluster (docs/PROTOCOL.md,
        "Change feed")."""
        st = socket_timeout(self._client)
        return _run(self._client, self._changes(schema, cursor, count, block_ms,
                                                st / 2 if st else None))


def connect(
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
    """A :class:`Store` on a redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``)
    or on a ``redis://``, ``rediss://`` or ``unix://`` URL.

    From a URL the Store builds a ``redis.Redis`` it owns (``with ctxlink.connect(url) as
    store:`` or ``store.close()`` closes it); for a cluster pass a ``RedisCluster``. A
    ``redis.asyncio`` client raises ``TypeError``: use :func:`ctxlink.aio.connect`.

    ``engine="auto"`` asks the server whether it knows ``CTX.GET`` (no ACL right needed, see
    docs/PROTOCOL.md "ACL") and uses the module when it is loaded, else the Lua scripts. The
    limits are those the Lua engine enforces (the module uses its own load-time arguments); keep
    them equal to the module's on mixed deployments.

    ``local_check=True`` makes ``cas`` check the payload first with the module's own validation
    core (the cffi extension ``ctxlink._ctxcore`` the package ships) against the schema's
    descriptor set, fetched once; a payload it rejects raises the exception the server would
    raise (``ValidationError``, ``PayloadTooLarge``, ``VersionError``) and is not sent. The
    limits are the module's (read from ``INFO ctx``) or, on the Lua engine, the ones above.

    ``stale_after_ms`` (None: off) logs a warning on the ``ctxlink`` logger, naming the key, the
    writer and the delay, when an ``update``'s staleness (from the read its successful attempt
    was based on to its write's acknowledgement) exceeds it. With ``opentelemetry-api``
    installed (``ctxlink[otel]``) and a provider configured, the Store reports spans and metrics
    (docs/PROTOCOL.md, "Metrics and traces (OpenTelemetry)").
    """
    stale = check_stale_after(stale_after_ms)  # before anything is opened
    client, owned = open_client(client, asyncio=False)
    options = dict(max_payload_bytes=max_payload_bytes, max_depth=max_depth,
                   unknown_fields=unknown_fields, max_schema_bytes=max_schema_bytes,
                   stale_after_ms=stale)
    try:
        state = _run(client, op_connect(is_cluster(client), engine, options, local_check))
    except BaseException:
        if owned:
            client.close()
        raise
    return Store(client, state, owned)
