"""The wheel, installed into a fresh venv outside the repository, works on its own.

Run by ``make test-wheel``: the Makefile builds the wheel (``make wheel``), installs it into a new
venv in a temporary directory, copies this file there and runs it from there with that venv's
python, so nothing of the checkout is on ``sys.path``. ``CTXLINK_MODULE`` names the built module
(``build/ctxlink.so``) and ``CTXLINK_CHECKOUT`` the checkout (only to prove it is not used).

Checked: the package and its validation-core extension load from site-packages; the Lua scripts
ship inside the package; on a server with the module and on a stock one,
``connect(local_check=True)`` registers a schema, writes with and without ``schema=`` (once the
context's schema is known), reads, updates with and without ``schema=``, and refuses an invalid
payload locally.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import ctxlink
from ctxlink.embedded import EmbeddedRedis, find_module

CHECKOUT = Path(os.environ.get("CTXLINK_CHECKOUT", "/nonexistent")).resolve()
SITE = Path(sysconfig.get_paths()["platlib"]).resolve()


def _item_class() -> Any:
    """A message type built in code (no protoc): ``pkgtest.Item {name, version, qty}``."""
    fdp = descriptor_pb2.FileDescriptorProto(name="pkgtest/item.proto", package="pkgtest",
                                             syntax="proto3")
    msg = fdp.message_type.add(name="Item")
    for number, (name, kind) in enumerate(
            [("name", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
             ("version", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
             ("qty", descriptor_pb2.FieldDescriptorProto.TYPE_INT64)], start=1):
        msg.field.add(name=name, number=number, type=kind,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pkgtest.Item"))


Item = _item_class()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)


def test_package_and_extension_load_from_site_packages() -> None:
    import ctxlink._ctxcore as core

    for module in (ctxlink, core):
        path = Path(module.__file__ or "")
        assert _inside(path, SITE), f"{module.__name__} loaded from {path}, not {SITE}"
        assert not _inside(path, CHECKOUT), f"{module.__name__} loaded from the checkout"
    assert Path(core.__file__ or "").name.startswith("_ctxcore.")
    assert not Path(sys.prefix).resolve().is_relative_to(CHECKOUT)


def test_version_comes_from_the_metadata() -> None:
    version = importlib.metadata.version("ctxlink")
    assert ctxlink.__version__ == version
    out = subprocess.run([sys.executable, "-m", "ctxlink", "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["ctxlink", version]


def test_the_module_reports_the_package_version() -> None:
    """pyproject.toml is the one place the version is written: the Makefile passes it to the
    module (CTXLINK_VERSION_NUM, major*10000 + minor*100 + patch), which reports it in
    MODULE LIST."""
    major, minor, patch = (int(x) for x in importlib.metadata.version("ctxlink").split(".")[:3])
    with EmbeddedRedis(module=find_module()) as srv:
        modules = srv.client(decode_responses=True).module_list()
    versions = {m["name"]: m["ver"] for m in modules}
    assert versions["ctx"] == major * 10000 + minor * 100 + patch


def test_wheel_ships_the_lua_scripts_and_not_the_build_script() -> None:
    package = Path(ctxlink.__file__ or "").parent
    scripts = {p.name for p in (package / "lua").glob("*.lua")}
    assert {"cas.lua", "get.lua", "schema_set.lua"} <= scripts
    assert not (package / "_ffi_build.py").exists()


def test_demo_order_type_imports() -> None:
    import ctxlink.demo

    order = vars(ctxlink.demo)["Order"]  # the demo's message class, from proto/order.proto
    assert order.DESCRIPTOR.full_name == "ctxlink.example.Order"


@pytest.fixture(scope="module", params=["module", "stock"])
def server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    module = find_module() if request.param == "module" else None
    if module is not None and not module.exists():
        pytest.fail(f"{module} is missing: run make (CTXLINK_MODULE names it)", pytrace=False)
    with EmbeddedRedis(module=module) as srv:
        yield srv


def _cas_calls(srv: EmbeddedRedis) -> int:
    stats = srv.client().info("commandstats")
    return int(stats.get("cmdstat_ctx.cas", {}).get("calls", 0))


def test_local_check_round_trip(server: EmbeddedRedis) -> None:
    with ctxlink.connect(server.client(), local_check=True) as store:
        store.register_schema("pkgitem", Item)
        key = "pkg:1"

        first = store.cas(key, 0, Item(name="a", version=1, qty=1), schema="pkgitem", by="t")
        assert first.ok and first.version == 1
        # The context's schema is known now: a write without schema= is checked too.
        second = store.cas(key, 1, Item(name="a", version=2, qty=2), by="t")
        assert second.ok and second.version == 2

        snap = store.get(key)
        assert snap is not None and snap.version == 2 and snap.schema == "pkgitem"
        assert snap.decode(Item).qty == 2 and snap.updated_by == "t"

        def bump(item: Any) -> None:
            item.qty += 10

        done = store.update(key, bump, message_class=Item, schema="pkgitem", by="u")
        assert (done.version, done.message.qty) == (3, 12)
        done = store.update(key, bump, message_class=Item, by="u")
        assert (done.version, done.message.qty) == (4, 22)


def test_local_check_refuses_an_invalid_payload(server: EmbeddedRedis) -> None:
    with ctxlink.connect(server.client(), local_check=True) as store:
        store.register_schema("pkgitem", Item)
        store.cas("pkg:2", 0, Item(name="a", version=1), schema="pkgitem")
        calls = _cas_calls(server)
        bad = b"\n\x02a\xff\x10\x02"  # name (field 1) is not UTF-8; version 2
        with pytest.raises(ctxlink.ValidationError, match="UTF-8"):
            store.cas("pkg:2", 1, bad, schema="pkgitem")
        assert _cas_calls(server) == calls, "the invalid payload reached the server"
        snap = store.get("pkg:2")
        assert snap is not None and snap.version == 1
