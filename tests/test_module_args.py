"""Module arguments (docs/PROTOCOL.md, "Module arguments and INFO"): a bad argument makes the
module refuse to load with a log line naming it; good ones apply."""

from __future__ import annotations

import pytest
import redis

from backends import ModuleBackend
from helpers import assert_error, write_registry
from wire import f_len, f_msg, f_str, f_varint

CONFIG_FIELDS = ["ctx_max_payload_bytes", "ctx_max_depth", "ctx_unknown_fields",
                 "ctx_max_schema_bytes", "ctx_schema_cache_bytes_limit"]

BAD_ARGS = [
    (["max-payload-bytes", "0"], "max-payload-bytes"),
    (["max-payload-bytes", "536870913"], "max-payload-bytes"),
    (["max-payload-bytes", "-1"], "max-payload-bytes"),
    (["max-payload-bytes", "abc"], "max-payload-bytes"),
    (["max-payload-bytes", "1.5"], "max-payload-bytes"),
    (["max-payload-bytes", "99999999999999999999999"], "max-payload-bytes"),
    (["max-depth", "0"], "max-depth"),
    (["max-depth", "101"], "max-depth"),
    (["max-depth", "x"], "max-depth"),
    (["unknown-fields", "maybe"], "unknown-fields"),
    (["unknown-fields", "1"], "unknown-fields"),
    (["max-schema-bytes", "0"], "max-schema-bytes"),
    (["max-schema-bytes", "536870913"], "max-schema-bytes"),
    (["schema-cache-bytes", "-1"], "schema-cache-bytes"),
    (["schema-cache-bytes", "1099511627777"], "schema-cache-bytes"),
    (["schema-cache-bytes", "256MB"], "schema-cache-bytes"),
    (["schema-cache-bytes"], "schema-cache-bytes"),
    (["bogus", "1"], "bogus"),
    (["max-depth"], "max-depth"),
    (["max-depth", "4", "max-payload-bytes"], "max-payload-bytes"),
]


@pytest.mark.parametrize("args,named", BAD_ARGS, ids=["_".join(a) for a, _ in BAD_ARGS])
def test_bad_module_argument_refuses_to_load(servers, module_so, args, named):
    s = servers.start_failing(module=True, module_args=args)
    assert s.proc.returncode != 0
    log = s.log_text()
    assert named in log, f"no log line names {named!r}:\n{s.log_tail()}"
    assert s.crash_report() is None, s.crash_report()


def test_module_load_command_with_a_bad_argument_fails(servers, module_so):
    s = servers.start()
    with pytest.raises(redis.ResponseError):
        s.r.execute_command("MODULE", "LOAD", str(module_so), "max-depth", "0")
    assert s.r.execute_command("MODULE", "LIST") == []
    assert "max-depth" in s.log_text()
    with pytest.raises(redis.ResponseError):
        s.r.execute_command("CTX.GET", "k")


def test_module_load_at_runtime_uses_existing_registry_keys(servers, module_so, pb):
    s = servers.start()
    write_registry(s.r, "order", "ctxlink.example.Order", pb.fds("order"))
    assert s.r.execute_command("MODULE", "LOAD", str(module_so), "max-depth", "8") in (b"OK", True)
    b = ModuleBackend(s)
    assert b.cas("o", 0, pb.order(1), schema="order") == 1
    assert_error("CTXINVALID", b.cas, "o", 1, f_varint(2, 2) + f_len(1, b"\xff"))


@pytest.mark.parametrize("args", [
    ["max-payload-bytes", "1", "max-depth", "1", "max-schema-bytes", "1", "unknown-fields", "reject",
     "schema-cache-bytes", "0"],
    ["max-payload-bytes", "536870912", "max-depth", "100", "max-schema-bytes", "536870912",
     "unknown-fields", "allow", "schema-cache-bytes", "1099511627776"],
    [],
], ids=["minimum", "maximum", "defaults"])
def test_boundary_arguments_load(servers, module_so, args):
    s = servers.start(module=True, module_args=args)
    assert ModuleBackend(s).schema_list() == []


def test_smallest_limits_apply(servers, module_so, pb):
    s = servers.start(module=True, module_args=["max-schema-bytes", "1"])
    assert_error("CTXSCHEMA", ModuleBackend(s).schema_set, "order", "ctxlink.example.Order",
                 pb.fds("order"))
    s = servers.start(module=True, module_args=["max-payload-bytes", "1"])
    b = ModuleBackend(s)
    assert b.schema_set("order", "ctxlink.example.Order", pb.fds("order")) == 1
    assert_error("CTXTOOBIG", b.cas, "o", 0, pb.order(1), schema="order")  # 2 bytes
    assert_error("CTXINVALID", b.cas, "o", 0, b"\x08", schema="order")  # 1 byte: size is fine


def test_good_arguments_apply(servers, module_so, pb):
    s = servers.start(module=True, module_args=["max-payload-bytes", "300", "max-depth", "4",
                                                "unknown-fields", "allow",
                                                "max-schema-bytes", "100000"])
    b = ModuleBackend(s)
    assert b.schema_set("order", "ctxlink.example.Order", pb.fds("order")) == 1
    assert b.schema_set("node", "ctxlink.test.Node", pb.fds("node")) == 1
    # max-payload-bytes 300
    assert_error("CTXTOOBIG", b.cas, "o", 0, pb.order(1, order_id="x" * 300), schema="order")
    # unknown-fields allow
    assert b.cas("o", 0, pb.order(1) + f_varint(99, 1), schema="order") == 1
    # max-depth 4
    deep = f_varint(1, 1) + f_msg(2, f_msg(2, f_msg(2, f_msg(2, f_msg(2, f_msg(2, f_str(3, "x")))))))
    assert_error("CTXINVALID", b.cas, "n", 0, deep, schema="node")
    assert b.cas("n", 0, f_varint(1, 1) + f_msg(2, f_msg(2, f_str(3, "x"))), schema="node") == 1


def test_module_list_reports_the_arguments(servers, module_so):
    s = servers.start(module=True, module_args=["max-depth", "7"])
    modules = s.r.execute_command("MODULE", "LIST")
    ctx = [dict(zip(m[::2], m[1::2])) for m in modules]
    ctx = [m for m in ctx if m[b"name"] == b"ctx"]
    assert len(ctx) == 1, modules
    assert ctx[0].get(b"args", [b"max-depth", b"7"]) == [b"max-depth", b"7"]


def test_config_section_of_info_reports_the_arguments(servers, module_so):
    s = servers.start(module=True, module_args=["max-payload-bytes", "300", "max-depth", "4",
                                                "unknown-fields", "allow",
                                                "max-schema-bytes", "100000",
                                                "schema-cache-bytes", "12345"])
    info = s.r.info("ctx")
    assert {k: v for k, v in info.items() if k in CONFIG_FIELDS} == {
        "ctx_max_payload_bytes": 300,
        "ctx_max_depth": 4,
        "ctx_unknown_fields": "allow",
        "ctx_max_schema_bytes": 100000,
        "ctx_schema_cache_bytes_limit": 12345,
    }
    s = servers.start(module=True)
    info = s.r.info("ctx")
    assert {k: v for k, v in info.items() if k in CONFIG_FIELDS} == {
        "ctx_max_payload_bytes": 1048576,
        "ctx_max_depth": 32,
        "ctx_unknown_fields": "reject",
        "ctx_max_schema_bytes": 4194304,
        "ctx_schema_cache_bytes_limit": 268435456,
    }
