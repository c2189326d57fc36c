"""Build of the ctxlink package: the SDK (sdk/ctxlink), its Lua scripts and ``ctxlink._ctxcore``.

Metadata lives in pyproject.toml; this file adds what needs code:

- ``cffi_modules``: the validation-core extension ``ctxlink._ctxcore`` (module/core/*.c), declared
  by sdk/ctxlink/_ffi_build.py;
- the static library ``ctxlink_upb`` the extension links: the upb runtime, compiled from the
  sources build/fetch_deps.py fetches (pinned protobuf sdist, sha256-checked) with upb's own flags
  (the Makefile's UPB_CFLAGS). The sources are listed when the library is built, so making an
  sdist or reading metadata fetches nothing;
- the wheel leaves out _ffi_build.py, which needs the source tree.

setuptools' own output goes to build/setuptools (setup.cfg), which git ignores: build/ holds
tracked sources (fetch_deps.py, ctxlink.map).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_clib import build_clib
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUILD_BASE = Path("build", "setuptools")
UPB_LIB = "ctxlink_upb"
UPB_CFLAGS = ["-std=gnu11", "-w", "-fvisibility=hidden", "-ffunction-sections",
              "-fdata-sections"]


def _fetch_deps() -> ModuleType:
    """build/fetch_deps.py, loaded by path ("build" would find the PyPA package)."""
    return _load_build_script("fetch_deps")


def _load_build_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ctxlink_{name}", ROOT / "build" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildUpb(build_clib):
    """build_clib that fills in ctxlink_upb's sources from the fetched, verified upb tree."""

    def build_libraries(self, libraries: list[tuple[str, dict[str, Any]]]) -> None:
        deps = _fetch_deps()
        try:
            pb = deps.ensure_upb()
        except deps.FetchError as e:
            raise SystemExit(f"ctxlink: fetching the upb sources failed: {e}") from None
        sources = [os.path.relpath(p, ROOT) for p in deps.upb_sources(pb)]
        filled = []
        for name, info in libraries:
            if name == UPB_LIB:
                include = [os.path.relpath(pb, ROOT), os.path.relpath(pb / "utf8_range", ROOT)]
                info = {**info, "sources": sources, "include_dirs": include,
                        "macros": [("NDEBUG", None)], "cflags": UPB_CFLAGS,
                        "obj_deps": {"": [os.path.join("build", "fetch_deps.py")]}}
            filled.append((name, info))
        super().build_libraries(filled)


class BuildPy(build_py):
    """build_py without the extension's build script (it needs module/core and cffi), and with
    ctxlink/order.pb, proto/order.proto's descriptor set made by protoc (build/gen_order.py)."""

    def run(self) -> None:
        # build_lib (build/setuptools/lib.*) outlives a build: a module or script removed from
        # the sources would otherwise still be copied into the next wheel from there.
        if not self.editable_mode:
            shutil.rmtree(os.path.join(self.build_lib, "ctxlink"), ignore_errors=True)
        gen = _load_build_script("gen_order")
        gen.write_order_pb()
        gen.write_integration_pbs()
        super().run()

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]]
        modules = super().find_package_modules(package, package_dir)  # type: ignore[no-untyped-call]
        return [m for m in modules if (m[0], m[1]) != ("ctxlink", "_ffi_build")]


(ROOT / BUILD_BASE).mkdir(parents=True, exist_ok=True)  # egg_base must exist (setup.cfg)

setup(
    libraries=[(UPB_LIB, {"sources": []})],
    cffi_modules=["sdk/ctxlink/_ffi_build.py:ffi"],
    cmdclass={"build_clib": BuildUpb, "build_py": BuildPy},
)
