"""Hardening of the validation core (module/core): required fields checked inside the wire walk
with memory bounded by the payload, and schema compilation in linear time
(docs/PROTOCOL.md, "Validation" and "CTX.SCHEMA.SET").

The schemas are built here with ``descriptor_pb2``; no binary is committed."""
from __future__ import annotations

import os
import time

import pytest
import redis
from google.protobuf import descriptor_pb2 as d2

from servers import error_text
from wire import f_len as ld  # a length-delimited field
from wire import tag, varint

FD = d2.FieldDescriptorProto

# ctx_RequiredBudget(len) in module/core/ctx_core.h
BUDGET_PER_BYTE = 32
BUDGET_BASE = 64 << 10


def required_budget(n: int) -> int:
    return BUDGET_PER_BYTE * n + BUDGET_BASE


def _field(m, name: str, number: int, label: int, ftype: int, type_name: str = "") -> None:
    f = m.field.add(name=name, number=number, label=label, type=ftype)
    if type_name:
        f.type_name = type_name


def bomb_fds() -> bytes:
    """proto2: Root{int64 version=1; repeated Node n=2}, Node{repeated Node n=1; repeated Leaf
    leaf=2}, Leaf{required bool r1..r63 = 1..63}."""
    fds = d2.FileDescriptorSet()
    f = fds.file.add(name="bomb.proto", package="bomb", syntax="proto2")
    root = f.message_type.add(name="Root")
    _field(root, "version", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT64)
    _field(root, "n", 2, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, ".bomb.Node")
    node = f.message_type.add(name="Node")
    _field(node, "n", 1, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, ".bomb.Node")
    _field(node, "leaf", 2, FD.LABEL_REPEATED, FD.TYPE_MESSAGE, ".bomb.Leaf")
    leaf = f.message_type.add(name="Leaf")
    for i in range(1, 64):
        _field(leaf, f"r{i}", i, FD.LABEL_REQUIRED, FD.TYPE_BOOL)
    return fds.SerializeToString()


def bomb_payload(leaves: int, levels: int = 30, leaf: bytes = b"") -> bytes:
    inner = ld(2, leaf) * leaves  # Node.leaf, each an empty Leaf: 63 required fields missing
    for _ in range(levels - 1):
        inner = ld(1, inner)  # Node.n
    return tag(1, 0) + varint(1) + ld(2, inner)  # Root.version = 1, Root.n


