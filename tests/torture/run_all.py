"""`make torture`: the long runs of the torture suite, one after the other, with their figures.

    python tests/torture/run_all.py [--quick]

Crash loop (200 kill -9 cycles per engine), linearizability under SIGSTOP (the register and
the field-patch counters, 60 s each per engine),
payload storm (200,000 payloads on the module, 100,000 on the Lua engine). ``--quick`` runs
about a tenth of each. Exit status 1 when any part found a problem.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    runs = [
        ["crash_loop.py", "--engine", "both", "--cycles", "20" if quick else "200"],
        ["linearize.py", "--engine", "both", "--seconds", "6" if quick else "60"],
        ["storm.py", "--payloads", "20000" if quick else "200000",
         "--lua-payloads", "10000" if quick else "100000",
         "--schema-mutations", "300" if quick else "3000"],
    ]
    failed = []
    for argv in runs:
        t0 = time.monotonic()
        print(f"== {' '.join(argv)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]])
        print(f"== {argv[0]}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(argv[0])
    print("torture: " + ("FAILED: " + ", ".join(failed) if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
