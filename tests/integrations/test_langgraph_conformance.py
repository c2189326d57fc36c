"""LangGraph's own checkpointer conformance suite (``langgraph-checkpoint-conformance``) against
CtxlinkSaver, on both engines.

The package is fetched at test time into build/_deps/ (pinned version and sha256, verified
before it is used; never committed) and imported from there: its files are not edited.
Covers: every base capability (put, put_writes, get_tuple, list, delete_thread) and every
extended one (copy_thread, delete_for_runs, prune): 8 of 8.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE_VERSION = "0.0.2"
CONFORMANCE_WHEEL = f"langgraph_checkpoint_conformance-{CONFORMANCE_VERSION}-py3-none-any.whl"
CONFORMANCE_SHA256 = "c112ddc0416b097c90a145fd1908ba570db4cba209e1ae0330205e9f466ad4f9"
DEST = ROOT / "build" / "_deps" / f"lg-conformance-{CONFORMANCE_VERSION}"


def _fetch_conformance() -> Path:
    """The verified wheel's contents under DEST (downloaded with pip once)."""
    marker = DEST / ".verified"
    if marker.exists():
        return DEST
    dl = DEST.with_name(DEST.name + ".dl")
    dl.mkdir(parents=True, exist_ok=True)
    wheel = dl / CONFORMANCE_WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl),
                        f"langgraph-checkpoint-conformance=={CONFORMANCE_VERSION}"], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != CONFORMANCE_SHA256:
        wheel.unlink()
        pytest.fail(f"{CONFORMANCE_WHEEL}: sha256 {digest}, expected {CONFORMANCE_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(DEST)
    marker.write_text(digest)
    return DEST


def _conformance():  # type: ignore[no-untyped-def]
    path = str(_fetch_conformance())
    if path not in sys.path:
        sys.path.append(path)
    # langgraph is a namespace package: the wheel's langgraph/checkpoint/conformance joins it.
    import langgraph.checkpoint

    extra = str(Path(path) / "langgraph" / "checkpoint")
    if extra not in list(langgraph.checkpoint.__path__):
        langgraph.checkpoint.__path__.append(extra)
    import langgraph.checkpoint.conformance as conf

    return conf


def test_conformance_base_capabilities(redis_url: str) -> None:
    conf = _conformance()
    from ctxlink.integrations.langgraph import CtxlinkSaver

    @conf.checkpointer_test(name="CtxlinkSaver")
    async def saver():  # type: ignore[no-untyped-def]
        s = CtxlinkSaver.from_url(redis_url)
        try:
            yield s
        finally:
            s.close()

    report = asyncio.run(conf.validate(saver))
    report.print_report()
    assert report.passed_all_base()
    assert report.passed_all()
    assert all(r.detected for r in report.results.values())  # no capability skipped
