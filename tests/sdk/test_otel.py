"""OpenTelemetry spans and metrics of the SDK (ctxlink/_telemetry.py; README "Metrics and traces"),
captured with the OpenTelemetry SDK's in-memory span exporter and metric reader, on both engines,
sync and asyncio; the ``stale_after_ms`` warning; and the SDK without OpenTelemetry installed."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator

import ctxlink
import ctxlink.aio
import pytest
import redis
import redis.asyncio
from ctxlink.embedded import EmbeddedRedis, find_module
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from sdk_support import REPO, Protos  # type: ignore[import-not-found]

MODES = ["sync", "aio"]


def _reset_globals() -> None:
    """Back to "no provider configured" (what OpenTelemetry's own test utilities do: the API
    lets a process set each global provider once)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    metrics._internal._METER_PROVIDER = None  # type: ignore[attr-defined]


class Captured:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def metric(self, name: str) -> Any:
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        return m
        return None

    def points(self, name: str) -> list[Any]:
        m = self.metric(name)
        return list(m.data.data_points) if m is not None else []


@pytest.fixture
def otel() -> Iterator[Captured]:
    _reset_globals()
    cap = Captured()
    trace.set_tracer_provider(cap.tracer_provider)
    metrics.set_meter_provider(cap.meter_provider)
    yield cap
    cap.meter_provider.shutdown()
    _reset_globals()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _v(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


async def _open(server: EmbeddedRedis, mode: str, **kw: Any) -> Any:
    if mode == "sync":
        return ctxlink.connect(server.client(), **kw)
    return await ctxlink.aio.connect(redis.asyncio.Redis(host="127.0.0.1", port=server.port),
                                     **kw)


async def _close(store: Any) -> None:
    close = getattr(store.client, "aclose", None)
    await _v(close() if close is not None else store.client.close())


def _write_name(engine: str, command: str, script: str) -> str:
    """The span name: the module's command, or the script (get.lua, read-only, goes as
    EVALSHA_RO on Redis 7)."""
    if engine == "module":
        return command
    return f"{'EVALSHA_RO' if script == 'get' else 'EVALSHA'} ctxlink.{script}"


# ---------------------------------------------------------------------------------------------
# spans


def test_reads_and_writes_get_spans_with_the_redis_db_conventions(
    otel: Captured, server: EmbeddedRedis, sdk_engine: str, mode: str, protos: Protos
) -> None:
    Order = protos.Order

    async def main() -> None:
        store = await _open(server, mode)
        try:
            await _v(store.register_schema("order", Order))
            otel.spans.clear()
            assert (await _v(store.cas("o:1", 0, Order(order_id="a"), schema="order"))).ok
            assert (await _v(store.get("o:1"))).version == 1
            assert not (await _v(store.cas("o:1", 0, Order(order_id="b"), schema="order"))).ok
            assert (await _v(store.delete("o:1", 1))).ok
        finally:
            await _close(store)

    asyncio.run(main())
    spans = [s for s in otel.finished() if s.attributes.get("ctxlink.key") == "o:1"
             and s.attributes.get("db.operation.name") != "HMGET"]  # Lua: registry reads too
    spans = [s for s in spans if s.attributes.get("error.type") != "NoScriptError"]
    names = [s.name for s in spans]
    cas = _write_name(sdk_engine, "CTX.CAS", "cas")
    assert names == [cas, _write_name(sdk_engine, "CTX.GET", "get"), cas,
                     _write_name(sdk_engine, "CTX.DEL", "del")], names
    for s in spans:
        a = s.attributes
        assert s.kind is SpanKind.CLIENT
        assert a["db.system.name"] == "redis"
        assert a["db.namespace"] == "0"
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == server.port
        if sdk_engine == "module":
            assert a["db.operation.name"] == s.name and "db.stored_procedure.name" not in a
        else:
            # the read-only get.lua goes as EVALSHA_RO (Redis 7)
            assert a["db.operation.name"] == s.name.split(" ")[0]
            assert a["db.operation.name"] in ("EVALSHA", "EVALSHA_RO")
            assert a["db.stored_procedure.name"] == s.name.split(" ")[1]
    first, read, conflict, delete = (s.attributes for s in spans)
    assert (first["ctxlink.expected_version"], first["ctxlink.version"],
            first["ctxlink.conflict"], first["ctxlink.replayed"]) == (0, 1, False, False)
    assert read["ctxlink.version"] == 1 and "ctxlink.conflict" not in read
    assert (conflict["ctxlink.expected_version"], conflict["ctxlink.version"],
            conflict["ctxlink.conflict"]) == (0, 1, True)
    assert (delete["ctxlink.expected_version"], delete["ctxlink.version"],
            delete["ctxlink.conflict"]) == (1, 0, False)


def test_update_is_a_parent_span_with_attempts_and_conflicts(
    otel: Captured, server: EmbeddedRedis, sdk_engine: str, mode: str, protos: Protos
) -> None:
    Order = protos.Order
    other = ctxlink.connect(server.client())

    def interfere(o: Any) -> None:  # first call only: another writer gets in between
        if not calls:
            snap = other.get("u:1")
            msg = snap.decode(Order)
            msg.final_price = 7
            assert other.cas("u:1", snap.version, msg).ok
        calls.append(1)
        o.discount = 5

    calls: list[int] = []

    async def main() -> None:
        store = await _open(server, mode)
        try:
            await _v(store.register_schema("order", Order))
            await _v(store.cas("u:1", 0, Order(order_id="u"), schema="order"))
            otel.spans.clear()
            done = await _v(store.update("u:1", interfere, message_class=Order, by="agent-a"))
            assert done.version == 3 and done.attempts == 2
        finally:
            await _close(store)
            other.client.close()

    asyncio.run(main())
    spans = otel.finished()
    [parent] = [s for s in spans if s.name == "ctxlink.update"]
    assert parent.kind is SpanKind.INTERNAL
    assert (parent.attributes["ctxlink.key"], parent.attributes["ctxlink.attempts"],
            parent.attributes["ctxlink.conflicts"], parent.attributes["ctxlink.version"]) == (
        "u:1", 2, 1, 3)
    children = [s for s in spans if s.parent is not None
                and s.parent.span_id == parent.context.span_id]
    writes = [s for s in children if "ctxlink.conflict" in s.attributes]
    assert [(w.attributes["ctxlink.expected_version"], w.attributes["ctxlink.conflict"])
            for w in writes] == [(1, True), (2, False)]
    assert all(s.context.trace_id == parent.context.trace_id for s in children)
    # metrics: one conflict of cause stale_version (a whole write), 2 attempts
    conflicts = [p for p in otel.points("ctxlink.conflicts")
                 if p.attributes["ctxlink.operation"] == "update"]
    assert [(p.attributes["ctxlink.conflict.cause"], p.value) for p in conflicts] == [
        ("stale_version", 1)]
    [attempts] = otel.points("ctxlink.update.attempts")
    assert (attempts.count, attempts.sum) == (1, 2)


@pytest.mark.parametrize("changed, cause", [("base_price", "changed_field"),
                                            ("final_price", "changed_read")])
def test_patch_conflicts_are_counted_by_cause(
    otel: Captured, server: EmbeddedRedis, sdk_engine: str, protos: Protos, changed: str,
    cause: str
) -> None:
    Order = protos.Order
    store = ctxlink.connect(server.client())
    store.register_schema("order", Order)
    store.cas("p:1", 0, Order(order_id="p"), schema="order")
    calls: list[int] = []

    def fn(o: Any) -> None:  # writes base_price, reads final_price
        if not calls:
            store.update("p:1", lambda m: setattr(m, changed, 99), message_class=Order,
                         reads=[])
        calls.append(1)
        o.base_price = o.final_price + 1

    store.update("p:1", fn, message_class=Order, reads=["final_price"])
    store.client.close()
    points = {p.attributes["ctxlink.conflict.cause"]: p.value
              for p in otel.points("ctxlink.conflicts")}
    assert points == {cause: 1}


def test_failed_commands_end_their_spans_with_the_error(
    otel: Captured, server: EmbeddedRedis, sdk_engine: str, protos: Protos
) -> None:
    store = ctxlink.connect(server.client())
    store.register_schema("order", protos.Order)
    otel.spans.clear()
    with pytest.raises(ctxlink.ValidationError):
        store.cas("bad", 0, b"\xff", schema="order")
    [span] = [s for s in otel.finished() if s.attributes.get("ctxlink.expected_version") == 0]
    assert span.attributes["error.type"] == "ValidationError"
    assert span.status.status_code is StatusCode.ERROR
    [point] = [p for p in otel.points("ctxlink.operation.duration")
               if p.attributes.get("error.type")]
    assert point.attributes["ctxlink.operation"] == "cas"
    store.client.close()


def test_a_lost_connection_ends_the_span_and_the_operation(
    otel: Captured, sdk_engine: str, protos: Protos
) -> None:
    """A read that fails on the transport ends the run outside the operation (the Runner raises
    it): the operation's spans still end, with the error."""
    module = find_module() if sdk_engine == "module" else None
    with EmbeddedRedis(module=module) as srv:
        client = srv.client()
        store = ctxlink.connect(client)
        store.get("k")
    otel.spans.clear()
    with pytest.raises(redis.ConnectionError):
        store.get("k")
    spans = [s for s in otel.finished() if s.attributes.get("ctxlink.key") == "k"]
    assert spans and spans[-1].attributes["error.type"] == "ConnectionError"
    [point] = [p for p in otel.points("ctxlink.operation.duration")
               if p.attributes.get("error.type")]
    assert point.attributes["error.type"] == "ConnectionError"
    client.close()


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_have_names_under_ctxlink_and_units(
    otel: Captured, server: EmbeddedRedis, sdk_engine: str, mode: str, protos: Protos
) -> None:
    Order = protos.Order

    async def main() -> None:
        store = await _open(server, mode)
        try:
            await _v(store.register_schema("order", Order))
            await _v(store.cas("m:1", 0, Order(order_id="m"), schema="order"))
            await _v(store.cas("m:1", 0, Order(order_id="m"), schema="order"))  # conflict

            def slow(o: Any) -> None:
                time.sleep(0.03)
                o.discount = 1

            await _v(store.update("m:1", slow, message_class=Order))
        finally:
            await _close(store)

    asyncio.run(main())
    units = {name: otel.metric(name).unit for name in (
        "ctxlink.operation.duration", "ctxlink.update.attempts", "ctxlink.conflicts",
        "ctxlink.update.staleness")}
    assert units == {"ctxlink.operation.duration": "s", "ctxlink.update.attempts": "{attempt}",
                     "ctxlink.conflicts": "{conflict}", "ctxlink.update.staleness": "s"}
    ops = {p.attributes["ctxlink.operation"]: p.count
           for p in otel.points("ctxlink.operation.duration")}
    assert ops == {"cas": 2, "update": 1}
    assert all(p.attributes["ctxlink.engine"] == sdk_engine
               for p in otel.points("ctxlink.operation.duration"))
    [conflict] = otel.points("ctxlink.conflicts")
    assert (conflict.attributes["ctxlink.operation"], conflict.value) == ("cas", 1)
    [stale] = otel.points("ctxlink.update.staleness")
    # from the read fn's attempt was based on to the write's acknowledgement: fn's 30 ms within
    assert stale.count == 1 and 0.03 <= stale.sum < 5


# ---------------------------------------------------------------------------------------------
# stale_after_ms


def test_stale_updates_are_logged_with_key_writer_and_delay(
    server: EmbeddedRedis, sdk_engine: str, mode: str, protos: Protos,
    caplog: pytest.LogCaptureFixture
) -> None:
    Order = protos.Order

    def slow(o: Any) -> None:
        time.sleep(0.03)
        o.discount = 2

    async def main() -> None:
        store = await _open(server, mode, stale_after_ms=10)
        relaxed = await _open(server, mode, stale_after_ms=60_000)
        try:
            await _v(store.register_schema("order", Order))
            await _v(store.cas("s:1", 0, Order(order_id="s"), schema="order"))
            with caplog.at_level(logging.WARNING, logger="ctxlink"):
                await _v(store.update("s:1", slow, message_class=Order, by="planner"))
                await _v(relaxed.update("s:1", slow, message_class=Order, by="relaxed"))
                await _v(store.update("s:1", lambda o: setattr(o, "discount", 3),
                                      message_class=Order, by="fast"))
        finally:
            await _close(store)
            await _close(relaxed)

    asyncio.run(main())
    records = [r for r in caplog.records if r.name == "ctxlink"]
    assert len(records) <= 2  # "fast" may be over 10 ms on a loaded machine; never "relaxed"
    assert all("relaxed" not in r.getMessage() for r in records)
    text = records[0].getMessage()
    assert records[0].levelno == logging.WARNING
    assert "'s:1'" in text and "'planner'" in text and "stale_after_ms=10" in text, text
    ms = float(text.split(": ")[1].split(" ms")[0])
    assert ms >= 30, text


@pytest.mark.parametrize("bad", [0, -5, "10", True, float("nan")])
def test_bad_stale_after_ms_is_refused_before_connecting(bad: Any, mode: str) -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens: refused before any connection attempt
    with pytest.raises(ctxlink.ArgumentError, match="stale_after_ms"):
        if mode == "sync":
            ctxlink.connect(url, stale_after_ms=bad)
        else:
            asyncio.run(ctxlink.aio.connect(url, stale_after_ms=bad))


# ---------------------------------------------------------------------------------------------
# no provider, no OpenTelemetry


def test_without_a_provider_nothing_is_traced_and_the_fast_path_stays(
    server: EmbeddedRedis, sdk_engine: str, protos: Protos
) -> None:
    _reset_globals()
    store = ctxlink.connect(server.client())
    assert not store._tel.active()
    call = store._get("k")
    assert (type(call).__name__ == "Fast") == (sdk_engine == "module")
    store.register_schema("order", protos.Order)
    assert store.cas("k", 0, protos.Order(order_id="k"), schema="order").ok
    store.client.close()


BLOCKED = textwrap.dedent("""
    import sys

    class NoOpenTelemetry:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked for the test: {name}")
            return None

    sys.meta_path.insert(0, NoOpenTelemetry())
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    import ctxlink
    assert not any(m.startswith("opentelemetry") for m in sys.modules), "imported"
    from ctxlink._telemetry import otel
    assert otel() is None
    sys.path.insert(0, sys.argv[2])
    from sdk_support import Protos
    import tempfile, pathlib
    Order = Protos(pathlib.Path(tempfile.mkdtemp())).Order
    store = ctxlink.connect(f"redis://127.0.0.1:{sys.argv[1]}/0", stale_after_ms=1)
    store.register_schema("order", Order)
    assert store.cas("n:1", 0, Order(order_id="n"), schema="order").ok
    import time
    def slow(o):
        time.sleep(0.01)
        o.discount = 1
    assert store.update("n:1", slow, message_class=Order, by="w").version == 2
    assert store.delete("n:1", 2).ok
    print("engine", store.engine)
""")


def test_the_sdk_works_when_opentelemetry_is_not_installed(
    server: EmbeddedRedis, sdk_engine: str
) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "sdk"))
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(server.port), str(REPO / "tests" / "sdk")],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"engine {sdk_engine}" in out.stdout
    assert "ctxlink stale update of 'n:1' by 'w'" in out.stderr, out.stderr


