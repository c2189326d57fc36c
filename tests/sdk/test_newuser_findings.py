"""Findings of a new user trying the SDK from the README and docs/PROTOCOL.md, on both engines.

Tests that pass pin behaviour a user relies on (exactly once while the server is frozen); the
``xfail(strict=True)`` ones are open findings: they pass once the SDK is fixed, and then the
marker has to go."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Iterator

import pytest
import redis

import ctxlink
from ctxlink import EmbeddedRedis
from ctxlink.embedded import find_module
from sdk_support import Protos  # type: ignore[import-not-found]


@pytest.fixture
def store(client: redis.Redis, sdk_engine: str, protos: Protos) -> ctxlink.Store:
    s = ctxlink.connect(client, engine=sdk_engine)
    s.register_schema("order", protos.Order)
    s.cas("o:1", 0, protos.Order(order_id="a"), schema="order", by="router")
    return s


@pytest.fixture
def own_server(sdk_engine: str) -> Iterator[EmbeddedRedis]:
    """A server of the engine's kind for this test alone (the test freezes it with SIGSTOP)."""
    srv = EmbeddedRedis(module=find_module() if sdk_engine == "module" else None)
    with srv:
        try:
            yield srv
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)  # never leave it frozen


def _frozen_update(srv: EmbeddedRedis, engine: str, protos: Protos, resume_after: float,
                   timeout: float) -> tuple[Any, float, int, int]:
    """update() whose fn freezes the server (SIGSTOP) before the write goes out; the server is
    resumed after ``resume_after`` s. Returns (result or exception, seconds update took, fn
    calls, discount stored afterwards)."""
    client = srv.client(socket_timeout=0.1)
    store = ctxlink.connect(client, engine=engine)
    store.register_schema("order", protos.Order)
    store.cas("k", 0, protos.Order(order_id="a"), schema="order")
    pid = srv.proc.pid
    calls = 0

    def fn(o: Any) -> None:
        nonlocal calls
        calls += 1
        o.discount += 1
        if calls == 1:
            os.kill(pid, signal.SIGSTOP)

    timer = threading.Timer(resume_after, lambda: os.kill(pid, signal.SIGCONT))
    timer.start()
    t0 = time.monotonic()
    try:
        result: Any = store.update("k", fn, message_class=protos.Order, timeout=timeout)
    except ctxlink.CtxError as exc:
        result = exc
    took = time.monotonic() - t0
    timer.join()
    check = srv.client()
    snap = ctxlink.connect(check, engine=engine).get("k")
    check.close()
    client.close()
    assert snap is not None
    return result, took, calls, protos.Order.FromString(snap.raw).discount


def test_frozen_server_update_applies_fn_once(own_server: EmbeddedRedis, sdk_engine: str,
                                              protos: Protos) -> None:
    """The server freezes while the write is in flight and resumes 0.5 s later: the SDK re-sends
    the same attempt and the change lands once (fn called once, discount +1)."""
    result, _, calls, discount = _frozen_update(own_server, sdk_engine, protos, 0.5, 5.0)
    assert isinstance(result, ctxlink.Updated)
    assert (calls, discount, result.version) == (1, 1, 2)


@pytest.mark.xfail(strict=True, reason=(
    "update(timeout=0.5) with socket_timeout=0.1 on a frozen server returns only when the "
    "server resumes (3 s here; ~6 s to OutcomeUnknownError when it stays frozen): the re-send "
    "blocks in redis-py's reconnect handshake (HELLO retried by the client's default Retry), "
    "and _core._send_settled checks the deadline only after that returns"))
def test_frozen_server_update_honours_timeout(own_server: EmbeddedRedis, sdk_engine: str,
                                              protos: Protos) -> None:
    result, took, calls, discount = _frozen_update(own_server, sdk_engine, protos, 3.0, 0.5)
    assert calls == 1 and discount == 1  # exactly once either way
    assert took < 1.5, f"update(timeout=0.5) took {took:.2f} s"
    assert isinstance(result, ctxlink.OutcomeUnknownError)


@pytest.mark.xfail(strict=True, raises=AttributeError, reason=(
    "update(backoff=5) is accepted; the first backoff after a conflict then fails with "
    "AttributeError: 'int' object has no attribute 'ceiling' (not checked in _core.op_update)"))
def test_bad_backoff_is_a_type_error_before_anything_is_sent(store: ctxlink.Store,
                                                             protos: Protos) -> None:
    def conflicting(o: Any) -> None:  # another writer gets in before every attempt
        store.cas("o:1", o.version, protos.Order(order_id="x"))
        o.discount += 1

    with pytest.raises(TypeError):
        store.update("o:1", conflicting, message_class=protos.Order, retries=3,
                     backoff=5)  # type: ignore[arg-type]


