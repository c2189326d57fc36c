"""The package as a newcomer meets it: its version, its public names, what ``import ctxlink``
pulls in, and what it says when the module is missing."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ctxlink
import ctxlink.aio
from ctxlink.embedded import EmbeddedRedis, find_module

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_version_comes_from_the_package_metadata() -> None:
    assert ctxlink.__version__ == importlib.metadata.version("ctxlink")


def test_ctxlink_dash_dash_version_prints_the_version() -> None:
    done = subprocess.run([sys.executable, "-m", "ctxlink", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ctxlink {importlib.metadata.version('ctxlink')}"


def test_dir_of_ctxlink_aio_lists_exactly_its_public_names() -> None:
    assert sorted(dir(ctxlink.aio)) == sorted(ctxlink.aio.__all__)
    assert all(hasattr(ctxlink.aio, name) for name in ctxlink.aio.__all__)


def test_ctxlink_aio_has_the_same_public_names_as_ctxlink() -> None:
    assert set(ctxlink.aio.__all__) == set(ctxlink.__all__) - {"__version__"}


def test_sync_and_asyncio_store_have_the_same_methods_and_signatures() -> None:
    import inspect

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(f) for n, f in vars(cls).items()
                if not n.startswith("_") and callable(f)}

    sync, aio = public(ctxlink.Store), public(ctxlink.aio.Store)
    assert set(aio) - {"aclose"} == set(sync)
    for name, sig in sync.items():
        assert list(sig.parameters) == list(aio[name].parameters), name
    assert list(inspect.signature(ctxlink.connect).parameters) == list(
        inspect.signature(ctxlink.aio.connect).parameters)


def test_sync_and_asyncio_store_methods_have_the_same_defaults_and_document_their_twin() -> None:
    """Defaults and parameter kinds match, and every asyncio method's docstring points at its
    own sync twin (``get``, ``cas`` and ``delete`` pointed at ``update``)."""
    import inspect

    for name, fn in vars(ctxlink.Store).items():
        if name.startswith("_") or not callable(fn):
            continue
        twin = getattr(ctxlink.aio.Store, name)
        sync_params = inspect.signature(fn).parameters.values()
        aio_params = inspect.signature(twin).parameters.values()
        assert [(p.name, p.kind, p.default) for p in sync_params] == [
            (p.name, p.kind, p.default) for p in aio_params], name
        assert inspect.getdoc(fn), name
        assert (inspect.getdoc(twin) or "").startswith(f"Async :meth:`ctxlink.Store.{name}`"), name
    for p, q in zip(inspect.signature(ctxlink.connect).parameters.values(),
                    inspect.signature(ctxlink.aio.connect).parameters.values()):
        assert (p.name, p.kind, p.default) == (q.name, q.kind, q.default)


def test_import_ctxlink_imports_no_demo_or_test_tooling() -> None:
    done = _python("import sys, ctxlink, ctxlink.aio; "
                   "print(sorted(m for m in sys.modules if m in "
                   "('ctxlink.embedded', 'ctxlink.demo', 'ctxlink._order_schema')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not hasattr(ctxlink, "EmbeddedRedis") or "EmbeddedRedis" not in ctxlink.__all__


def test_a_missing_module_names_ctxlink_module_and_module_argument(tmp_path: Path) -> None:
    missing = tmp_path / "ctxlink.so"
    with pytest.raises(RuntimeError) as err:
        EmbeddedRedis(module=missing).start()
    text = str(err.value)
    assert str(missing) in text and "CTXLINK_MODULE" in text and "module=" in text


def test_find_module_outside_the_checkout_says_how_to_point_at_a_module(tmp_path: Path) -> None:
    """Run from a copy of the package outside the repository (as from an install): the
    module is not found next to it, and the error names CTXLINK_MODULE."""
    import shutil

    pkg = tmp_path / "site" / "ctxlink"
    shutil.copytree(Path(ctxlink.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import ctxlink.embedded as e; m = e.find_module(); print(m)\n"
            "try:\n    e.EmbeddedRedis(module=m).start()\n"
            "except RuntimeError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "CTXLINK_MODULE"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    path, message = done.stdout.strip().split("\n", 1)
    assert not Path(path).exists()
    assert "CTXLINK_MODULE" in message and "module=" in message


def test_ctxlink_module_variable_names_the_module() -> None:
    done = _python("import ctxlink.embedded as e; print(e.find_module())",
                   CTXLINK_MODULE=str(find_module()))
    assert done.stdout.strip() == str(find_module())


def test_both_front_ends_share_one_dispatch() -> None:
    from ctxlink._dispatch import StoreBase

    assert issubclass(ctxlink.Store, StoreBase) and issubclass(ctxlink.aio.Store, StoreBase)
    for name in ("_get", "_cas", "_delete", "_update", "_migrate", "_register_schema"):
        assert name not in vars(ctxlink.Store) and name not in vars(ctxlink.aio.Store), name


def test_backoff_draws_with_redis_pys_full_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.backoff

    drawn: list[int] = []
    compute = redis.backoff.FullJitterBackoff.compute

    def spy(self: redis.backoff.FullJitterBackoff, failures: int) -> float:
        drawn.append(failures)
        return float(compute(self, failures))

    monkeypatch.setattr(redis.backoff.FullJitterBackoff, "compute", spy)
    b = ctxlink.Backoff(base=0.001, cap=0.05)
    assert 0 <= b.delay(3) <= b.ceiling(3) == 0.004
    assert 0 <= b.delay(10**6) <= b.ceiling(10**6) == 0.05  # no overflow
    assert drawn == [2, 60]
    with pytest.raises(ctxlink.ArgumentError):
        ctxlink.Backoff(base=-1)
