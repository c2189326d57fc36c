"""The README's SDK example runs as written and prints what its comment says."""

from __future__ import annotations

import re
import subprocess
import sys

from sdk_support import REPO  # type: ignore[import-not-found]


def test_readme_sdk_example_runs_as_written() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 11
    out = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1000", "pricing"]
