"""OpenTelemetry spans and metrics (the optional extra ``ctxlink[otel]``), and the staleness
warning of ``connect(stale_after_ms=...)``.

Active whenever ``opentelemetry-api`` is importable; it does nothing until the application
configures a tracer or meter provider (until then the module engine's ``get``/``cas`` keep their
fast path). ``import ctxlink`` never imports OpenTelemetry: the first :class:`Telemetry` (made by
``connect``) does.

Spans (``docs/PROTOCOL.md``, "Metrics and traces"): one CLIENT span per command a Store sends for
``get``, ``cas``, ``delete``, ``update`` and ``migrate`` (writes too: the SDK sends them itself,
:mod:`ctxlink._send`), named after the command (``CTX.CAS``, ``EVALSHA ctxlink.cas``), with the
database semantic conventions for Redis (``db.system.name``, ``db.operation.name``,
``db.stored_procedure.name``, ``db.namespace``, ``server.address``, ``server.port``) and
``ctxlink.key``, ``ctxlink.expected_version``, ``ctxlink.version``, ``ctxlink.conflict``,
``ctxlink.replayed``; ``update``/``migrate`` add an INTERNAL parent span ``ctxlink.update``
(``ctxlink.attempts``, ``ctxlink.conflicts``). The operations are sans-I/O generators
(:mod:`ctxlink._instr`): :class:`Traced` wraps one and sees each command and its reply, for the
sync and the asyncio front end alike.

Metrics (meter ``ctxlink``): ``ctxlink.operation.duration`` (s), ``ctxlink.update.attempts``
({attempt}), ``ctxlink.conflicts`` ({conflict}, by ``ctxlink.conflict.cause``) and
``ctxlink.update.staleness`` (s: from the read an update's successful attempt was based on to the
acknowledgement of its write).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any, Optional, TypeVar, Union

from ctxlink._exceptions import ArgumentError
from ctxlink._instr import Cmd, Instr, Op, Write
from ctxlink._protocol import parse_outcome

T = TypeVar("T")

LOG = logging.getLogger("ctxlink")

#: ``ctxlink.conflict.cause`` values (the module's INFO ctx causes, as the SDK sees them)
STALE_VERSION, CHANGED_FIELD, CHANGED_READ = "stale_version", "changed_field", "changed_read"

_WRITES = {"CTX.CAS", "CTX.PATCH", "CTX.DEL"}
_WRITE_SCRIPTS = {"cas", "patch", "del"}
_READS = {"CTX.GET"}


class _Instruments:
    """The four instruments, made from one meter."""

    def __init__(self, meter: Any) -> None:
        self.duration = meter.create_histogram(
            "ctxlink.operation.duration", unit="s",
            description="Duration of a Store operation (get, cas, delete, update, migrate), "
            "every command, retry and re-send included")
        self.attempts = meter.create_histogram(
            "ctxlink.update.attempts", unit="{attempt}",
            description="Times update()'s function was called (1 + conflicts)")
        self.conflicts = meter.create_counter(
            "ctxlink.conflicts", unit="{conflict}",
            description="Writes refused because the context changed, by ctxlink.conflict.cause")
        self.staleness = meter.create_histogram(
            "ctxlink.update.staleness", unit="s",
            description="Time from the read an update's successful attempt was based on to the "
            "acknowledgement of its write")


class _Otel:
    """The OpenTelemetry API, with the tracer and instruments of the current global providers
    (made again when the application replaces a provider)."""

    def __init__(self, trace: Any, metrics: Any, version: str) -> None:
        self.trace = trace
        self.metrics = metrics
        self.version = version
        self.proxy_tp = getattr(trace, "ProxyTracerProvider", None)
        internal = getattr(metrics, "_internal", None)
        proxy_mp = getattr(internal, "_PROXY_METER_PROVIDER", None)
        self.proxy_mp = type(proxy_mp) if proxy_mp is not None else None
        self._tp: Any = None
        self._tracer: Any = None
        self._mp: Any = None
        self._instruments: Any = None

    def configured(self) -> bool:
        """True once the application set a tracer or a meter provider."""
        if self.proxy_tp is None or self.proxy_mp is None:  # pragma: no cover - other API
            return True
        return not isinstance(self.trace.get_tracer_provider(), self.proxy_tp) or not isinstance(
            self.metrics.get_meter_provider(), self.proxy_mp)

    def tracer(self) -> Any:
        tp = self.trace.get_tracer_provider()
        if tp is not self._tp:
            self._tracer = tp.get_tracer("ctxlink", self.version)
            self._tp = tp
        return self._tracer

    def instruments(self) -> _Instruments:
        mp = self.metrics.get_meter_provider()
        if mp is not self._mp:
            self._instruments = _Instruments(mp.get_meter("ctxlink", self.version))
            self._mp = mp
        return self._instruments  # type: ignore[no-any-return]


_UNSET: Any = object()
_otel: Any = _UNSET


def otel() -> Optional[_Otel]:
    """The OpenTelemetry API, imported on first use; None when it is not installed."""
    global _otel
    if _otel is _UNSET:
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            _otel = None
        else:
            from ctxlink import __version__

            _otel = _Otel(trace, metrics, __version__)
    return _otel  # type: ignore[no-any-return]


def check_stale_after(value: Any) -> Optional[float]:
    """``connect(stale_after_ms=...)``: None, or a number of milliseconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ArgumentError(
            f"stale_after_ms must be None or a number of milliseconds > 0, not {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _server_attrs(client: Any) -> dict[str, Any]:
    """``db.namespace``, ``server.address``, ``server.port`` of a plain client (a cluster's
    address is the node of each key)."""
    pool = getattr(client, "connection_pool", None)
    kw = getattr(pool, "connection_kwargs", None) or {}
    attrs: dict[str, Any] = {"db.system.name": "redis"}
    if "path" in kw:
        attrs["server.address"] = str(kw["path"])
    elif "host" in kw:
        attrs["server.address"] = str(kw["host"])
        attrs["server.port"] = int(kw.get("port", 6379))
    attrs["db.namespace"] = str(kw.get("db", 0))
    return attrs


class Telemetry:
    """One Store's instrumentation: its server attributes and script names."""

    __slots__ = ("otel", "client", "st", "attrs", "cluster", "_scripts")

    def __init__(self, client: Any, st: Any) -> None:
        self.otel = otel()
        self.client = client
        self.st = st
        self.cluster = hasattr(client, "nodes_manager")
        self.attrs = _server_attrs(client)
        if self.cluster:
            self.attrs["db.namespace"] = "0"
        self._scripts: dict[str, str] = {}

    def active(self) -> bool:
        o = self.otel
        return o is not None and o.configured()

    def traced(self, op: Op[T], operation: str, key: Any) -> Op[T]:
        return Traced(self, op, operation, key)

    def script_name(self, sha: Any) -> str:
        sha = _text(sha)
        name = self._scripts.get(sha)
        if name is None:  # rebuilt, not added to: as bounded as the Store's own script cache
            self._scripts = {script.sha: script.name for script in self.st.scripts.values()}
            name = self._scripts.get(sha, "unknown")
        return name

    def command_attrs(self, instr: Union[Cmd, Write], key: Any) -> tuple[str, dict[str, Any]]:
        """(span name, attributes) of one command."""
        args = instr.args
        command = _text(args[0]).upper()
        attrs = dict(self.attrs)
        attrs["db.operation.name"] = command
        name = command
        if key is not None:
            attrs["ctxlink.key"] = _text(key)
            if self.cluster:
                try:
                    node = self.client.get_node_from_key(key)
                    attrs["server.address"], attrs["server.port"] = node.host, int(node.port)
                except Exception:  # pragma: no cover - slot map not loaded yet
                    pass
        expected: Any = None
        if command in _WRITES and len(args) > 2:
            expected = args[2]
        elif command in ("EVALSHA", "EVALSHA_RO") and len(args) > 2:
            script = self.script_name(args[1])
            attrs["db.stored_procedure.name"] = f"ctxlink.{script}"
            name = f"{command} ctxlink.{script}"
            nkeys = int(args[2])
            if script in _WRITE_SCRIPTS and len(args) > 3 + nkeys:
                expected = args[3 + nkeys]
        if expected is not None:
            attrs["ctxlink.expected_version"] = int(expected)
        return name, attrs


def _reply_attrs(tel: Telemetry, span: Any, instr: Union[Cmd, Write], reply: Any) -> int:
    """Sets what a reply says on its span; returns 1 for a write's conflict, else 0."""
    if type(instr) is Write:
        try:
            result = parse_outcome(reply).result
        except Exception:  # pragma: no cover - not a write reply
            return 0
        command = _text(instr.args[0]).upper()
        deleting = command == "CTX.DEL" or (
            command == "EVALSHA" and tel.script_name(instr.args[1]) == "del")
        span.set_attributes({"ctxlink.conflict": not result.ok,
                             "ctxlink.replayed": result.replayed,
                             "ctxlink.version": 0 if result.ok and deleting else result.version})
        return 0 if result.ok else 1
    if isinstance(reply, (list, tuple)) and reply and isinstance(reply[0], int):
        span.set_attribute("ctxlink.version", reply[0])
    return 0


class Traced(Generator[Instr, Any, T]):
    """A sans-I/O operation with spans and metrics: passes every instruction and reply through,
    with a CLIENT span around each command (:class:`Cmd`, :class:`Write`). ``abort`` (called by
    :class:`ctxlink._dispatch.Runner` when an error ends the run outside the operation) ends
    the spans with that error."""

    __slots__ = ("_tel", "_op", "_operation", "_key", "_start", "_span", "_instr", "_parent",
                 "_ctx", "_conflicts", "_done", "_tracer")

    def __init__(self, tel: Telemetry, op: Op[T], operation: str, key: Any) -> None:
        self._tel = tel
        self._op = op
        self._operation = operation
        self._key = key
        self._start = time.perf_counter()
        self._span: Any = None
        self._instr: Any = None
        self._parent: Any = None
        self._ctx: Any = None
        self._conflicts = 0
        self._done = False
        o = tel.otel
        assert o is not None
        self._tracer = o.tracer()
        if operation in ("update", "migrate"):
            self._parent = self._tracer.start_span(
                "ctxlink.update", kind=o.trace.SpanKind.INTERNAL,
                attributes={"ctxlink.key": _text(key), "ctxlink.operation": operation,
                            "db.system.name": "redis"})
            self._ctx = o.trace.set_span_in_context(self._parent)

    # -- the generator protocol
    def send(self, value: Any) -> Instr:
        span = self._span
        if span is not None:
            self._span = None
            if span.is_recording():
                self._conflicts += _reply_attrs(self._tel, span, self._instr, value)
            span.end()
        return self._step(self._op.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Instr:
        exc = typ if isinstance(typ, BaseException) else (val if val is not None else typ())
        self._end_span(exc)
        return self._step(self._op.throw, exc)

    def close(self) -> None:
        self._end_span(None)
        self._op.close()
        if not self._done:
            self._finish(None, None, closed=True)

    def abort(self, exc: BaseException) -> None:
        self._end_span(exc)
        self._op.close()
        self._finish(exc, None)

    # -- the work
    def _step(self, step: Any, value: Any) -> Instr:
        try:
            instr: Instr = step(value)
        except StopIteration as stop:
            self._finish(None, stop.value)
            raise
        except BaseException as exc:
            self._finish(exc, None)
            raise
        if type(instr) is Cmd or type(instr) is Write:
            o = self._tel.otel
            assert o is not None
            key = instr.key if type(instr) is Write else (
                instr.args[1] if len(instr.args) > 1 and _text(instr.args[0]).upper() in _READS
                else self._key)
            name, attrs = self._tel.command_attrs(instr, key)
            self._span = self._tracer.start_span(
                name, context=self._ctx, kind=o.trace.SpanKind.CLIENT, attributes=attrs)
            self._instr = instr
        return instr

    def _end_span(self, exc: Optional[BaseException]) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        if exc is not None and span.is_recording():
            _set_error(self._tel, span, exc)
        span.end()

    def _finish(self, exc: Optional[BaseException], result: Any, closed: bool = False) -> None:
        if self._done:
            return
        self._done = True
        o = self._tel.otel
        assert o is not None
        attrs: dict[str, Any] = {"ctxlink.operation": self._operation,
                                 "ctxlink.engine": self._tel.st.engine,
                                 "db.system.name": "redis"}
        if exc is not None:
            attrs["error.type"] = type(exc).__qualname__
        elif closed:
            attrs["error.type"] = "_OTHER"
        inst = o.instruments()
        inst.duration.record(time.perf_counter() - self._start, attrs)
        ok = getattr(result, "ok", None)
        if ok is False:  # cas / delete: a conflict is a result, not an error
            inst.conflicts.add(1, {"ctxlink.operation": self._operation,
                                   "ctxlink.conflict.cause": STALE_VERSION,
                                   "ctxlink.engine": self._tel.st.engine})
        attempts = getattr(result if exc is None else exc, "attempts", None)
        if self._operation in ("update", "migrate") and isinstance(attempts, int):
            inst.attempts.record(attempts, {"ctxlink.operation": self._operation})
        parent = self._parent
        if parent is None:
            return
        if parent.is_recording():
            parent.set_attribute("ctxlink.conflicts", self._conflicts)
            if isinstance(attempts, int):
                parent.set_attribute("ctxlink.attempts", attempts)
            version = getattr(result, "version", None)
            if isinstance(version, int):
                parent.set_attribute("ctxlink.version", version)
            if exc is not None:
                _set_error(self._tel, parent, exc)
        parent.end()


def _set_error(tel: Telemetry, span: Any, exc: BaseException) -> None:
    o = tel.otel
    assert o is not None
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(o.trace.Status(o.trace.StatusCode.ERROR, str(exc)[:200]))


# ---------------------------------------------------------------------------------------------
# hooks of the update operation (ctxlink._update), on every Store: the staleness warning needs
# no OpenTelemetry


def update_conflict(st: Any, fields: tuple[int, ...], changed: tuple[int, ...]) -> None:
    """One conflict of an update attempt: a whole write (no ``fields``) is a stale version, a
    patch one whose written fields changed, else one whose read fields changed."""
    o = otel()
    if o is None:
        return
    if not fields or not changed:  # a whole write, or no context / a base ahead of it
        cause = STALE_VERSION
    elif set(changed) & set(fields):
        cause = CHANGED_FIELD
    else:
        cause = CHANGED_READ
    o.instruments().conflicts.add(1, {"ctxlink.operation": "update",
                                      "ctxlink.conflict.cause": cause,
                                      "ctxlink.engine": st.engine})


def update_done(st: Any, key: Any, by: Optional[str], read_at: float) -> None:
    """An update's write was acknowledged: its staleness (seconds since the read its attempt was
    based on) goes to ``ctxlink.update.staleness``, and to a warning on the ``ctxlink`` logger
    when it exceeds the Store's ``stale_after_ms``."""
    staleness = time.monotonic() - read_at
    limit = getattr(st, "stale_after_ms", None)
    if limit is not None and staleness * 1000.0 > limit:
        LOG.warning(
            "stale update of %r by %s: %.1f ms from its read to the write's acknowledgement "
            "(stale_after_ms=%g)", _text(key),
            repr(by) if by is not None else "an unnamed writer (by=None)",
            staleness * 1000.0, limit)
    o = otel()
    if o is not None:
        o.instruments().staleness.record(
            staleness, {"ctxlink.engine": st.engine, "db.system.name": "redis"})


__all__ = ["Telemetry", "Traced", "check_stale_after", "otel", "update_conflict",
           "update_done"]