@pytest.mark.xfail(strict=True, reason=(
    "cas(by=...) over 65535 bytes reaches the server and comes back as a bare "
    "redis ResponseError ('writer id is longer than 65535 bytes'), while an oversized "
    "write_id is an ArgumentError raised before anything is sent"))
def test_oversized_by_is_an_argument_error(store: ctxlink.Store, client: redis.Redis,
                                           protos: Protos) -> None:
    before = client.get("o:1")
    with pytest.raises(ctxlink.ArgumentError):
        store.cas("o:1", 1, protos.Order(order_id="b"), by="x" * 70_000)
    assert client.get("o:1") == before


@pytest.mark.xfail(strict=True, reason=(
    "cas(by=5) is accepted and stored as updated_by '5', while write_id=5 is a TypeError"))
def test_non_str_by_is_a_type_error(store: ctxlink.Store, protos: Protos) -> None:
    with pytest.raises(TypeError):
        store.cas("o:1", 1, protos.Order(order_id="b"), by=5)  # type: ignore[arg-type]


@pytest.mark.xfail(strict=True, reason=(
    "get(None) raises redis.exceptions.DataError, neither a CtxError nor a TypeError"))
def test_get_none_key_is_a_type_error(store: ctxlink.Store) -> None:
    with pytest.raises(TypeError):
        store.get(None)  # type: ignore[arg-type]


@pytest.mark.xfail(strict=True, reason=(
    "ConflictError has no .key (OutcomeUnknownError has one); the key is only in the text"))
def test_conflict_error_names_its_key(store: ctxlink.Store, protos: Protos) -> None:
    def conflicting(o: Any) -> None:
        store.cas("o:1", o.version, protos.Order(order_id="x"))
        o.discount += 1

    with pytest.raises(ctxlink.ConflictError) as info:
        store.update("o:1", conflicting, message_class=protos.Order, retries=0)
    assert info.value.attempts == 1 and info.value.current is not None
    assert getattr(info.value, "key", None) == "o:1"


@pytest.mark.xfail(strict=True, raises=ctxlink.OutcomeUnknownError, reason=(
    "cas/delete on a server that refuses the connection (nothing was ever sent) raise "
    "OutcomeUnknownError ('it may have landed'), after ~15 s with the client's default Retry: "
    "a ConnectionError from pool.get_connection() in _send._send_plain, before the first send, "
    "is treated as a lost reply (update raises the plain ConnectionError from its first read)"))
@pytest.mark.parametrize("op", ["cas", "delete"])
def test_write_to_a_down_server_is_not_outcome_unknown(sdk_engine: str, protos: Protos,
                                                       op: str) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with EmbeddedRedis(module=find_module() if sdk_engine == "module" else None) as srv:
        client = srv.client(retry=Retry(NoBackoff(), 0))  # fast: no reconnect retries
        store = ctxlink.connect(client, engine=sdk_engine)
        store.register_schema("order", protos.Order)
        store.cas("k", 0, protos.Order(order_id="a"), schema="order")
        client.connection_pool.disconnect()
        srv.stop()
        with pytest.raises(redis.ConnectionError):
            if op == "cas":
                store.cas("k", 1, protos.Order(order_id="b"))
            else:
                store.delete("k", 1)
        client.close()


def _calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


@pytest.mark.xfail(strict=True, reason=(
    "README: local_check 'gives the server's verdict without a round trip'; but every payload "
    "the local check rejects first re-fetches the schema from the registry "
    "(_core._local_precheck 'confirm against the current registry entry before refusing'): one "
    "round trip per rejection, carrying the whole descriptor set"))
def test_local_check_rejects_without_a_round_trip(client: redis.Redis, sdk_engine: str,
                                                  protos: Protos) -> None:
    from ctxlink import _local

    if not _local.available():
        pytest.skip("the cffi extension is not built (make ext)")
    store = ctxlink.connect(client, engine=sdk_engine, local_check=True)
    store.register_schema("order", protos.Order)
    store.cas("k", 0, protos.Order(order_id="a"), schema="order")
    bad = b"\n\x02o\xff\x10\x02"  # order_id not UTF-8
    with pytest.raises(ctxlink.ValidationError):  # warm-up: limits and schema fetched once
        store.cas("k", 1, bad, schema="order")
    client.config_resetstat()
    for _ in range(10):
        with pytest.raises(ctxlink.ValidationError):
            store.cas("k", 1, bad, schema="order")
    assert _calls(client) == 0
