"""The one description of a Store's calls, shared by the sync and asyncio front ends.

For each public method, :class:`StoreBase` checks what only the front end can check, applies the
module engine's fast-path rule and says what to run: an operation (:data:`ctxlink._instr.Op`), or
for the hot ``get``/``cas`` of the module engine a :class:`Fast` command sent as it is.
:class:`Runner` is the bookkeeping of running an operation (feeding it replies and errors).

The front ends (:mod:`ctxlink._sync`, :mod:`ctxlink.aio`) add only the I/O: how an instruction
is carried out (call the client, or await it) and how a :class:`Fast` command is sent.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import (
    Any,
    Callable,
    Generic,
    Iterable,
    NamedTuple,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

from google.protobuf.message import Message
from redis.exceptions import ResponseError

from ctxlink._append import op_append
from ctxlink._client import choose_engine, make_state, op_check_protocol, op_detect
from ctxlink._feed import ChangeBatch, op_changes
from ctxlink._history import Change, op_history
from ctxlink._instr import Instr, Op, Write
from ctxlink._precheck import enable_local_check
from ctxlink._protocol import (
    MODULE,
    cas_command,
    map_error,
    new_incarnation,
    parse_state,
    parse_write,
    ttl_ms,
)
from ctxlink._registry import (
    SchemaInfo,
    op_drop_schema,
    op_get_schema,
    op_register_schema,
    op_schemas,
)
from ctxlink._send import TRANSPORT_ERRORS
from ctxlink._state import State
from ctxlink._telemetry import Telemetry
from ctxlink._types import (
    Backoff,
    CasResult,
    M,
    Snapshot,
    Updated,
    new_cas_result,
)
from ctxlink._update import op_update
from ctxlink._write import (
    MAX_EXPECTED_MODULE,
    check_incarnation,
    new_write_id,
    op_cas,
    op_delete,
    op_get,
    op_touch,
)

T = TypeVar("T")

ASYNC_FN = (
    "update() got an async function (or one returning an awaitable): the sync Store cannot "
    "await it; use ctxlink.aio (`await store.update(...)` on `await ctxlink.aio.connect(...)`)"
)
_ASYNC_FLAGS = inspect.CO_COROUTINE


def _is_async(fn: Any) -> bool:
    """An ``async def`` function (cheap test; other awaitables are caught when fn returns one)."""
    code = getattr(fn, "__code__", None)
    return code is not None and bool(code.co_flags & _ASYNC_FLAGS)


# ---------------------------------------------------------------------------------------------
# running an operation


class Runner(Generic[T]):
    """One operation being run. ``instr`` is what it asks for next (None once it returned, its
    result then in ``result``); the driver carries it out and calls :meth:`reply` or
    :meth:`fail`. A driver is then just::

        run = Runner(op)
        while run.instr is not None:
            try:
                reply = carry_out(run.instr)        # (await ...) in the asyncio driver
            except Exception as exc:
                run.fail(exc)
                continue
            run.reply(reply)
        return run.result
    """

    __slots__ = ("_op", "instr", "result")

    def __init__(self, op: Op[T]) -> None:
        self._op = op
        self.instr: Optional[Instr] = None
        self.result: T
        self._next(op.send, None)

    def _next(self, step: Callable[[Any], Instr], value: Any) -> None:
        try:
            self.instr = step(value)
        except StopIteration as stop:
            self.instr = None
            self.result = stop.value

    def reply(self, value: Any) -> None:
        """The current instruction's result goes to the operation."""
        self._next(self._op.send, value)

    def fail(self, exc: Exception) -> None:
        """The current instruction failed with ``exc``. An error reply goes to the operation as
        the ctxlink exception for its code; so does a lost reply (transport error) of a
        :class:`Write` or of a read made on the way to one (``settle``). Anything else ends the
        run: ``exc`` is raised."""
        if isinstance(exc, ResponseError):
            self._next(self._op.throw, map_error(exc))
        elif isinstance(exc, TRANSPORT_ERRORS) and (
            type(self.instr) is Write or getattr(self.instr, "settle", False)
        ):
            self._next(self._op.throw, exc)
        else:
            abort = getattr(self._op, "abort", None)
            if abort is not None:  # a traced operation (ctxlink._telemetry) ends its spans
                abort(exc)
            raise exc


def node_result(exc: Exception) -> BaseException:
    """What a failed node of a keyless cluster command contributes to
    :func:`ctxlink._cluster.merge_node_replies`: the mapped error reply, or the error."""
    return map_error(exc) if isinstance(exc, ResponseError) else exc


