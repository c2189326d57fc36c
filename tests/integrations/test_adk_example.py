"""examples/adk_session.py runs as its docstring says, without an LLM key or network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs(redis_url: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "adk_session.py"), redis_url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "support: Order 5678 ships tomorrow." in out.stdout
    assert "chat-2 starts with {'user:last_order': '5678'}" in out.stdout
    assert "StaleSessionError" in out.stdout
    assert "notes ['note-billing', 'note-triage']" in out.stdout
