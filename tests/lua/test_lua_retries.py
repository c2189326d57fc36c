"""The Lua engine's retries through the shipped SDK on real servers: the script cache flushed in
the middle of an update (NOSCRIPT: the plan is loaded again and the write lands once), a schema
re-registered between the read and the write of an update (stale: regenerated, same write id,
lands once), a cluster node that lost its scripts, and Redis 6.2 refusing a plan Lua cannot load
with the same CTXSCHEMA text as 7.0.
"""

from __future__ import annotations

from typing import Any

import pytest
from ctxvalue import decode
from redis.cluster import RedisCluster
from test_cluster import pb as cluster_pb  # noqa: F401  (module fixture of the cluster tests)
from test_cluster import stock_cluster  # noqa: F401
from test_lua_limits import BIG, TOO_LARGE, big_enum_fds, make_unloadable
from test_lua_plan import ORDER, REDIS62, order_fds

import ctxlink

Order: Any = ctxlink._order_schema.Order  # type: ignore[attr-defined]


def test_script_flush_in_the_middle_of_an_update_reloads_and_the_write_lands_once(lua, stock):
    assert lua.cas("o:1", 0, Order(version=1, order_id="a"), schema="order").ok

    def fn(o: Any) -> None:
        stock.r.execute_command("SCRIPT", "FLUSH")  # between the read and the write
        o.discount = 7

    version, _ = lua.update("o:1", fn, message_class=Order)
    assert version == 2
    value = decode(stock.r.get("o:1"))
    assert value.version == 2 and len(value.window) == 2


def test_a_registration_between_read_and_write_is_a_stale_plan_and_lands_once(lua, stock, pb):
    assert lua.cas("o:1", 0, Order(version=1, order_id="a"), schema="order").ok
    other = ctxlink.connect(stock.client(), engine="lua")

    def fn(o: Any) -> None:
        if o.version == 1:  # re-register under the update's feet, once
            assert other.register_schema("order", pb.fds("order_v2_compat"),
                                         message_type=ORDER) == 2
        o.discount = 3

    version, _ = lua.update("o:1", fn, message_class=Order)
    assert version == 2
    value = decode(stock.r.get("o:1"))
    assert value.version == 2 and len(value.window) == 2


def test_a_cluster_node_that_lost_its_scripts_gets_them_again(stock_cluster):  # noqa: F811
    rc = RedisCluster(host="127.0.0.1", port=stock_cluster[0].port)
    try:
        store = ctxlink.connect(rc, engine="lua")
        assert store.register_schema("rt", order_fds(), message_type=ORDER) == 1
        keys = [f"rt:{i}" for i in range(30)]
        for k in keys:
            assert store.cas(k, 0, Order(version=1), schema="rt").ok
        stock_cluster[1].client().execute_command("SCRIPT", "FLUSH")
        for k in keys:
            assert store.cas(k, 1, Order(version=2)).ok
            assert store.get(k).version == 2
    finally:
        rc.close()


def test_redis_6_2_refuses_a_plan_lua_cannot_load_with_the_same_text(monkeypatch):
    from ctxlink.embedded import EmbeddedRedis

    with EmbeddedRedis(binary=str(REDIS62)) as server:
        store = ctxlink.connect(server.client(), engine="lua")
        assert store.register_schema("order", order_fds(), message_type=ORDER) == 1
        assert store.cas("o:1", 0, Order(version=1), schema="order").ok
        make_unloadable(monkeypatch)
        with pytest.raises(ctxlink.SchemaError, match=TOO_LARGE):
            store.register_schema("big", big_enum_fds(10), message_type=BIG)
        assert store.cas("o:1", 1, Order(version=2)).ok
