"""Several clients registering the same new schema at the same moment, on both engines
(docs/PROTOCOL.md, "Compatibility categories": the Lua engine's read of the entry is one atomic
``HGETALL``). The module's CTX.SCHEMA.SET is atomic; the Lua engine's registration reads the entry,
decides through the C core, then writes with schema_set.lua: a registration landing between two
reads of one decision must not look like an entry that "cannot be read"."""

from __future__ import annotations

import threading
from typing import Any

import servers as srv

import ctxlink

ORDER = "ctxlink.example.Order"
CLIENTS = 6
ROUNDS = 15


def _race(server: srv.Server, engine: str, pb: Any, name: str) -> list[Any]:
    """CLIENTS stores (one connection each) register ``name`` after one barrier; their results
    (a revision or the exception)."""
    stores = [ctxlink.connect(server.client(socket_timeout=10), engine=engine)
              for _ in range(CLIENTS)]
    for s in stores:
        s.schemas()  # connected and scripts loaded: the race is the registration alone
    barrier = threading.Barrier(CLIENTS)
    results: list[Any] = [None] * CLIENTS

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stores[i].register_schema(name, pb.fds("order"), message_type=ORDER)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.client.close()
    return results


def test_identical_registrations_of_a_new_schema_at_once_all_succeed(
        engine: str, shared_server: srv.Server, pb: Any, uniq: Any) -> None:
    shared_server.r.flushall()
    for _ in range(ROUNDS):
        name = uniq("race")
        results = _race(shared_server, engine, pb, name)
        assert results == [1] * CLIENTS, results
        info = ctxlink.connect(shared_server.client(), engine=engine).get_schema(name)
        assert info is not None and info.revision == 1 and info.message_type == ORDER
