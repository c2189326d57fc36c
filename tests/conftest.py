"""Fixtures: real redis-server processes, compiled test schemas, the ``backend`` fixture.

- ``pb``: session-wide :class:`helpers.ProtoLib` (descriptor sets + message classes).
- ``engine``: module-scoped parameter over ``backends.ENGINES``.
- ``shared_server``: one server per test module and engine, default limits.
- ``backend``: the shared server, FLUSHALLed, wrapped for the engine (tests/backends.py: raw CTX.*
  commands on the module, the shipped SDK on the Lua engine); checked alive afterwards.
- ``servers``: a per-test :class:`servers.ServerPool` for tests that need their own servers
  (special arguments, restarts, replicas). Every server is stopped at the end of the test and
  the test errors when one crashed.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers as srv  # noqa: E402
from backends import ENGINES, make_backend, start_engine_server  # noqa: E402
from helpers import ProtoLib  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "stock: runs against a stock redis-server only")
    config.addinivalue_line(
        "markers",
        "module_only(reason): checks something only the native module has (INFO ctx, module "
        "arguments, CTX.* command-line syntax, raw CTX.* commands in MULTI or called from "
        "scripts, key specs and ACL on module commands ...); skipped on the lua engine, which "
        "the suite drives through the SDK, with the reason given")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("module_only")
        if marker is None:
            continue
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("engine") if callspec is not None else None
        if engine is not None and engine != "module":
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else
                                                     "needs the native module")
            item.add_marker(pytest.mark.skip(reason=f"module only: {reason}"))


@pytest.fixture(scope="session")
def module_so() -> Path:
    try:
        return srv.module_path()
    except srv.ModuleMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def pb(tmp_path_factory) -> ProtoLib:
    return ProtoLib(tmp_path_factory.mktemp("protos"))


def _pool(tmp_path_factory):
    return srv.ServerPool(lambda name: tmp_path_factory.mktemp(name))


def _stop_pool(pool):
    problems = pool.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def servers(tmp_path_factory):
    pool = _pool(tmp_path_factory)
    yield pool
    _stop_pool(pool)


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory):
    """A pool living as long as the test module (for shared special-purpose servers)."""
    pool = _pool(tmp_path_factory)
    yield pool
    _stop_pool(pool)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def shared_server(engine, module_servers, module_so):
    return start_engine_server(module_servers, engine)


@pytest.fixture
def backend(engine, shared_server):
    shared_server.assert_alive()
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    b = make_backend(engine, shared_server)
    yield b
    shared_server.assert_alive()


@pytest.fixture
def r(backend):
    """The redis-py client of ``backend`` (bytes replies)."""
    return backend.r


_names = itertools.count(1)


@pytest.fixture
def uniq():
    """Fresh schema names, so a test that registers its own definitions never reuses a
    (name, revision) another test registered with a different definition."""
    def make(prefix: str = "s") -> str:
        return f"{prefix}{next(_names)}"
    return make
