"""Fixtures shared by the Lua engine's test files: a stock server, a module server, and a Lua
engine Store with the demo's ``order`` schema registered (scripts flushed first)."""

from __future__ import annotations

from typing import Any

import pytest

import ctxlink


@pytest.fixture(scope="module")
def stock(module_servers: Any) -> Any:
    return module_servers.start(module=False)


@pytest.fixture(scope="module")
def modsrv(module_servers: Any, module_so: Any) -> Any:
    return module_servers.start(module=True)


@pytest.fixture
def lua(stock: Any) -> ctxlink.Store:
    from test_lua_plan import ORDER, order_fds

    stock.r.flushall()
    stock.r.execute_command("SCRIPT", "FLUSH")
    store = ctxlink.connect(stock.client(), engine="lua")
    assert store.register_schema("order", order_fds(), message_type=ORDER) == 1
    return store
