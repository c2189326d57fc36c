""".ci/run: every step (make test, test-wheel, test-floors, integrations) must pass a test; a failing step, a
step whose pytest collected nothing (exit code 5) or one that passed no test fails CI, and the
other steps still run. Driven with a stand-in ``make`` that prints a pytest summary line and
exits with a chosen status (the real targets are what CI runs; this checks the script's logic).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PASS = ("12 passed in 3.40s", 0)


def _run_ci(tmp_path: Path, steps: dict[str, tuple[str, int]]) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", root / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "".join(f'  {target}) echo "{line}"; exit {rc};;\n'
                    for target, (line, rc) in steps.items())
    fake = bin_dir / "make"
    fake.write_text(f'#!/bin/sh\necho "$1" >> "{tmp_path}/calls"\ncase "$1" in\n{cases}'
                    '  *) echo "unexpected target $1"; exit 99;;\nesac\n')
    fake.chmod(0o755)
    for tool in ("gcc", "nm", "redis-server", "git", "python3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: .ci/run would install it")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(root / ".ci" / "run")], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().split()


def test_ci_passes_when_every_step_passes_and_prints_the_summaries(tmp_path: Path) -> None:
    proc = _run_ci(tmp_path, {"test": ("500 passed, 3 skipped in 200.12s (0:03:20)", 0),
                              "test-wheel": ("9 passed in 19.0s", 0),
                              "test-floors": ("196 passed, 4 skipped in 32.3s", 0),
                              "integrations": ("97 passed, 1 skipped in 5.4s", 0)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _calls(tmp_path) == ["test", "test-wheel", "test-floors", "integrations"]
    assert "==> make test-wheel: 9 passed in 19.0s" in proc.stdout
    assert proc.stdout.rstrip().endswith(
        "==> tests passed: 500 passed, 3 skipped in 200.12s (0:03:20)")


@pytest.mark.parametrize("failing", ["test", "test-floors", "integrations"])
def test_a_failing_step_fails_ci_and_the_other_steps_still_run(tmp_path: Path,
                                                               failing: str) -> None:
    steps = {name: PASS for name in ("test", "test-wheel", "test-floors", "integrations")}
    steps[failing] = ("1 failed, 11 passed in 3.40s", 2)
    proc = _run_ci(tmp_path, steps)
    assert proc.returncode != 0
    assert _calls(tmp_path) == ["test", "test-wheel", "test-floors", "integrations"]
    assert f"CI: FAILED: make {failing} exited with status 2" in proc.stderr


def test_nothing_collected_fails_ci(tmp_path: Path) -> None:
    proc = _run_ci(tmp_path, {"test": PASS, "test-wheel": ("no tests ran in 0.01s", 5),
                              "test-floors": PASS, "integrations": PASS})
    assert proc.returncode != 0
    assert "make test-wheel: no tests ran (pytest exit code 5" in proc.stderr


def test_a_step_that_passes_no_test_fails_ci(tmp_path: Path) -> None:
    proc = _run_ci(tmp_path, {"test": PASS, "test-wheel": PASS,
                              "test-floors": ("7 skipped in 0.50s", 0),
                              "integrations": PASS})
    assert proc.returncode != 0
    assert "make test-floors passed no test" in proc.stderr
