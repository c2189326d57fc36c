"""What an ``allkeys-*`` eviction policy does to ctxlink's keys (docs/PROTOCOL.md, "Eviction"),
for real: a server with ``maxmemory-policy allkeys-lru`` and a maxmemory a little above what the
test's state uses, filled with plain keys until Redis evicts the key under test, on both engines.

Redis' LRU clock ticks once a second, so a key left alone for more than a second is older than
every key written or ``TOUCH``-ed since: the test lets the key under test age, touches the keys
it wants kept, and writes 32 KiB filler keys until the one under test is gone (checked with
``EXISTS``, which does not touch; see :func:`evict`). Then maxmemory is lifted (nothing more
is evicted) and each documented consequence is checked:

- the **registry entry** evicted: every write of that schema's contexts fails closed with
  ``CTXSCHEMA unknown schema`` (``SchemaError``) and writes nothing; reads still work; registering
  again repairs it;
- a **history stream** evicted: the value is intact, ``history`` is empty, and history restarts
  at the next write (one entry, that write's version);
- a **context** evicted: a waiter gets ``NotFoundError``; the context is gone (``get`` is None),
  its stream is left until the next create, which starts a fresh history and a new incarnation.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
import redis
import servers as srv
from backends import start_engine_server

import ctxlink

ORDER = "ctxlink.example.Order"
REGISTRY = ("__ctx:schema:order", "__ctx:schemas")
STREAM = "__ctxh:ctx:1"
FILLER = b"x" * 32 * 1024


@pytest.fixture
def evicting(engine: str, servers: srv.ServerPool, module_so: Any, pb: Any
             ) -> Iterator[tuple[ctxlink.Store, redis.Redis]]:
    """A fresh server with allkeys-lru; schema "order" with history=4; ctx:1 at version 2."""
    server = start_engine_server(servers, engine, config=[("maxmemory-policy", "allkeys-lru"),
                                                          ("maxmemory-samples", 10)])
    r = server.client()
    store = ctxlink.connect(server.client(socket_timeout=10), engine=engine)
    assert store.engine == engine
    store.register_schema("order", pb.fds("order"), message_type=ORDER, history=4)
    assert store.cas("ctx:1", 0, pb.Order(order_id="a", version=1), schema="order", by="w").ok
    assert store.cas("ctx:1", 1, pb.Order(order_id="a", version=2), by="w").ok
    assert r.exists(*REGISTRY, STREAM, "ctx:1") == 4
    yield store, r
    store.client.close()
    r.close()


def evict(r: redis.Redis, gone: tuple[str, ...], keep: tuple[str, ...]) -> None:
    """Makes Redis evict every key of ``gone`` and none of ``keep``, then lifts maxmemory.

    Redis' LRU clock ticks once a second, so three ages are made a tick apart: ``gone`` (left
    alone for one tick), then 24 filler keys of 32 KiB written next to the state, then ``keep``,
    touched after one more tick (and before every later write). Then maxmemory is set a little
    above what is used and more fillers are written, one at a time: each write makes Redis evict
    the idlest keys it samples (10 samples of about 30 keys, and its pool of candidates), so the
    keys of ``gone``, older than every other key, go first, long before the old fillers run out;
    the loop stops when ``gone`` is gone. (With ``gone`` as old as the old fillers, it could
    outlive them all, and then tie with ``keep``: seen once in CI.)"""
    time.sleep(1.1)
    for i in range(24):
        r.set(f"old-filler:{i}", FILLER)
    time.sleep(1.1)
    if keep:
        r.touch(*keep)
        # OBJECT IDLETIME does not touch; in seconds of the LRU clock
        idle = {k: int(r.object("idletime", k)) for k in (*gone, "old-filler:0", *keep)}
        assert min(idle[k] for k in gone) > idle["old-filler:0"] > max(idle[k] for k in keep), idle
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used + 16 * 1024)
    try:
        for i in range(200):
            if keep:
                r.touch(*keep)
            r.set(f"filler:{i}", FILLER)
            if not r.exists(*gone):
                break
        else:
            pytest.fail(f"{gone} not evicted after 200 filler keys")
    finally:
        r.config_set("maxmemory", 0)
    assert int(r.info("stats")["evicted_keys"]) > 0
    missing = [k for k in keep if not r.exists(k)]
    assert not missing, f"evicted too: {missing} (the LRU approximation chose a touched key)"


def test_an_evicted_registry_entry_makes_writes_fail_closed(
        engine: str, evicting: tuple[ctxlink.Store, redis.Redis], pb: Any) -> None:
    store, r = evicting
    evict(r, REGISTRY, keep=("ctx:1", STREAM))
    before = r.execute_command("DEBUG", "DIGEST")
    with pytest.raises(ctxlink.SchemaError, match="unknown schema"):
        store.cas("ctx:1", 2, pb.Order(order_id="b", version=3))
    with pytest.raises(ctxlink.SchemaError, match="unknown schema"):
        store.update("ctx:1", lambda o: setattr(o, "order_id", "c"), message_class=pb.Order,
                     timeout=2)
    with pytest.raises(ctxlink.SchemaError, match="unknown schema"):
        store.cas("ctx:2", 0, pb.Order(order_id="n", version=1), schema="order")
    assert r.execute_command("DEBUG", "DIGEST") == before  # nothing written
    snap = store.get("ctx:1")  # reads need no registry entry
    assert snap is not None and snap.version == 2
    assert [c.version for c in store.history("ctx:1")] == [1, 2]
    # registering the schema again repairs it: writes go on, history with them (history=4)
    admin = ctxlink.connect(r, engine=engine)
    assert admin.register_schema("order", pb.fds("order"), message_type=ORDER, history=4) == 1
    assert store.cas("ctx:1", 2, pb.Order(order_id="b", version=3)).ok
    assert [c.version for c in store.history("ctx:1")] == [1, 2, 3]


def test_an_evicted_history_stream_restarts_at_the_next_write(
        engine: str, evicting: tuple[ctxlink.Store, redis.Redis], pb: Any) -> None:
    store, r = evicting
    evict(r, (STREAM,), keep=(*REGISTRY, "ctx:1"))
    snap = store.get("ctx:1")
    assert snap is not None and snap.version == 2 and snap.decode(pb.Order).order_id == "a"
    assert store.history("ctx:1") == []
    assert store.cas("ctx:1", 2, pb.Order(order_id="b", version=3), by="w2").ok
    hist = store.history("ctx:1")
    assert [(c.version, c.kind, c.updated_by, c.incarnation) for c in hist] == [
        (3, "update", "w2", snap.incarnation)]


def test_an_evicted_context_wakes_its_waiters_with_not_found(
        engine: str, evicting: tuple[ctxlink.Store, redis.Redis], pb: Any) -> None:
    store, r = evicting
    old = store.get("ctx:1")
    assert old is not None
    outcome: list[Any] = []

    def waiter() -> None:
        w = ctxlink.connect(r.__class__(connection_pool=redis.ConnectionPool(
            **r.connection_pool.connection_kwargs)), engine=engine)
        try:
            outcome.append(w.wait("ctx:1", 2, 15))
        except Exception as e:  # noqa: BLE001 - the outcome is checked below
            outcome.append(e)
        finally:
            w.client.close()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.3)  # the waiter is blocked (module) / subscribed (Lua)
    # keep nothing: the Lua engine's waiter re-reads ctx:1 once a second (which makes it as
    # recent as the keys touched), so the registry may go too; it is registered again below
    evict(r, ("ctx:1",), keep=())
    t0 = time.monotonic()
    t.join(10)
    assert not t.is_alive(), "the waiter did not wake"
    assert isinstance(outcome[0], ctxlink.NotFoundError), outcome
    # the Lua engine sees an eviction as an expiry: at its once-a-second re-check
    assert time.monotonic() - t0 < 3
    assert store.get("ctx:1") is None
    if r.exists(*REGISTRY) != len(REGISTRY):
        ctxlink.connect(r, engine=engine).register_schema("order", pb.fds("order"),
                                                          message_type=ORDER, history=4)
    # a create starts a fresh history (a stream left behind is dropped) and a new incarnation
    assert store.cas("ctx:1", 0, pb.Order(order_id="new", version=1), schema="order").ok
    hist = store.history("ctx:1")
    assert [(c.version, c.kind) for c in hist] == [(1, "create")]
    assert hist[0].incarnation != old.incarnation
