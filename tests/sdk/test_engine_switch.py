"""Moving a dataset between a server with the module and a stock server, through real RDB files.

Contexts and schemas written by one engine are served, validated and updated by the other after
the RDB is loaded, in both directions.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ctxlink
import pytest
from ctxlink.embedded import EmbeddedRedis
from ctxlink.embedded import find_module
from sdk_support import Protos  # type: ignore[import-not-found]


def _save_to(server: EmbeddedRedis, target: Path) -> None:
    r = server.client()
    r.save()
    r.close()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(server.dir / "dump.rdb", target / "dump.rdb")


def _order(protos: Protos, version: int, **fields: Any) -> Any:
    return protos.Order(version=version, **fields)


def _bad_payload(protos: Protos, version: int) -> bytes:
    """Valid fields, then items[0].sku with invalid UTF-8."""
    return _order(protos, version).SerializeToString() + b"\x52\x03\x0a\x01\xff"


def test_module_dataset_is_served_and_validated_by_the_lua_engine(protos: Protos, tmp_path: Path) -> None:
    with EmbeddedRedis(module=find_module()) as primary:
        store = ctxlink.connect(primary.client())
        assert store.engine == "module"
        store.register_schema("order", protos.fds["order"], message_type="ctxlink.example.Order")
        assert store.cas("order:1", 0, _order(protos, 1, order_id="o-1"), schema="order").ok
        assert store.cas("order:1", 1, _order(protos, 2, order_id="o-1", base_price=100)).ok
        before = primary.client().get("order:1")
        _save_to(primary, tmp_path / "stock")

    with EmbeddedRedis(directory=tmp_path / "stock") as stock:
        r = stock.client()
        assert r.get("order:1") == before
        store = ctxlink.connect(r)
        assert store.engine == "lua"
        snap = store.get("order:1")
        assert snap is not None and snap.version == 2 and snap.schema == "order"
        assert snap.decode(protos.Order).base_price == 100
        with pytest.raises(ctxlink.ValidationError):
            store.cas("order:1", 2, _bad_payload(protos, 3))
        assert r.get("order:1") == before
        result = store.cas("order:1", 2, _order(protos, 3, order_id="o-1", base_price=90), by="pricing")
        assert result.ok and result.version == 3
        conflict = store.cas("order:1", 2, _order(protos, 3))
        assert not conflict.ok and conflict.current is not None and conflict.current.version == 3
        assert store.schemas() == ["order"]


def test_lua_dataset_is_served_and_validated_by_the_module(protos: Protos, tmp_path: Path) -> None:
    with EmbeddedRedis() as stock:
        store = ctxlink.connect(stock.client())
        assert store.engine == "lua"
        store.register_schema("order", protos.fds["order"], message_type="ctxlink.example.Order")
        assert store.cas("order:7", 0, _order(protos, 1, order_id="o-7"), schema="order", by="router").ok
        before = stock.client().get("order:7")
        _save_to(stock, tmp_path / "module")

    with EmbeddedRedis(module=find_module(), directory=tmp_path / "module") as server:
        r = server.client()
        assert r.get("order:7") == before
        store = ctxlink.connect(r)
        assert store.engine == "module"
        snap = store.get("order:7")
        assert snap is not None and snap.version == 1 and snap.updated_by == "router"
        with pytest.raises(ctxlink.ValidationError):
            store.cas("order:7", 1, _bad_payload(protos, 2))
        assert r.get("order:7") == before
        assert store.cas("order:7", 1, _order(protos, 2, order_id="o-7", discount=5)).ok
        # The module reads the registry entry the Lua engine wrote (its extra `plan` is ignored).
        info = store.get_schema("order")
        assert info is not None and info.revision == 1
        assert r.execute_command("CTX.SCHEMA.LIST") == [b"order"]
