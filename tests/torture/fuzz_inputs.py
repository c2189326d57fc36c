"""Writes the fuzzing inputs of `make fuzz` into a build directory (nothing binary is committed):

- ``schemas/*.fds`` + ``schemas/index.txt``: descriptor sets of the test schemas (order, kitchen
  with maps and oneofs, recursive node, editions with delimited messages, proto2 strict) and two
  generated ones (map/oneof/group mix, recursion);
- ``corpus/``: a seed corpus of valid random messages of each (one selector byte first, see
  tests/torture/fuzz_validate.c);
- ``corpus-schema/``: the descriptor sets, each behind its selector byte (the seeds of
  tests/torture/fuzz_schema.c).

    python tests/torture/fuzz_inputs.py build/fuzz [--seeds N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture_common import SCHEMAS, fill, hostile_schemas, protolib  # noqa: E402

from helpers import ProtoLib  # noqa: E402

SUITE = ["order", "kitchen", "node", "ed", "strict", "doc", "invoice"]
GENERATED = ["map-oneof-group", "recursion"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--seeds", type=int, default=60, help="seeds per schema")
    args = ap.parse_args()
    sdir, cdir = args.outdir / "schemas", args.outdir / "corpus"
    xdir = args.outdir / "corpus-schema"
    for d in (sdir, cdir, xdir):
        d.mkdir(parents=True, exist_ok=True)
    pb = protolib()
    entries = []  # (fds bytes, type, vfield)
    for name in SUITE:
        proto, full, vfield = SCHEMAS[name]
        entries.append((name, pb.fds(proto), full, vfield or "version"))
    hostile = {label: (t, fds) for label, t, fds in hostile_schemas(4 << 20)}
    for label in GENERATED:
        t, fds = hostile[label]
        entries.append((label, fds, t, "version"))
    rng = random.Random(1)
    lines = []
    n = 0
    for i, (label, fds, full, vfield) in enumerate(entries):
        (sdir / f"{i:02d}-{label}.fds").write_bytes(fds)
        (xdir / f"{i:02d}-{label}").write_bytes(bytes([i]) + fds)
        lines.append(f"{i:02d}-{label}.fds {full} {vfield}")
        cls = ProtoLib.classes_from_fds(fds, full)
        for k in range(args.seeds):
            msg = cls()
            fill(msg, rng, version=rng.randint(1, 1000), vfield=vfield)
            data = bytes([i | (0x80 if k % 5 == 0 else 0)]) + msg.SerializeToString()
            (cdir / hashlib.sha1(data).hexdigest()).write_bytes(data)
            n += 1
    (sdir / "index.txt").write_text("\n".join(lines) + "\n")
    print(f"fuzz inputs: {len(entries)} schemas in {sdir} (also the seeds in {xdir}), "
          f"{n} payload seeds in {cdir}")


if __name__ == "__main__":
    main()
