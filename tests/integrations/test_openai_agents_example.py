"""examples/openai_agents_session.py runs as its docstring says: no API key, no network, against
the server given (both engines) and against the embedded redis-server it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "openai_agents_session.py"


def _check(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stderr
    assert "turn 1: Your order ships today." in out.stdout
    assert "turn 2: It arrives Thursday." in out.stdout
    assert "the model saw 3 items on turn 2" in out.stdout
    assert "pop_item took back: note from client" in out.stdout
    history = out.stdout.split("history:\n", 1)[1].splitlines()
    assert len(history) == 5 and history[-1].startswith("  user: note from client")


def test_example_runs(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    _check(subprocess.run([sys.executable, str(EXAMPLE), redis_url], capture_output=True,
                          text=True, timeout=120, env=env))


def test_example_runs_on_its_own_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    _check(subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120, env=env))
