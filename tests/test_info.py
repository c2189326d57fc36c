"""INFO ctx counters and the module's name (docs/PROTOCOL.md, "Module arguments and INFO")."""

from __future__ import annotations

import pytest

from helpers import assert_error
from wire import f_len, f_varint

COUNTERS = ["ctx_cas_ok", "ctx_cas_conflicts", "ctx_del_ok", "ctx_get_hits", "ctx_get_misses",
            "ctx_rejected_invalid", "ctx_rejected_version", "ctx_rejected_toobig",
            "ctx_rejected_schema", "ctx_schemas_loaded", "ctx_schema_cache_bytes",
            "ctx_schema_cache_evictions", "ctx_schema_keynames_cached", "ctx_core_allocated_bytes",
            "ctx_patch_ok", "ctx_replays", "ctx_rejected_field", "ctx_protocol", "ctx_touch_ok",
            "ctx_gone"]
CACHE_GAUGES = ["ctx_schemas_loaded", "ctx_schema_cache_bytes", "ctx_schema_cache_evictions",
                "ctx_schema_keynames_cached", "ctx_core_allocated_bytes", "ctx_protocol"]


def ctx_info(backend) -> dict:
    with backend.server.raw() as c:
        text = c.call("INFO", "ctx").decode()
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


pytestmark = pytest.mark.module_only(reason="INFO ctx is the native module's")


@pytest.fixture
def module_only(backend):
    return backend


def test_info_ctx_has_the_ctx_stats_section_with_every_counter(module_only):
    with module_only.server.raw() as c:
        text = c.call("INFO", "ctx").decode()
    assert "# ctx_stats" in text, text
    assert "# ctx_config" in text, text
    info = ctx_info(module_only)
    for name in COUNTERS:
        assert name in info, f"{name} missing from INFO ctx: {text}"
        assert info[name].isdigit(), f"{name}:{info[name]}"


def test_info_everything_includes_the_module_section(module_only):
    with module_only.server.raw() as c:
        text = c.call("INFO", "everything").decode()
    assert "# ctx_stats" in text


def test_module_is_named_ctx(module_only):
    modules = module_only.r.execute_command("MODULE", "LIST")
    names = [dict(zip(m[::2], m[1::2]))[b"name"] for m in modules]
    assert b"ctx" in names, modules


