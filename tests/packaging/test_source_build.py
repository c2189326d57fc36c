"""Building the package from a clean clone leaves the clone clean (no build/lib, build/bdist.*,
*.egg-info or any other untracked file), and the wheel it builds carries the extension.

Run by ``make test-wheel`` from a fresh venv outside the repository, like
test_installed_wheel.py: ``CTXLINK_CHECKOUT`` names the checkout, which is cloned (its committed
state) into a temporary directory; ``pip wheel`` builds from the clone in place, as
``pip install <clone>`` does. ``python -m build`` (sdist, then the wheel from it, each in an
isolated environment) runs with an empty download cache, so the build fetches and verifies the
upb sources itself, as on a new machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(os.environ.get("CTXLINK_CHECKOUT", "/nonexistent"))


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (CHECKOUT / ".git").exists():
        pytest.fail(f"CTXLINK_CHECKOUT={CHECKOUT} is not a git checkout", pytrace=False)
    dest = tmp_path_factory.mktemp("clone") / "ctxlink"
    _git("clone", "--quiet", "--no-hardlinks", str(CHECKOUT), str(dest), cwd=dest.parent)
    return dest


def test_pip_build_from_a_clean_clone_leaves_it_clean(clone: Path, tmp_path: Path) -> None:
    out = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", "-w", str(out), str(clone)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    wheels = list(out.glob("ctxlink-*.whl"))
    assert len(wheels) == 1 and "-abi3-" in wheels[0].name, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("ctxlink/_ctxcore.") and n.endswith(".so") for n in names), names
    assert "ctxlink/lua/cas.lua" in names

    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
    # setuptools' own folder is build/setuptools (setup.cfg), which git ignores
    own = clone / "build" / "setuptools"
    left = [p.relative_to(clone).as_posix() for p in clone.rglob("*")
            if not p.is_relative_to(own)
            and (p.name.endswith(".egg-info") or p.parent == clone / "build"
                 and p.name.startswith(("lib", "bdist", "temp")))]
    assert left == [], f"setuptools output in tracked folders: {left}"


def test_python_m_build_with_an_empty_cache_fetches_upb_itself(clone: Path,
                                                              tmp_path: Path) -> None:
    pytest.importorskip("build", reason="make test-wheel installs build into the venv")
    out, cache = tmp_path / "dist", tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(clone)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "CTXLINK_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    fetched = [p.name for p in cache.iterdir()]
    assert any(n.startswith("protobuf-") and n.endswith(".tar.gz") for n in fetched), fetched
    sdists, wheels = list(out.glob("ctxlink-*.tar.gz")), list(out.glob("ctxlink-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    assert any(n.startswith("ctxlink/_ctxcore.")
               for n in zipfile.ZipFile(wheels[0]).namelist())
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
