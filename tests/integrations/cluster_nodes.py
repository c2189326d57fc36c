"""A real Redis Cluster of three primaries on loopback for the framework suites (module or Lua
engine), as a context manager that yields the port of its first node. Imports no framework."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from ctxlink.embedded import EmbeddedRedis, free_port

from conftest import ROOT

RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


def _until(pred: Any, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def three_primaries(engine: str) -> Iterator[int]:
    """Three cluster-enabled redis-servers (build/ctxlink.so loaded for ``engine`` "module"),
    the slots split in three, met and ``cluster_state:ok``; closed on exit."""
    module = ROOT / "build" / "ctxlink.so" if engine == "module" else None
    nodes: list[EmbeddedRedis] = []
    try:
        buses = []
        for _ in RANGES:
            bus = free_port()
            nodes.append(EmbeddedRedis(module=module, die_with_parent=True,
                                       args=["--cluster-enabled", "yes", "--cluster-port",
                                             str(bus), "--cluster-node-timeout", "5000"]).start())
            buses.append(bus)
        clients = [n.client() for n in nodes]
        for c, (lo, hi) in zip(clients, RANGES, strict=True):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for n, bus in zip(nodes[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
        _until(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                           for c in clients), "cluster_state:ok")
        for c in clients:
            c.close()
        yield nodes[0].port
    finally:
        for n in nodes:
            n.close()