def peak_rss(server) -> int:
    """VmHWM of the server process, in bytes."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def bomb_server(module_servers, module_so):
    s = module_servers.start_module(module_args=["max-payload-bytes", str(1 << 20)])
    s.r.execute_command("CTX.SCHEMA.SET", "bomb", "bomb.Root", bomb_fds())
    return s


def cas_timed(server, key: str, payload: bytes) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        server.r.execute_command("CTX.CAS", key, 0, payload, "SCHEMA", "bomb")
        err = None
    except redis.ResponseError as e:
        err = error_text(e)
    return time.perf_counter() - t0, err


def test_empty_leaves_with_63_required_fields_are_invalid_quickly_and_the_server_survives(
        bomb_server):
    payload = bomb_payload(16_500)
    assert 33_000 <= len(payload) <= 34_000
    before = peak_rss(bomb_server)
    took, err = cas_timed(bomb_server, "bomb:33k", payload)
    print(f"\n33 KB bomb: {took * 1000:.1f} ms, peak RSS +{(peak_rss(bomb_server) - before) >> 10} KiB")
    assert err is not None and err.startswith("CTXINVALID field '")
    assert err.endswith("': required field is missing")
    assert err.startswith("CTXINVALID field '" + "n[0]." * 20)  # the path is cut at 160 bytes
    assert took < 0.5
    bomb_server.assert_alive()
    assert bomb_server.r.exists("bomb:33k") == 0
    assert peak_rss(bomb_server) - before <= 2 * required_budget(len(payload)) + (32 << 20)


@pytest.mark.parametrize("size", [200_000, 600_000])
def test_large_payloads_of_empty_leaves_stay_within_time_and_memory_budget(bomb_server, size):
    payload = bomb_payload(size // 2)
    before = peak_rss(bomb_server)
    took, err = cas_timed(bomb_server, f"bomb:{size}", payload)
    grew = peak_rss(bomb_server) - before
    print(f"\n{len(payload)} B bomb: {took * 1000:.1f} ms, peak RSS +{grew >> 10} KiB, "
          f"budget {required_budget(len(payload)) >> 10} KiB")
    assert err is not None and err.endswith("': required field is missing")
    assert took < 0.5
    bomb_server.assert_alive()
    assert grew <= 2 * required_budget(len(payload)) + (32 << 20)


@pytest.mark.parametrize("size", [200_000, 600_000])
def test_valid_payloads_that_keep_every_presence_record_stay_within_budget(bomb_server, size):
    # empty Nodes carry no required field: nothing is missing, so every record is kept
    # (one per message instance), plus complete leaves (63 bools each)
    full_leaf = b"".join(tag(i, 0) + b"\x01" for i in range(1, 64))
    nodes = ld(1, b"") * (size // 4) + ld(2, full_leaf) * (size // 4 // len(full_leaf))
    payload = tag(1, 0) + varint(1) + ld(2, nodes)
    before = peak_rss(bomb_server)
    took, err = cas_timed(bomb_server, f"ok:{size}", payload)
    grew = peak_rss(bomb_server) - before
    print(f"\n{len(payload)} B valid: {took * 1000:.1f} ms, peak RSS +{grew >> 10} KiB, "
          f"budget {required_budget(len(payload)) >> 10} KiB")
    assert err is None
    assert took < 0.5
    assert grew <= 2 * required_budget(len(payload)) + (32 << 20)


def test_each_repeated_occurrence_is_checked_and_structural_errors_win(bomb_server):
    _, err = cas_timed(bomb_server, "m", bomb_payload(3, levels=3))
    assert err == "CTXINVALID field 'n[0].n[0].n[0].leaf[0].r1': required field is missing"
    # Leaf occurrences in a repeated field are separate instances: the second one lacks r2..r63
    full_leaf = b"".join(tag(i, 0) + b"\x01" for i in range(1, 64))
    payload = tag(1, 0) + varint(1) + ld(2, ld(2, full_leaf) + ld(2, tag(1, 0) + b"\x01"))
    _, err = cas_timed(bomb_server, "m", payload)
    assert err == "CTXINVALID field 'n[0].leaf[1].r2': required field is missing"
    # a structural error after a missing required field wins (as in lua/cas.lua)
    payload = tag(1, 0) + varint(1) + ld(2, ld(2, b"") + ld(9, b""))
    _, err = cas_timed(bomb_server, "m", payload)
    assert err == "CTXINVALID n[0]: field 9: unknown field"


def big_fds() -> bytes:
    fds = d2.FileDescriptorSet()
    f = fds.file.add(name="big.proto", package="big", syntax="proto2")
    m = f.message_type.add(name="Big")
    _field(m, "version", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT64)
    for i in range(2, 66):
        _field(m, f"r{i}", i, FD.LABEL_REQUIRED, FD.TYPE_BOOL)
    return fds.SerializeToString()


def test_more_than_63_required_fields_in_a_message_are_refused(bomb_server):
    with pytest.raises(redis.ResponseError) as info:
        bomb_server.r.execute_command("CTX.SCHEMA.SET", "big", "big.Big", big_fds())
    assert error_text(info.value).startswith("CTXSCHEMA bad descriptor set: file 'big.proto'")


def bin_fds() -> bytes:
    """proto2 Bin{optional int64 version = 1; optional Bin l = 2; optional Bin r = 3;
    optional Req q = 4}, Req{required bool x = 1; required bool y = 2}: singular children."""
    fds = d2.FileDescriptorSet()
    f = fds.file.add(name="bin.proto", package="bin", syntax="proto2")
    m = f.message_type.add(name="Bin")
    _field(m, "version", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT64)
    _field(m, "l", 2, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, ".bin.Bin")
    _field(m, "r", 3, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, ".bin.Bin")
    _field(m, "q", 4, FD.LABEL_OPTIONAL, FD.TYPE_MESSAGE, ".bin.Req")
    q = f.message_type.add(name="Req")
    _field(q, "x", 1, FD.LABEL_REQUIRED, FD.TYPE_BOOL)
    _field(q, "y", 2, FD.LABEL_REQUIRED, FD.TYPE_BOOL)
    return fds.SerializeToString()


def bin_tree(depth: int) -> bytes:
    """A full binary tree of singular children: every instance but the root holds a child link."""
    node = b""
    for _ in range(depth):
        node = ld(2, node) + ld(3, node)
    return node


def test_singular_occurrences_merge_and_each_occurrence_is_checked(bomb_server):
    r = bomb_server.r
    r.execute_command("CTX.SCHEMA.SET", "bin", "bin.Bin", bin_fds())
    X, Y = tag(1, 0) + b"\x01", tag(2, 0) + b"\x01"

    def cas(payload: bytes) -> str | None:
        r.delete("bin")
        try:
            r.execute_command("CTX.CAS", "bin", 0, tag(1, 0) + b"\x01" + payload, "SCHEMA", "bin")
        except redis.ResponseError as e:
            return error_text(e)
        return None

    assert cas(ld(4, X + Y)) is None
    assert cas(ld(2, ld(4, X))) == "CTXINVALID field 'l.q.y': required field is missing"
    # checked at the end of each occurrence with what the merged message has so far (upb's
    # decoder and lua/cas.lua do the same): the first half alone lacks y
    assert cas(ld(4, X) + ld(4, Y)) == "CTXINVALID field 'q.y': required field is missing"
    assert cas(ld(4, X + Y) + ld(4, Y)) is None
    # merging through a singular parent that occurs twice
    assert cas(ld(2, ld(4, X + Y)) + ld(2, ld(4, Y))) is None
    assert cas(ld(2, ld(3, b"")) + ld(2, ld(4, X))) == \
        "CTXINVALID field 'l.q.y': required field is missing"


def test_a_tree_of_singular_children_stays_within_budget(bomb_server):
    r = bomb_server.r
    r.execute_command("CTX.SCHEMA.SET", "bin", "bin.Bin", bin_fds())
    payload = tag(1, 0) + b"\x01" + bin_tree(17)
    assert len(payload) < 1 << 20
    before = peak_rss(bomb_server)
    t0 = time.perf_counter()
    r.execute_command("CTX.CAS", "bintree", 0, payload, "SCHEMA", "bin")
    took = time.perf_counter() - t0
    grew = peak_rss(bomb_server) - before
    print(f"\n{len(payload)} B binary tree ({(1 << 18) - 1} instances): {took * 1000:.1f} ms, "
          f"peak RSS +{grew >> 10} KiB, budget {required_budget(len(payload)) >> 10} KiB")
    assert took < 0.5
    assert grew <= 2 * required_budget(len(payload)) + (32 << 20)


# ---- the core's own memory accounting (the SDK's cffi build of the core) --------------------

def _core():
    from ctxlink._native import ffi, lib  # the SDK's one importer of the extension

    return ffi, lib


def test_core_accounts_schema_bytes_and_frees_everything_after_validation():
    ffi, lib = _core()
    base = lib.ctx_AllocatedBytes()
    data = bomb_fds()
    st = ffi.new("ctx_Status*")
    s = lib.ctx_Schema_Build(data, len(data), b"bomb.Root", 9, ffi.NULL, 0, 1 << 22, st)
    assert s != ffi.NULL, ffi.string(st.msg)
    held = lib.ctx_Schema_MemoryBytes(s)
    assert held > 0 and lib.ctx_AllocatedBytes() - base == held
    limits = ffi.new("ctx_Limits*")
    lib.ctx_Limits_Default(limits)
    pv = ffi.new("ctx_PayloadVersion*")
    for payload in (bomb_payload(1000), bomb_payload(10, leaf=b"".join(
            tag(i, 0) + b"\x01" for i in range(1, 64)))):
        ok = lib.ctx_Validate(s, payload, len(payload), limits, pv, st)
        assert lib.ctx_AllocatedBytes() - base == held  # presence records all freed
    assert ok and pv.value == 1
    lib.ctx_Schema_Free(s)
    assert lib.ctx_AllocatedBytes() == base


# ---- schema compilation in linear time ---------------------------------------------------------

NFILES = 40_000


def many_files_fds(chain: bool) -> bytes:
    """NFILES small files, each with one message; then a root file holding `p.Root`. `chain`:
    file i imports file i-1 and the root imports the last one; else the root imports them all.
    The files are listed root first, so that every file comes before the files it imports."""
    fds = d2.FileDescriptorSet()
    root = fds.file.add(name="root.proto", package="p", syntax="proto3")
    m = root.message_type.add(name="Root")
    _field(m, "version", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT64)
    for i in reversed(range(NFILES)):
        f = fds.file.add(name=f"f{i}.proto", package="p", syntax="proto3")
        if chain and i:
            f.dependency.append(f"f{i - 1}.proto")
        _field(f.message_type.add(name=f"M{i}"), "x", 1, FD.LABEL_OPTIONAL, FD.TYPE_INT32)
    if chain:
        root.dependency.append(f"f{NFILES - 1}.proto")
    else:
        root.dependency.extend(f"f{i}.proto" for i in range(NFILES))
    return fds.SerializeToString()


@pytest.fixture(scope="module")
def big_schema_server(module_servers, module_so):
    return module_servers.start_module(module_args=["max-schema-bytes", str(64 << 20)])


@pytest.mark.parametrize("chain", [False, True], ids=["root-imports-all", "import-chain"])
def test_forty_thousand_files_compile_in_linear_time(big_schema_server, chain):
    data = many_files_fds(chain)
    r = big_schema_server.r
    t0 = time.perf_counter()
    assert r.execute_command("CTX.SCHEMA.SET", f"many-{chain}", "p.Root", data) == 1
    took = time.perf_counter() - t0
    print(f"\n{NFILES} files ({'chain' if chain else 'root imports all'}, {len(data)} B): "
          f"CTX.SCHEMA.SET {took * 1000:.0f} ms")
    assert took < 3.0  # about 1.5 s or less on an idle machine
    r.execute_command("CTX.CAS", f"many:{chain}", 0, b"\x08\x01", "SCHEMA", f"many-{chain}")


# --------------------------------------------------------------------------- the stored value


def test_value_round_trip_and_hostile_bytes_under_asan(tmp_path) -> None:
    """tests/torture/value_roundtrip.c: chains of v3 writes parse back with the clocks the writes
    made (and the conflict rule follows them); mutated values in exact-size buffers never read
    outside them (ASan, UBSan) and, when accepted, survive the conflict rule and a rewrite."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cc = shutil.which("cc") or shutil.which("gcc")
    libupb = root / "build" / "libupb.a"
    if cc is None or not libupb.exists():
        pytest.skip("needs a C compiler and build/libupb.a (make)")
    exe = tmp_path / "value_roundtrip"
    argv = [cc, "-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all", f"-I{root / 'module/core'}",
            "-isystem", str(root / "build/_deps/protobuf"),
            "-isystem", str(root / "build/_deps/protobuf/utf8_range"),
            str(root / "tests/torture/value_roundtrip.c"),
            *sorted(str(p) for p in (root / "module/core").glob("*.c")), str(libupb),
            "-o", str(exe)]
    built = subprocess.run(argv, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    run = subprocess.run([str(exe), "20000"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok: 20000 rounds"), run.stdout
