"""Short runs of the torture suite (tests/torture/, docs/RELIABILITY.md); `make torture` runs the
long ones. Also the linearizability checker's own tests: it must catch corrupted histories. The
crash loop and the linearizability runs keep history on (schemas with ``history=16``) and check
that history and value agree; the history checker has its own test too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "torture"))

import crash_loop  # noqa: E402
import linearize  # noqa: E402
import storm  # noqa: E402
import torture_common  # noqa: E402
from linearize import LifeOp, Op, PatchOp, check, check_lifecycle, check_patches  # noqa: E402,E501


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


def good_patches() -> tuple[list[PatchOp], dict]:
    """Clients 0 and 1 increment their own fields c0/c1 of one key (reads=[]) and the shared
    field (reads=["shared"]); client 1's last shared increment is in doubt (and landed)."""
    h = [
        PatchOp(0, "inc", "k", 0.0, 0.1, "ok", "c0", value=1, version=2),
        PatchOp(1, "inc", "k", 0.05, 0.15, "ok", "c1", value=1, version=3),
        PatchOp(1, "inc", "k", 0.2, 0.3, "ok", "shared", value=1, version=4),
        PatchOp(0, "inc", "k", 0.25, 0.35, "ok", "shared", value=2, version=5),
        PatchOp(2, "read", "k", 0.4, 0.5, "ok", version=5, values={"c0": 1, "c1": 1,
                                                                    "shared": 2}),
        PatchOp(1, "inc", "k", 0.6, None, "unknown", "shared"),
        PatchOp(0, "inc", "k", 0.7, 0.8, "ok", "c0", value=2, version=7),
        PatchOp(1, "inc", "k", 0.9, 1.0, "failed", "c1"),
    ]
    return h, {"k": (7, {"c0": 2, "c1": 1, "shared": 3})}


def patch_kinds(history, final) -> set[str]:
    return {kind for kind, _ in check_patches(history, final)}


def test_patch_checker_accepts_exactly_once_with_an_in_doubt_increment():
    h, final = good_patches()
    assert check_patches(h, final) == []
    h[6] = PatchOp(0, "inc", "k", 0.7, 0.8, "ok", "c0", value=2, version=6)
    final["k"] = (6, {"c0": 2, "c1": 1, "shared": 2})  # the in-doubt one did not land: fine too
    assert check_patches(h, final) == []


def test_patch_checker_catches_a_write_that_changed_no_counter():
    h, final = good_patches()
    final["k"] = (8, {"c0": 2, "c1": 1, "shared": 3})  # one more version than increments
    assert patch_kinds(h, final) == {"version-count"}


def test_patch_checker_catches_a_doubled_increment():
    h, final = good_patches()
    final["k"] = (8, {"c0": 3, "c1": 1, "shared": 3})  # c0 applied once more than acknowledged
    assert patch_kinds(h, final) == {"doubled-increment"}
    final["k"] = (8, {"c0": 2, "c1": 1, "shared": 4})  # more than acknowledged + in doubt
    assert patch_kinds(h, final) == {"doubled-increment"}
    final["k"] = (8, {"c0": 2, "c1": 2, "shared": 3})  # a failed (not sent) one landed
    assert patch_kinds(h, final) == {"doubled-increment"}


def test_patch_checker_catches_a_lost_acknowledged_increment():
    h, final = good_patches()
    final["k"] = (7, {"c0": 1, "c1": 1, "shared": 3})  # c0's second acknowledged one is gone
    assert "lost-increment" in patch_kinds(h, final)
    final["k"] = (7, {"c0": 2, "c1": 0, "shared": 3})
    assert "lost-increment" in patch_kinds(h, final)


def test_patch_checker_catches_one_value_acknowledged_twice():
    h, final = good_patches()
    # both shared increments report 1 (one overwrote the other) and the in-doubt one made up
    # for the count: the final value alone would pass
    h[3] = PatchOp(0, "inc", "k", 0.25, 0.35, "ok", "shared", value=1, version=5)
    h[4] = PatchOp(2, "read", "k", 0.4, 0.5, "ok", version=5, values={"c0": 1, "c1": 1,
                                                                       "shared": 1})
    assert "duplicate-value" in patch_kinds(h, final)


def test_patch_checker_catches_duplicate_and_backward_versions():
    h, final = good_patches()
    h[1] = PatchOp(1, "inc", "k", 0.05, 0.15, "ok", "c1", value=1, version=2)
    assert "duplicate-version" in patch_kinds(h, final)
    h, final = good_patches()
    h.append(PatchOp(0, "read", "k", 0.85, 0.88, "ok", version=5,
                     values={"c0": 1, "c1": 1, "shared": 2}))
    assert {"non-monotonic", "stale"} <= patch_kinds(h, final)


def test_patch_checker_catches_stale_and_inconsistent_reads():
    h, final = good_patches()
    h.append(PatchOp(3, "read", "k", 0.85, 0.9, "ok", version=7,
                     values={"c0": 1, "c1": 1, "shared": 3}))  # v7 wrote c0=2
    assert "inconsistent-read" in patch_kinds(h, final)
    h, final = good_patches()
    h.append(PatchOp(3, "read", "k", 0.85, 0.9, "ok", version=4,
                     values={"c0": 1, "c1": 1, "shared": 1}))  # after v7 was acknowledged
    assert patch_kinds(h, final) == {"stale"}


