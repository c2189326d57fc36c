"""`ctxlink demo` (the three-agent scenario) and the hand-built Order descriptor it uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ctxlink._lua import find_lua_dir
from ctxlink._order_schema import Order, file_descriptor_proto
from ctxlink.embedded import find_module
from google.protobuf import descriptor_pb2
from sdk_support import LUA_MISSING, REPO  # type: ignore[import-not-found]


def protoc_order() -> descriptor_pb2.FileDescriptorProto:
    with_set = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}",
         "--descriptor_set_out=/dev/stdout", "order.proto"],
        check=True, capture_output=True,
    )
    (fdp,) = descriptor_pb2.FileDescriptorSet.FromString(with_set.stdout).file
    return fdp


def fields(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for m in fdp.message_type:
        out[m.name] = [
            (f.name, f.number, f.type, f.label, f.type_name, f.json_name) for f in m.field
        ]
    for e in fdp.enum_type:
        out["enum " + e.name] = [(v.name, v.number) for v in e.value]
    return out


def test_hand_built_order_matches_protoc() -> None:
    ours, theirs = file_descriptor_proto(), protoc_order()
    assert (ours.name, ours.package, ours.syntax) == (theirs.name, theirs.package, theirs.syntax)
    assert fields(ours) == fields(theirs)
    assert ours == theirs  # nothing else differs either (no options, no imports)


def test_hand_built_order_encodes_like_protoc() -> None:
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(protoc_order())
    Theirs = message_factory.GetMessageClass(pool.FindMessageTypeByName("ctxlink.example.Order"))
    o = Order(order_id="o-1", version=3, status=2, base_price=12_500, discount=1_000,
              final_price=11_500, inventory_reserved=True, last_updated_by="pricing",
              last_updated_epoch=1764100000123)
    o.items.add(sku="KB-101", quantity=2)
    raw = o.SerializeToString()
    assert Theirs.FromString(raw).SerializeToString() == raw


def run_demo_cli(engine: str, orders: int = 120) -> str:
    env = dict(os.environ)
    env.setdefault("CTXLINK_MODULE", str(find_module()))
    proc = subprocess.run(
        [sys.executable, "-m", "ctxlink", "demo", "--engine", engine, "--orders", str(orders)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def row(out: str, name: str) -> list[str]:
    for line in out.splitlines():
        if line.startswith(name):
            return re.split(r"\s{2,}", line[len(name):].strip())
    raise AssertionError(f"no row {name!r} in:\n{out}")


def first_int(cell: str) -> int:
    return int(cell.split()[0])


@pytest.mark.parametrize("engine", ["module", "lua"])
def test_demo_table(engine: str) -> None:
    if engine == "module" and not find_module().exists():
        pytest.skip("build/ctxlink.so is not built")
    if engine == "lua" and find_lua_dir() is None:
        pytest.skip(LUA_MISSING)
    out = run_demo_cli(engine)
    header = next(
        line for line in out.splitlines() if "naive HGET/HSET" in line and "ctxlink" in line
    )
    assert f"ctxlink ({engine})" in header and f"ctxlink ({engine}, reads)" in header
    assert row(out, "orders") == ["120", "120", "120"]
    naive_lost, *ours_lost = row(out, "lost updates (effects missing)")
    assert first_int(naive_lost) >= 0
    assert [first_int(c) for c in ours_lost] == [0, 0]
    naive_stale, *ours_stale = row(out, "stale writes (on outdated read)")
    assert first_int(naive_stale) >= 0 and [first_int(c) for c in ours_stale] == [0, 0]
    assert row(out, "final_price != base - discount")[1:] == ["0", "0"]
    assert row(out, "surcharge applied twice")[1:] == ["0", "0"]
    assert row(out, "updates given up")[1:] == ["0", "0"]
    naive_conf, *ours_conf = row(out, "conflicts retried (rate)")
    assert naive_conf == "not detected" and all(first_int(c) >= 0 for c in ours_conf)
    # declared reads: the Fulfillment Checker reads nothing another agent writes: no conflict
    per_agent = row(out, "  by fulfillment / pricing / router")
    assert per_agent[-1].split(" / ")[0] == "0"
    for name in ("p50 read latency", "p99 write latency"):
        for cell in row(out, name):
            assert re.fullmatch(r"\d+\.\d{3} ms", cell), cell
    assert all(re.fullmatch(r"\d+\.\d\d s", c) for c in row(out, "wall time"))


def test_console_script() -> None:
    script = Path(sys.executable).parent / "ctxlink"
    if not script.exists():
        pytest.skip("the ctxlink console script is not installed (pip install -e .)")
    proc = subprocess.run([str(script), "demo", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--engine" in proc.stdout and "--orders" in proc.stdout
