"""Fixtures of the framework suites (`make integrations`, one venv per framework).

`make test` never collects this folder (tests/conftest.py's collect_ignore): the frameworks are
not installed in .venv. Every test runs on both engines: a redis-server with build/ctxlink.so
loaded, and a stock one where the SDK uses the Lua scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from ctxlink.embedded import EmbeddedCluster, EmbeddedRedis  # noqa: E402

ENGINES = ("module", "lua")


def _start(engine: str) -> EmbeddedRedis:
    module = ROOT / "build" / "ctxlink.so" if engine == "module" else None
    if module is not None and not module.exists():
        pytest.fail("build/ctxlink.so is missing: run `make` first")
    return EmbeddedRedis(module=module, die_with_parent=True).start()


@pytest.fixture(scope="session", params=ENGINES)
def redis_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    server = _start(request.param)
    server.engine = request.param  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis_server.client()
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="module", params=ENGINES)
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of three primaries on loopback, slots split evenly: the module loaded on
    every node, or stock nodes where the SDK uses the Lua engine (``.engine`` says which)."""
    module = ROOT / "build" / "ctxlink.so" if request.param == "module" else None
    with EmbeddedCluster(3, module=module, die_with_parent=True) as cluster:
        cluster.engine = request.param  # type: ignore[attr-defined]
        yield cluster


def registry_blind_agent(url: str, engine: str, user: str) -> str:
    """The URL of a new ACL user that may not read the schema registry where the engine allows
    it (module: no rights on ``__ctx:*``, no ``CTX.SCHEMA.*``). The Lua engine's agent needs read
    rights on ``__ctx:*`` to write at all (cas.lua reads the registry), so there it reads the
    registry and may not write it."""
    import redis

    if engine == "module":
        line = ["on", ">pw", "~ctx:*", "+@all", "-@admin", "-@dangerous", "-ctx.schema.get",
                "-ctx.schema.set", "-ctx.schema.del"]
    else:
        line = ["on", ">pw", "~ctx:*", "%R~__ctx:*", "+@all", "-@admin", "-@dangerous",
                "&__ctx:wait:*"]
    admin = redis.Redis.from_url(url)
    try:
        admin.execute_command("ACL", "SETUSER", user, "reset", *line)
    finally:
        admin.close()
    return url.replace("redis://", f"redis://{user}:pw@", 1)