# ---------------------------------------------------------------------------------------------
# the calls


class Fast(NamedTuple):
    """A module-engine ``get``/``cas`` sent as one command, without the operation machinery
    (same replies, same errors). ``key`` set: a write, sent once on a connection of the front
    end's (:mod:`ctxlink._send`); after a lost reply the front end runs ``resend(sent)``, the
    operation that re-sends the very same write (``sent``: the lost one went out)."""

    args: tuple[Any, ...]
    parse: Callable[[Any], Any]
    key: Any = None
    resend: Optional[Callable[[bool], Op[Any]]] = None


Call = Union[Op[T], Fast]

#: ``new_fast((args, parse, key, resend))``: a Fast without ``Fast(...)``'s keyword handling (the
#: module engine's hot path)
new_fast: Callable[
    [tuple[tuple[Any, ...], Callable[[Any], Any], Any, Optional[Callable[[bool], Op[Any]]]]], Fast
] = partial(tuple.__new__, Fast)


def parse_cas(reply: Any) -> CasResult:
    if type(reply) is int:
        return new_cas_result((True, reply, None, False, ()))
    return parse_write(reply)


def op_connect(
    cluster: bool, engine: str, options: dict[str, Any], local_check: bool
) -> Op[State]:
    """``connect`` after the client is open: detect the module (unless ``engine="lua"``),
    choose the engine, check the module's protocol, build the Store's state."""
    has_module: Optional[bool] = None
    if engine != "lua":
        has_module = yield from op_detect(cluster)
    chosen = choose_engine(engine, has_module)
    if chosen == MODULE:
        yield from op_check_protocol(cluster)
    state = make_state(chosen, cluster, options)
    if local_check:  # opt-in: check payloads with the cffi core first
        enable_local_check(state)
    return state