def test_import_ctxlink_imports_no_opentelemetry_of_its_own() -> None:
    """Only ``connect`` loads the OpenTelemetry API (redis-py >= 7 may import part of it
    itself: that part is not counted)."""
    code = textwrap.dedent("""
        import sys
        import redis, redis.asyncio, redis.cluster
        try:
            import redis.observability.recorder
        except ImportError:
            pass
        before = {m for m in sys.modules if m.startswith("opentelemetry")}
        import ctxlink, ctxlink.aio
        print(sorted({m for m in sys.modules if m.startswith("opentelemetry")} - before))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO / "sdk"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Redis Cluster


@pytest.fixture(scope="module")
def one_node_cluster() -> Iterator[EmbeddedRedis]:
    from ctxlink.embedded import EmbeddedCluster

    with EmbeddedCluster(1, module=find_module()) as cluster:
        yield cluster.nodes[0]


def test_cluster_spans_name_the_node_of_the_key(
    otel: Captured, one_node_cluster: EmbeddedRedis, mode: str, protos: Protos
) -> None:
    Order = protos.Order
    port = one_node_cluster.port

    async def main() -> None:
        if mode == "sync":
            from redis.cluster import RedisCluster

            store = ctxlink.connect(RedisCluster(host="127.0.0.1", port=port))
        else:
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            store = await ctxlink.aio.connect(AsyncCluster(host="127.0.0.1", port=port))
        try:
            await _v(store.register_schema("order", Order))
            otel.spans.clear()
            key = f"c:{mode}"
            assert (await _v(store.cas(key, 0, Order(order_id="c"), schema="order"))).ok
            await _v(store.update(key, lambda o: setattr(o, "discount", 1), message_class=Order,
                                  reads=[]))
            await _v(store.delete(key, 2))
        finally:
            await _close(store)

    asyncio.run(main())
    spans = [s for s in otel.finished() if s.kind is SpanKind.CLIENT]
    assert [s.name for s in spans] == ["CTX.CAS", "CTX.GET", "CTX.PATCH", "CTX.DEL"]
    for s in spans:
        assert (s.attributes["server.port"], s.attributes["db.namespace"]) == (port, "0")
        assert s.attributes["server.address"] == "127.0.0.1"
