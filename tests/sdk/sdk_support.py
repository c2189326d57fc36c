"""Helpers of the SDK tests (compiled schemas), importable from the test modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REPO = Path(__file__).resolve().parents[2]
PROTOS = {
    "order": (REPO / "proto", "order.proto"),
    "order_v2_compat": (REPO / "tests" / "protos", "order_v2_compat.proto"),
    "order_v2_incompat": (REPO / "tests" / "protos", "order_v2_incompat.proto"),
    "versions": (REPO / "tests" / "protos", "versions.proto"),
}
SDK_ENGINES = ["module", "lua"]
LUA_MISSING = "lua/*.lua scripts are not all present"


class Protos:
    """Descriptor sets compiled with grpc_tools.protoc; message classes via message_factory."""

    def __init__(self, outdir: Path) -> None:
        self.fds: dict[str, bytes] = {}
        self._classes: dict[tuple[str, str], Any] = {}
        for name, (include, filename) in PROTOS.items():
            out = outdir / f"{name}.pb"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"-I{include}",
                    f"--descriptor_set_out={out}",
                    "--include_imports",
                    filename,
                ],
                check=True,
                cwd=include,
                capture_output=True,
            )
            self.fds[name] = out.read_bytes()

    def cls(self, name: str, full_name: str) -> Any:
        key = (name, full_name)
        if key not in self._classes:
            s = descriptor_pb2.FileDescriptorSet.FromString(self.fds[name])
            pool = descriptor_pool.DescriptorPool()
            for f in s.file:
                pool.Add(f)
            self._classes[key] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(full_name)
            )
        return self._classes[key]

    @property
    def Order(self) -> Any:
        return self.cls("order", "ctxlink.example.Order")
