"""Writes sdk/ctxlink/order.pb: the serialized FileDescriptorSet of proto/order.proto (the demo's
``ctxlink.example.Order``), made by protoc (grpcio-tools' ``grpc_tools.protoc``).

A serialized descriptor set does not depend on the protobuf runtime's version (generated
``*_pb2.py`` code does), so the package ships it as data and ``ctxlink._order_schema`` builds the
classes from it. Run by the build (setup.py's build_py, ``make ext``); by hand::

    python build/gen_order.py [OUT]      # default: sdk/ctxlink/order.pb

Nothing is written when OUT is newer than proto/order.proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "order.proto"
OUT = ROOT / "sdk" / "ctxlink" / "order.pb"


class GenError(Exception):
    """protoc is missing or failed."""


def write_order_pb(out: Path = OUT, proto: Path = PROTO) -> bool:
    """Writes ``out`` from ``proto`` unless it is up to date; True when it wrote."""
    if out.exists() and out.stat().st_mtime >= proto.stat().st_mtime:
        return False
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:
        raise GenError(
            f"generating {out.name} from {proto.name} needs protoc: pip install grpcio-tools "
            f"({exc})"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    args = ["protoc", f"-I{proto.parent}", "--include_imports", f"--descriptor_set_out={tmp}",
            str(proto)]
    if protoc.main(args) != 0:
        tmp.unlink(missing_ok=True)
        raise GenError(f"protoc failed on {proto}")
    tmp.replace(out)
    return True


def write_integration_pbs() -> list[Path]:
    """sdk/ctxlink/integrations/<name>.pb from each proto/ctxlink_<name>.proto (the adapters'
    messages); returns those it wrote."""
    wrote = []
    for proto in sorted((ROOT / "proto").glob("ctxlink_*.proto")):
        out = ROOT / "sdk" / "ctxlink" / "integrations" / (proto.stem[len("ctxlink_"):] + ".pb")
        if write_order_pb(out, proto):
            wrote.append(out)
    return wrote


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    try:
        wrote = write_order_pb(out)
        if len(argv) <= 1:
            for extra in write_integration_pbs():
                print(f"  GEN {extra.relative_to(ROOT)}")
    except GenError as exc:
        print(f"gen_order: {exc}", file=sys.stderr)
        return 1
    if wrote:
        print(f"  GEN {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
