"""examples/langgraph_checkpointer.py runs as the README says, without an LLM key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs(redis_url: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "langgraph_checkpointer.py"),
                          redis_url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "['start', 'plan', 'act', 'again', 'plan', 'act']" in out.stdout
    assert "worker B refused" in out.stdout
