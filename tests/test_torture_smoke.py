"""Short runs of the torture suite (tests/torture/, docs/RELIABILITY.md); `make torture` runs the
long ones. Also the linearizability checker's own tests: it must catch corrupted histories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "torture"))

import crash_loop  # noqa: E402
import linearize  # noqa: E402
import storm  # noqa: E402
import torture_common  # noqa: E402
from linearize import Op, check  # noqa: E402


@pytest.fixture(autouse=True)
def _share_protos(pb):
    torture_common._protolib = pb  # the session's compiled schemas, not a second protoc run


# --------------------------------------------------------------------------- the checker


def good_history() -> list[Op]:
    """Two clients on one register; client 1's last write timed out (and landed)."""
    return [
        Op(0, "read", "k", 0.0, 0.1, "ok", version=0, seen=None),
        Op(0, "cas", "k", 0.2, 0.3, "ok", 0, b"a1", version=1),
        Op(1, "cas", "k", 0.25, 0.35, "conflict", 0, b"b1", version=1, seen=b"a1"),
        Op(1, "cas", "k", 0.4, 0.5, "ok", 1, b"b2", version=2),
        Op(0, "read", "k", 0.6, 0.7, "ok", version=2, seen=b"b2"),
        Op(1, "cas", "k", 0.8, None, "unknown", 2, b"b3"),
        Op(0, "read", "k", 0.9, 1.0, "ok", version=3, seen=b"b3"),
        Op(0, "cas", "k", 1.1, 1.2, "ok", 3, b"a4", version=4),
    ]


def kinds(history) -> set[str]:
    return {kind for kind, _ in check(history)}


def test_checker_accepts_a_linearizable_history_with_a_timed_out_write():
    assert check(good_history()) == []


def test_checker_catches_two_acknowledged_writes_of_one_version():
    h = good_history() + [Op(2, "cas", "k", 0.21, 0.31, "ok", 0, b"c1", version=1)]
    assert "duplicate-version" in kinds(h)


def test_checker_catches_a_read_of_an_unwritten_payload():
    h = good_history()
    h[4] = Op(0, "read", "k", 0.6, 0.7, "ok", version=2, seen=b"zz")
    assert "unwritten-read" in kinds(h)


def test_checker_catches_a_read_of_a_write_sent_after_the_read_ended():
    h = good_history()
    h[5] = Op(1, "cas", "k", 1.05, None, "unknown", 2, b"b3")  # sent after the read of v3
    assert "unwritten-read" in kinds(h)


def test_checker_catches_non_monotonic_reads_of_one_client():
    h = good_history() + [Op(0, "read", "k", 1.3, 1.4, "ok", version=2, seen=b"b2")]
    assert {"non-monotonic", "stale"} <= kinds(h)


def test_checker_catches_a_stale_read_after_another_client_wrote():
    h = good_history() + [Op(2, "read", "k", 1.3, 1.4, "ok", version=1, seen=b"a1")]
    assert kinds(h) == {"stale"}


def test_checker_catches_a_broken_version_chain():
    h = good_history() + [Op(2, "cas", "k", 1.3, 1.4, "ok", 6, b"c7", version=7)]
    assert "chain" in kinds(h)
    h = good_history() + [Op(2, "cas", "k", 1.3, 1.4, "ok", 4, b"c5", version=9)]
    assert "chain" in kinds(h)


def test_checker_catches_a_spurious_conflict():
    h = good_history() + [Op(2, "cas", "k", 1.3, 1.4, "conflict", 4, b"c5", version=4,
                             seen=b"a4")]
    assert kinds(h) == {"spurious-conflict"}


# --------------------------------------------------------------------------- short runs


@pytest.mark.parametrize("engine", ["module", "lua"])
def test_crash_loop_loses_no_acknowledged_write(engine, tmp_path, module_so):
    res = crash_loop.run(engine, cycles=6, interval=0.25, workdir=tmp_path)
    assert res["problems"] == []
    assert res["cycles"] == 6 and res["acked_writes"] > 0


def test_crash_loop_detects_lost_writes_without_persistence(tmp_path, module_so):
    res = crash_loop.run("module", cycles=2, interval=0.25, workdir=tmp_path, appendonly=False)
    assert any("acknowledged" in p for p in res["problems"]), res


@pytest.mark.parametrize("engine", ["module", "lua"])
def test_register_is_linearizable_under_sigstop_and_client_timeouts(engine, tmp_path, module_so):
    res = linearize.run(engine, seconds=3, workdir=tmp_path)
    assert res["violations"] == [] and res["errors"] == [] and res["alive"]
    assert res["acked_writes"] > 0 and res["pauses"] > 0


def test_payload_storm_module(tmp_path, module_so):
    res = storm.run("module", payloads=5000, schema_mutations=100, workdir=tmp_path)
    assert res["problems"] == []
    assert res["replies"]["ok"] > 0 and res["replies"]["CTXINVALID"] > 0


def test_payload_storm_lua(tmp_path):
    res = storm.run("lua", payloads=2000, schema_mutations=0, workdir=tmp_path)
    assert res["problems"] == []
    assert res["replies"]["ok"] > 0 and res["replies"]["CTXINVALID"] > 0
