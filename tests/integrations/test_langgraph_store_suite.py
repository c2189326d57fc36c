"""The store tests LangGraph ships in the langgraph-checkpoint-sqlite source distribution
(tests/test_store.py and tests/test_async_store.py, version 3.1.2), run against CtxlinkStore on both engines by a fixture
swap: their file is fetched at test time (pinned version and sha256, verified, never committed),
imported unchanged, and its test functions that take the ``store`` fixture run with our
``store`` fixture below. Not run: the tests that build a SqliteStore themselves or need vector
search (``fake_embeddings``), which CtxlinkStore does not offer (``query=`` raises), and
test_no_running_loop (AsyncSqliteStore refuses its sync methods on the event loop's thread;
CtxlinkStore's sync methods work anywhere). The async tests run under pytest-asyncio.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest

# their module imports the package (tests/integrations/requirements-langgraph.txt); the floor
# venv (langgraph-checkpoint 2.1.2) cannot have it
pytest.importorskip("langgraph.store.sqlite")

ROOT = Path(__file__).resolve().parents[2]
SQLITE_VERSION = "3.1.2"
SQLITE_SDIST = f"langgraph_checkpoint_sqlite-{SQLITE_VERSION}.tar.gz"
SQLITE_SHA256 = "4e3f376fa6f192d6ad2a1a4643b039986f1593552ef870e9e45281575de6fbf2"
DEST = ROOT / "build" / "_deps" / f"lg-sqlite-{SQLITE_VERSION}"
MEMBERS = ("test_store.py", "test_async_store.py")
NOT_ADOPTED = {"test_no_running_loop"}


def _fetch(name: str) -> Path:
    out = DEST / name
    if out.exists():
        return out
    dl = DEST.with_name(DEST.name + ".dl")
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / SQLITE_SDIST
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "-q", "-d", str(dl),
                        f"langgraph-checkpoint-sqlite=={SQLITE_VERSION}"], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SQLITE_SHA256:
        sdist.unlink()
        raise RuntimeError(f"{SQLITE_SDIST}: sha256 {digest}, expected {SQLITE_SHA256}")
    with tarfile.open(sdist) as tf:
        for member in MEMBERS:
            data = tf.extractfile(f"langgraph_checkpoint_sqlite-{SQLITE_VERSION}/tests/{member}")
            assert data is not None
            DEST.mkdir(parents=True, exist_ok=True)
            tmp = (DEST / member).with_suffix(".tmp")
            tmp.write_bytes(data.read())
            tmp.replace(DEST / member)
    return out


def _load(name: str) -> Any:
    path = _fetch(name)
    spec = importlib.util.spec_from_file_location(f"lg_sqlite_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_all() -> list[Any]:
    """Both files; test_async_store.py does ``from tests.test_store import ...``, so the first
    is visible as ``tests.test_store`` (a stand-in ``tests`` package) while the second loads."""
    import types

    first = _load(MEMBERS[0])
    saved = {k: sys.modules.get(k) for k in ("tests", "tests.test_store")}
    pkg = types.ModuleType("tests")
    pkg.__path__ = []
    pkg.test_store = first  # type: ignore[attr-defined]
    sys.modules["tests"], sys.modules["tests.test_store"] = pkg, first
    try:
        second = _load(MEMBERS[1])
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return [first, second]


ADOPTED = []
for _member, _suite in zip(MEMBERS, _load_all()):
    _tag = "async_" if _member == "test_async_store.py" else ""
    for _name, _obj in sorted(vars(_suite).items()):
        if (not _name.startswith("test_") or not inspect.isfunction(_obj)
                or _name in NOT_ADOPTED):
            continue
        _params = inspect.signature(_obj).parameters
        if "store" in _params and "fake_embeddings" not in _params:
            if inspect.iscoroutinefunction(_obj):
                _obj = pytest.mark.asyncio(_obj)
            _new = "test_" + _tag + _name[len("test_"):]
            globals()[_new] = _obj
            ADOPTED.append(_new)


@pytest.fixture
def store(redis_url: str) -> Iterator[Any]:
    from ctxlink.integrations.langgraph import CtxlinkStore

    with CtxlinkStore.from_url(redis_url) as s:
        yield s


def test_adopted_some() -> None:
    assert len(ADOPTED) >= 10, ADOPTED