class StoreBase:
    """What both Stores share: the client, the state, and one description of every call."""

    #: the sync Store refuses ``async def`` functions up front (it cannot await them)
    _sync = True
    _name = "ctxlink.Store"

    def __init__(self, client: Any, state: State, owns_client: bool = False) -> None:
        self._client = client
        self._st = state
        self._owns = owns_client
        # module engine: get/cas skip the generic operation machinery (same replies, same errors)
        self._fast = state.engine == MODULE
        self._tel = Telemetry(client, state)  # OpenTelemetry, when installed and configured

    @property
    def engine(self) -> str:
        """``"module"`` (CTX.* commands) or ``"lua"`` (scripts from ``lua/``)."""
        return self._st.engine

    @property
    def client(self) -> Any:
        """The redis-py client the Store sends on."""
        return self._client

    def __repr__(self) -> str:
        return f"<{self._name} engine={self.engine!r} client={self._client!r}>"

    # -- contexts
    def _get(self, key: Union[str, bytes]) -> Call[Optional[Snapshot]]:
        if self._tel.active():
            return self._tel.traced(op_get(self._st, key), "get", key)
        if not self._fast or (type(key) is not str and type(key) is not bytes):
            return op_get(self._st, key)
        return new_fast((("CTX.GET", key), parse_state, None, None))

    def _cas(
        self,
        key: Union[str, bytes],
        expected_version: int,
        payload: Union[bytes, Message],
        schema: Optional[str],
        by: Optional[str],
        write_id: Optional[Union[str, bytes]],
        ttl: Optional[float] = None,
        incarnation: Optional[str] = None,
    ) -> Call[CasResult]:
        st = self._st
        if schema is not None and not isinstance(schema, str):  # both engines, every path
            raise TypeError(f"schema must be a str (a schema name), not {type(schema).__name__}")
        px = None if ttl is None else ttl_ms(ttl)
        inc = None if incarnation is None else check_incarnation(incarnation)
        if self._tel.active():
            return self._tel.traced(
                op_cas(st, key, expected_version, payload, schema, by, write_id, False, px, inc),
                "cas", key)
        if (
            not self._fast
            or type(payload) is not bytes
            or type(expected_version) is not int
            or not 0 <= expected_version <= MAX_EXPECTED_MODULE
            or st.local is not None
            or write_id is not None
            or (type(key) is not str and type(key) is not bytes)
            or (by is not None and (type(by) is not str or len(by) > 16383))
        ):
            return op_cas(st, key, expected_version, payload, schema, by, write_id, False, px,
                          inc)
        wid = new_write_id()
        if inc is None and expected_version == 0:
            inc = new_incarnation()  # a create: the context's incarnation, known to the re-send
        args = cas_command(key, expected_version, payload, schema, by, wid, inc, px)

        def resend(sent: bool) -> Op[CasResult]:  # the same write (same id), settled there
            return op_cas(st, key, expected_version, payload, schema, by, wid, sent, px, inc)

        return new_fast((args, parse_cas, key, resend))

    def _append(
        self,
        key: Union[str, bytes],
        field: str,
        items: Iterable[Any],
        message_class: Optional[type[Message]],
        reads: Sequence[str],
        patch: Optional[Message],
        base_version: Optional[int],
        schema: Optional[str],
        by: Optional[str],
        write_id: Optional[Union[str, bytes]],
        ttl: Optional[float],
        incarnation: Optional[str] = None,
    ) -> Op[CasResult]:
        if schema is not None and not isinstance(schema, str):
            raise TypeError(f"schema must be a str (a schema name), not {type(schema).__name__}")
        if not isinstance(field, str):
            raise TypeError(f"field must be a field name (str), not {type(field).__name__}")
        px = None if ttl is None else ttl_ms(ttl)
        op = op_append(self._st, key, field, items, message_class, reads, patch, base_version,
                       schema, by, write_id, px, incarnation)
        return self._tel.traced(op, "append", key) if self._tel.active() else op

    def _delete(
        self,
        key: Union[str, bytes],
        expected_version: int,
        write_id: Optional[Union[str, bytes]],
        incarnation: Optional[str] = None,
    ) -> Op[CasResult]:
        op = op_delete(self._st, key, expected_version, write_id, incarnation)
        return self._tel.traced(op, "delete", key) if self._tel.active() else op

    def _touch(self, key: Union[str, bytes], ttl: float) -> Op[bool]:
        return op_touch(self._st, key, ttl)

    def _update(
        self,
        key: Union[str, bytes],
        fn: Callable[[M], Any],
        message_class: type[M],
        schema: Optional[str],
        by: Optional[str],
        reads: Optional[Sequence[str]],
        retries: Optional[int],
        timeout: Optional[float],
        backoff: Optional[Backoff],
        default: Optional[Callable[[], Any]],
        ttl: Optional[float] = None,
    ) -> Op[Updated[M]]:
        if self._sync and (_is_async(fn) or (default is not None and _is_async(default))):
            raise TypeError(ASYNC_FN)
        if ttl is not None:
            ttl_ms(ttl)  # refused here, before anything is sent
        op = op_update(self._st, key, fn, message_class, schema, by, retries, default,
                       reads=reads, timeout=timeout, backoff=backoff, ttl=ttl)
        return self._tel.traced(op, "update", key) if self._tel.active() else op

    def _migrate(
        self,
        key: Union[str, bytes],
        message_class: type[M],
        fn: Optional[Callable[[M], Any]],
        by: Optional[str],
        retries: Optional[int],
        timeout: Optional[float],
    ) -> Op[Updated[M]]:
        if self._sync and fn is not None and _is_async(fn):
            raise TypeError(ASYNC_FN.replace("update()", "migrate()"))
        op = op_update(self._st, key, fn, message_class, None, by, retries, None,
                       drop_unknown=True, timeout=timeout)
        return self._tel.traced(op, "migrate", key) if self._tel.active() else op

    # -- schema registry
    def _register_schema(
        self,
        name: str,
        source: Any,
        force: bool,
        version_field: Optional[str],
        message_type: Optional[str],
        compat: Optional[str] = None,
        history: Optional[int] = None,
        history_payloads: Optional[bool] = None,
        feed: Optional[int] = None,
        window: Optional[int] = None,
    ) -> Op[int]:
        return op_register_schema(self._st, name, source, force, version_field, message_type,
                                  compat, history, history_payloads, feed, window)

    def _schemas(self) -> Op[list[str]]:
        return op_schemas(self._st)

    def _get_schema(self, name: str) -> Op[Optional[SchemaInfo]]:
        return op_get_schema(self._st, name)

    def _drop_schema(self, name: str) -> Op[bool]:
        return op_drop_schema(self._st, name)

    # -- history
    def _history(
        self, key: Union[str, bytes], since_version: Optional[int], limit: Optional[int]
    ) -> Op[list[Change]]:
        return op_history(self._st, key, since_version, limit)

    # -- change feed
    def _changes(
        self, schema: str, cursor: Optional[str], count: int, block_ms: Optional[int],
        slice_s: Optional[float] = None,
    ) -> Op[ChangeBatch]:
        return op_changes(self._st, schema, cursor, count, block_ms, slice_s)

