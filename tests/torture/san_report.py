"""Summarise the sanitizer / valgrind logs of `make asan` / `make valgrind`; exit 1 on any report.

    python tests/torture/san_report.py asan|valgrind LOGDIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def asan_reports(logdir: Path) -> list[str]:
    out = []
    for f in sorted(logdir.glob("*san.*")):
        text = f.read_text(errors="replace")
        if "ERROR: AddressSanitizer" in text or "runtime error:" in text or "SUMMARY:" in text:
            out.append(f"{f}:\n{text[:4000]}")
    return out


def valgrind_reports(logdir: Path) -> tuple[list[str], int]:
    out, processes = [], 0
    for f in sorted(logdir.glob("valgrind.*")):
        text = f.read_text(errors="replace")
        m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        if m is None:
            continue  # a process still starting when it was killed (none expected)
        processes += 1
        if int(m.group(1)):
            out.append(f"{f}:\n{text[:6000]}")
    return out, processes


def main() -> int:
    kind, logdir = sys.argv[1], Path(sys.argv[2])
    if kind == "asan":
        reports = asan_reports(logdir)
        print(f"asan: {len(reports)} report file(s) in {logdir}")
    else:
        reports, n = valgrind_reports(logdir)
        print(f"valgrind: {n} redis-server process(es), {len(reports)} with errors, logs in {logdir}")
    for r in reports:
        print(r)
    return 1 if reports else 0


if __name__ == "__main__":
    sys.exit(main())
