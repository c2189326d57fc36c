"""Fixtures for the SDK tests: one server per engine for the session, compiled test schemas."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from ctxlink.embedded import EmbeddedRedis
from ctxlink._lua import find_lua_dir
from ctxlink.embedded import find_module
from sdk_support import LUA_MISSING, SDK_ENGINES, Protos  # type: ignore[import-not-found]


@pytest.fixture(scope="session")
def protos(tmp_path_factory: pytest.TempPathFactory) -> Protos:
    return Protos(tmp_path_factory.mktemp("sdk-protos"))


@pytest.fixture(scope="session")
def module_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(module=find_module()) as server:
        yield server


@pytest.fixture(scope="session")
def stock_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(params=SDK_ENGINES)
def sdk_engine(request: pytest.FixtureRequest) -> str:
    if request.param == "lua" and find_lua_dir() is None:
        pytest.skip(LUA_MISSING)
    return request.param


@pytest.fixture
def server(sdk_engine: str, request: pytest.FixtureRequest) -> EmbeddedRedis:
    name = "module_server" if sdk_engine == "module" else "stock_server"
    srv: EmbeddedRedis = request.getfixturevalue(name)
    r = srv.client()
    r.flushall()
    r.config_resetstat()
    r.close()
    return srv


@pytest.fixture
def client(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    r = server.client()
    yield r
    r.close()