def test_counters_move_as_documented(module_only, pb, r):
    b = module_only
    pb.register(b, "order")
    before = {k: int(v) for k, v in ctx_info(b).items() if k in COUNTERS}

    assert b.cas("order:1", 0, pb.order(1), schema="order") == 1               # cas_ok
    assert b.cas("order:1", 1, pb.order(2)) == 2                              # cas_ok
    assert b.cas("order:2", 0, pb.order(1), schema="order") == 1              # cas_ok
    assert b.cas("order:1", 1, pb.order(2)) is not None                       # conflict
    assert b.cas("order:9", 3, pb.order(4)) is None                           # conflict (nil)
    assert b.delete("order:1", 7) is not None                                 # conflict
    assert b.delete("order:9", 1) is None                                     # conflict (nil)
    assert b.delete("order:2", 1) == 1                                        # del_ok
    assert b.get("order:1")[0] == 2                                           # hit
    assert b.get("order:1")[0] == 2                                           # hit
    assert b.get("order:404") is None                                         # miss
    assert_error("CTXINVALID", b.cas, "order:1", 2, f_varint(2, 3) + f_len(1, b"\xff"))
    assert_error("CTXINVALID", b.cas, "order:3", 0, b"\xff", schema="order")
    assert_error("CTXVERSION", b.cas, "order:1", 2, pb.order(9))
    assert_error("CTXSCHEMA", b.cas, "order:3", 0, pb.order(1))
    assert_error("CTXSCHEMA", b.cas, "order:3", 0, pb.order(1), schema="nosuch")
    assert_error("CTXSCHEMA", b.cas, "order:1", 2, pb.order(3), schema="other")
    assert_error("CTXTOOBIG", b.cas, "order:3", 0, b"\x00" * (1048576 + 1), schema="order")
    assert b.cas("order:1", 2, pb.order(3), write_id="w") == 3                 # cas_ok
    assert b.cas("order:1", 2, pb.order(3), write_id="w") == [b"replayed", 3]  # replay
    assert b.patch("order:1", 3, f_varint(4, 1), [4], write_id="p")[0] == 4    # patch_ok
    assert b.patch("order:1", 3, f_varint(4, 1), [4], write_id="p")[0] == b"replayed"
    assert b.patch("order:1", 1, f_varint(4, 1), [4])[6] == [4]                # conflict
    assert_error("CTXFIELD", b.patch, "order:1", 4, b"", [77])
    inc = b.get("order:1")[5].decode()
    assert b.command("CTX.TOUCH", "order:1", 100_000) == 1                      # touch_ok
    assert b.command("CTX.TOUCH", "order:404", 100_000) == 0
    assert_error("CTXGONE", b.command, "CTX.DEL", "order:1", 4, "INC", "1" * 16)  # gone
    assert b.command("CTX.DEL", "order:1", 9, "INC", inc) is not None            # conflict

    after = {k: int(v) for k, v in ctx_info(b).items() if k in COUNTERS}
    delta = {k: after[k] - before[k] for k in COUNTERS}
    assert delta == {
        "ctx_cas_ok": 4,
        "ctx_cas_conflicts": 6,
        "ctx_patch_ok": 1,
        "ctx_replays": 2,
        "ctx_rejected_field": 1,
        "ctx_protocol": 0,
        "ctx_touch_ok": 1,
        "ctx_gone": 1,
        "ctx_del_ok": 1,
        "ctx_get_hits": 3,
        "ctx_get_misses": 1,
        "ctx_rejected_invalid": 2,
        "ctx_rejected_version": 1,
        "ctx_rejected_toobig": 1,
        "ctx_rejected_schema": 3,
        **{k: delta[k] for k in CACHE_GAUGES},
    }
    assert after["ctx_schemas_loaded"] >= 1
    assert after["ctx_protocol"] == 3


def test_schemas_loaded_counts_compiled_schemas(module_only, pb):
    b = module_only
    for name in ("order", "doc", "node"):
        pb.register(b, name)
    b.cas("o", 0, pb.order(1), schema="order")
    b.cas("n", 0, f_varint(1, 1), schema="node")
    doc = pb.cls("versions", "ctxlink.test.v.Doc")
    b.cas("d", 0, doc(rev=1).SerializeToString(), schema="doc")
    assert int(ctx_info(b)["ctx_schemas_loaded"]) >= 3


def test_cache_figures_follow_compiled_schemas(module_only, pb):
    b = module_only
    b.r.flushall()  # empties the compiled-schema cache
    info = {k: int(v) for k, v in ctx_info(b).items() if k in CACHE_GAUGES}
    assert (info["ctx_schemas_loaded"], info["ctx_schema_cache_bytes"],
            info["ctx_schema_keynames_cached"]) == (0, 0, 0)
    pb.register(b, "order")
    pb.register(b, "node")
    info = {k: int(v) for k, v in ctx_info(b).items() if k in CACHE_GAUGES}
    assert info["ctx_schemas_loaded"] == 2
    assert 0 < info["ctx_schema_cache_bytes"] <= info["ctx_core_allocated_bytes"]
    b.cas("o", 0, pb.order(1), schema="order")
    assert_error("CTXSCHEMA", b.cas, "x", 0, pb.order(1), schema="nosuch")
    assert_error("CTXSCHEMA", b.cas, "x", 0, pb.order(1), schema="no such")
    assert int(ctx_info(b)["ctx_schema_keynames_cached"]) == 1  # registered names only
    b.r.flushall()
    info = {k: int(v) for k, v in ctx_info(b).items() if k in CACHE_GAUGES}
    assert (info["ctx_schemas_loaded"], info["ctx_schema_cache_bytes"],
            info["ctx_schema_keynames_cached"], info["ctx_core_allocated_bytes"]) == (0, 0, 0, 0)