def good_lifecycle() -> list[LifeOp]:
    """Create, delete, an in-doubt create (tag 3) that lands after the writer read nothing."""
    return [
        LifeOp(0, "create", "l", 0.0, "ok", 1, version=1),
        LifeOp(0, "read", "l", 0.1, "ok", 1),
        LifeOp(0, "delete", "l", 0.2, "ok", 2),
        LifeOp(0, "create", "l", 0.3, "unknown", 3),
        LifeOp(0, "read", "l", 0.4, "ok", None),
        LifeOp(0, "create", "l", 0.5, "conflict", 3),   # tag 3 landed late
        LifeOp(0, "delete", "l", 0.6, "ok", 4),
        LifeOp(0, "read", "l", 0.7, "ok", None),
    ]


def test_lifecycle_checker_accepts_a_late_in_doubt_create():
    assert check_lifecycle(good_lifecycle()) == []


def test_lifecycle_checker_catches_a_resurrected_and_a_missing_context():
    h = good_lifecycle()
    h[4] = LifeOp(0, "read", "l", 0.4, "ok", 1)  # deleted (acknowledged), then back
    assert {k for k, _ in check_lifecycle(h)} == {"lifecycle"}
    h = good_lifecycle()
    h[1] = LifeOp(0, "read", "l", 0.1, "ok", None)  # an acknowledged create is not there
    assert {k for k, _ in check_lifecycle(h)} == {"lifecycle"}
    h = good_lifecycle()
    h[0] = LifeOp(0, "create", "l", 0.0, "ok", 1, version=2)
    assert {k for k, _ in check_lifecycle(h)} == {"lifecycle"}


def test_history_checker_catches_history_that_disagrees_with_the_value(tmp_path, module_so):
    """torture_common.history_problems (run after every crash-loop restart and at the end of
    the linearizability runs) must report each way a stream can disagree with its value."""
    import ctxlink
    import servers as srv

    Order = torture_common.protolib().Order
    server = srv.start_server(tmp_path, module=str(srv.module_path()), module_args=[],
                              appendonly=False, config=[], replicaof=None)
    try:
        store = ctxlink.connect(server.client())
        r = server.client()
        store.register_schema("order", Order, history=3)
        for v in range(5):
            assert store.cas("k", v, Order(order_id="a", version=v + 1), schema="order",
                             by="w").ok
        store.cas("one", 0, Order(order_id="b"), schema="order")
        assert torture_common.history_problems(store, "k", 3) == []
        assert torture_common.history_problems(store, "one", 3) == []
        assert torture_common.history_problems(store, "none", 3) == []

        def problems_after(*cmd) -> list[str]:
            dump = r.dump("__ctxh:k")
            r.execute_command(*cmd)
            found = torture_common.history_problems(store, "k", 3)
            r.delete("__ctxh:k")
            r.restore("__ctxh:k", 0, dump)
            return found

        assert any("beyond" in p or "last entry is version 6" in p
                   for p in problems_after("XADD", "__ctxh:k", "6-0", "k", "update", "i",
                                           store.get("k").incarnation, "t", 1, "b", "w", "w",
                                           ""))
        assert any("stream versions" in p for p in problems_after("XDEL", "__ctxh:k", "4-0"))
        assert any("last entry is version 4" in p
                   for p in problems_after("XDEL", "__ctxh:k", "5-0"))
        assert any("incarnation" in p for p in problems_after(
            "XADD", "__ctxh:k", "MAXLEN", "=", 3, "6-0", "i", "0123456789abcdef"))
        assert torture_common.history_problems(store, "k", 3) == []
        assert any("no history" in p for p in problems_after("DEL", "__ctxh:k"))
        assert any("MAXLEN" in p for p in torture_common.history_problems(store, "k", 4))
        r.xadd("__ctxh:gone", {"k": "create"}, id="1-0")
        assert any("no context" in p for p in torture_common.history_problems(store, "gone", 3))
        tampered = store.get("one")
        r.execute_command("XADD", "__ctxh:one", "MAXLEN", "=", 1, "1-1", "k", "create", "i",
                          tampered.incarnation, "t", tampered.updated_ms + 1, "b", "x")
        found = torture_common.history_problems(store, "one", 3)
        assert any("sequence" in p for p in found), found
        r.close()
        store.client.close()
    finally:
        server.stop(check=False)


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


@pytest.mark.parametrize("engine", ["module", "lua"])
def test_field_patches_apply_exactly_once_under_sigstop(engine, tmp_path, module_so):
    res = linearize.run_patches(engine, seconds=2.5, workdir=tmp_path)
    assert res["violations"] == [] and res["errors"] == [] and res["alive"]
    assert res["acked"] > 0 and res["acked_shared"] > 0 and res["pauses"] > 0


def test_payload_storm_module(tmp_path, module_so):
    res = storm.run("module", payloads=5000, schema_mutations=100, workdir=tmp_path)
    assert res["problems"] == []
    assert res["replies"]["ok"] > 0 and res["replies"]["CTXINVALID"] > 0


def test_payload_storm_lua(tmp_path):
    res = storm.run("lua", payloads=2000, schema_mutations=0, workdir=tmp_path)
    assert res["problems"] == []
    assert res["replies"]["ok"] > 0 and res["replies"]["CTXINVALID"] > 0
