"""Fixtures: real redis-server processes, compiled test schemas, the ``backend`` fixture.

- ``pb``: session-wide :class:`helpers.ProtoLib` (descriptor sets + message classes).
- ``engine``: module-scoped parameter over ``backends.ENGINES``.
- ``shared_server``: one server per test module and engine, default limits.
- ``backend``: the shared server, FLUSHALLed, wrapped for the engine (tests/backends.py: raw CTX.*
  commands on the module, the shipped SDK on the Lua engine); checked alive afterwards.
- ``same_error_texts_on_both_engines`` (autouse): the error texts a test asserts must be the same
  in its module and Lua runs.
- ``servers``: a per-test :class:`servers.ServerPool` for tests that need their own servers
  (special arguments, restarts, replicas). Every server is stopped at the end of the test and
  the test errors when one crashed.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
import servers as srv  # noqa: E402
from backends import ENGINES, make_backend, start_engine_server  # noqa: E402
from helpers import ProtoLib  # noqa: E402

import ctxlink  # noqa: E402

# The framework suites need the frameworks: `make integrations` runs them, one venv each.
collect_ignore = ["integrations"]


def pytest_configure(config):
    config.addinivalue_line("markers", "stock: runs against a stock redis-server only")
    config.addinivalue_line(
        "markers", "timing: a latency check; asserts medians only (a loaded machine stretches "
        "the tail), reports the rest")
    config.addinivalue_line(
        "markers",
        "engine_texts_differ(reason): the error texts this test asserts may differ between the "
        "engines (a documented Lua-only limit); not compared")
    config.addinivalue_line(
        "markers",
        "module_only(reason): checks something only the native module has (INFO ctx, module "
        "arguments, CTX.* command-line syntax, raw CTX.* commands in MULTI or called from "
        "scripts, key specs and ACL on module commands ...); skipped on the lua engine, which "
        "the suite drives through the SDK, with the reason given")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.ctx_call_passed = report.passed


# test id without its engine -> the error texts the module run saw (the module runs first: the
# engine parameter is module-scoped, ENGINES lists the module first)
_MODULE_ERRORS: dict[str, list[str]] = {}


@pytest.fixture(autouse=True)
def same_error_texts_on_both_engines(request):
    """Every error a test run on both engines asserts (helpers.assert_error / check_error) must
    have the same full text, code and message, on the Lua engine as on the module; schema names
    made by ``uniq`` are compared by position. A test whose texts may differ (a documented
    Lua-only limit) says so with ``engine_texts_differ(reason)``."""
    if "engine" not in request.fixturenames or \
            request.node.get_closest_marker("engine_texts_differ"):
        yield
        return
    engine = request.getfixturevalue("engine")
    helpers.ERROR_LOG = log = []
    helpers.UNIQ_LOG = names = []
    try:
        yield
    finally:
        helpers.ERROR_LOG = helpers.UNIQ_LOG = None
    if not getattr(request.node, "ctx_call_passed", False):
        return
    for i, name in sorted(enumerate(names), key=lambda p: -len(p[1])):
        log[:] = [t.replace(name, f"<uniq {i}>") for t in log]
    key = request.node.nodeid.replace(f"[{engine}-", "[").replace(f"[{engine}]", "[]")
    if engine == "module":
        _MODULE_ERRORS[key] = log
        return
    expected = _MODULE_ERRORS.pop(key, None)
    if expected is not None and expected != log:
        diff = [(m, lua) for m, lua in zip(expected, log) if m != lua]
        pytest.fail("error texts differ between the engines (module, lua): "
                    f"{diff or (expected, log)}", pytrace=False)


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
def store(engine: str, shared_server) -> Iterator[ctxlink.Store]:
    """The shipped SDK on the engine's shared server, emptied (data and scripts); test files
    that need more (schemas registered, another client) define their own."""
    shared_server.assert_alive()
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    s = ctxlink.connect(shared_server.client())
    assert s.engine == engine
    yield s
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
        name = f"{prefix}{next(_names)}"
        if helpers.UNIQ_LOG is not None:
            helpers.UNIQ_LOG.append(name)
        return name
    return make
