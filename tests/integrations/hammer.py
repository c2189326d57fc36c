"""The several-processes-and-kill-9 runs of the framework suites: worker processes that write
and print one line per acknowledged write, the first of them killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


def hammer(worker: Path, argv: Callable[[int], Sequence[str]],
           kill_when: Callable[[list[str]], bool],
           processes: int = 4, timeout: float = 300.0) -> list[str]:
    """Starts ``processes`` runs of ``python worker *argv(n)``; kills run 0 with SIGKILL as soon
    as ``kill_when`` holds for the lines it printed so far (or after 120 s); waits for the others,
    which must exit 0. Returns what each printed, run 0's first."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, str(worker), *argv(n)], stdout=subprocess.PIPE,
                              text=True, env=env) for n in range(processes)]
    victim = procs[0]
    assert victim.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in victim.stdout:
        seen.append(line)
        if kill_when(seen) or time.monotonic() > deadline:
            break
    time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    rest, _ = victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the victim ended before it was killed"
    outputs = ["".join(seen) + rest]
    for p in procs[1:]:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0
        outputs.append(out)
    return outputs
