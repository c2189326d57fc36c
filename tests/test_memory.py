"""Memory: nothing kept for what clients merely ask for, and what the module keeps is memory
Redis can see (docs/PROTOCOL.md, "Schema registry" and "Module arguments and INFO").

- Schema names are checked before any registry lookup; a name that is not registered leaves
  nothing behind (used_memory stays flat over 100,000 rejected writes).
- The core and upb allocate through Redis' allocator: compiled schemas show in used_memory.
- The compiled-schema cache is a least-recently-used list bounded by a count (64) and by bytes
  (``schema-cache-bytes``); a schema larger than the limit is compiled for its command only.
"""

from __future__ import annotations

import random
import time

import pytest
from google.protobuf import descriptor_pb2 as dpb

from backends import ModuleBackend
from helpers import assert_error, nothing_written
from servers import RawConnection

ORDER = "ctxlink.example.Order"
BAD_NAME = "CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :"
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:"

BAD_NAMES = [
    "",
    "a" * 129,
    "x" * 4096,
    "a b",
    "a/b",
    "{tag}",
    "caf\u00e9",
    "a\x00b",
    "a\nb",
    "*",
]

module_only = pytest.mark.module_only(reason="INFO ctx, module arguments, CTX.SCHEMA.GET/DEL names")


def ctx_info(server) -> dict:
    with RawConnection(server.port) as c:
        text = c.call("INFO", "ctx").decode()
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def memory(server, purge: bool = True) -> tuple[int, int]:
    """(used_memory, used_memory_rss) after MEMORY PURGE; RSS is sampled by serverCron."""
    r = server.r
    if purge:
        r.execute_command("MEMORY", "PURGE")
        time.sleep(0.3)
    info = r.info("memory")
    return info["used_memory"], info["used_memory_rss"]


def generated_schema(package: str, messages: int) -> tuple[str, bytes]:
    """A descriptor set of `package`.Big (an int64 version field) plus `messages` messages of
    100 fields each: compiled size grows with `messages`; equal counts give equal sizes."""
    f = dpb.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto3")
    big = f.message_type.add(name="Big")
    big.field.add(name="version", number=1, type=dpb.FieldDescriptorProto.TYPE_INT64,
                  label=dpb.FieldDescriptorProto.LABEL_OPTIONAL)
    for j in range(messages):
        m = f.message_type.add(name=f"S{j}")
        for i in range(1, 101):
            m.field.add(name=f"f{i}", number=i,
                        type=(dpb.FieldDescriptorProto.TYPE_STRING if i % 2
                              else dpb.FieldDescriptorProto.TYPE_INT32),
                        label=dpb.FieldDescriptorProto.LABEL_OPTIONAL)
    return f"{package}.Big", dpb.FileDescriptorSet(file=[f]).SerializeToString()


def version_payload(v: int) -> bytes:
    return bytes([0x08, v])  # field 1, varint v (v < 128)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", BAD_NAMES, ids=[f"bad{i}" for i in range(len(BAD_NAMES))])
def test_create_with_an_invalid_schema_name_is_refused_and_writes_nothing(backend, r, name):
    with nothing_written(r):
        text = assert_error("CTXSCHEMA", backend.cas, "k", 0, b"\x08\x01", schema=name)
    assert text == BAD_NAME


def test_invalid_name_is_checked_after_the_version_and_the_stored_schema(backend, pb, r):
    pb.register(backend, "order")
    assert backend.cas("o", 0, pb.order(1), schema="order") == 1
    # conflict first: the version decides before the schema is looked at
    assert backend.cas("nokey", 5, b"\x08\x06", schema="a b") is None
    assert backend.cas("o", 7, pb.order(8), schema="a b")[0] == 1
    # an update naming another schema is a mismatch, whatever the name
    text = assert_error("CTXSCHEMA", backend.cas, "o", 1, pb.order(2), schema="a b")
    assert "schema mismatch" in text


def test_a_context_stored_with_an_invalid_schema_name_cannot_be_updated(backend, pb, r):
    r.hset("hand", mapping={"raw": b"", "version": 1, "schema": "bad name", "updated_ms": 0,
                            "updated_by": ""})
    with nothing_written(r):
        text = assert_error("CTXSCHEMA", backend.cas, "hand", 1, b"\x08\x02")
    assert text == BAD_NAME


@pytest.mark.parametrize("method", ["schema_get", "schema_del"])
def test_schema_get_and_del_refuse_invalid_names(backend, r, method):
    for name in BAD_NAMES:
        with nothing_written(r):
            assert assert_error("CTXSCHEMA", getattr(backend, method), name) == BAD_NAME


@module_only
def test_rejected_writes_with_random_names_leave_used_memory_flat(servers, pb):
    s = servers.start_module()
    b = ModuleBackend(s)
    pb.register(b, "order")
    rng = random.Random(6)

    def name(i: int) -> bytes:
        kind = i % 4
        if kind == 0:  # valid, never registered
            return "".join(rng.choices(NAME_CHARS, k=rng.randint(1, 128))).encode()
        if kind == 1:  # too long (1 in 64 of them 4 KB)
            return b"n" * (4096 if i % 256 == 1 else rng.randint(129, 300))
        if kind == 2:  # a forbidden byte
            return bytes(rng.choices(b"abc /{}\x00\xff", k=rng.randint(1, 60))) + b" "
        return b"order"  # registered; the payload is refused (CTXINVALID)

    def run(n: int, seed_offset: int) -> None:
        with RawConnection(s.port) as c:
            for start in range(0, n, 5000):
                batch = range(start + seed_offset, start + seed_offset + 5000)
                buf = []
                for i in batch:
                    nm = name(i)
                    buf.append(b"*6\r\n$7\r\nCTX.CAS\r\n$5\r\nnokey\r\n$1\r\n0\r\n$1\r\n\xff\r\n"
                               b"$6\r\nSCHEMA\r\n$%d\r\n%s\r\n" % (len(nm), nm))
                c.sock.sendall(b"".join(buf))
                for _ in batch:
                    reply = c.read()
                    assert reply.startswith(("CTXSCHEMA ", "CTXINVALID ")), reply

    run(5000, 10**6)  # warm up: client buffers, the one registered name's key name
    used0, _ = memory(s)
    run(100_000, 0)
    used1, _ = memory(s)
    info = ctx_info(s)
    assert info["ctx_rejected_schema"] == 78_750
    assert info["ctx_rejected_invalid"] == 26_250
    assert info["ctx_schema_keynames_cached"] == 1
    assert abs(used1 - used0) < 1 << 20, (used0, used1)
    assert s.r.dbsize() == 2  # the registry entry and its index: nothing else


# --------------------------------------------------------------------------- allocator


@module_only
def test_compiled_schemas_are_memory_redis_accounts_for(servers):
    s = servers.start_module()
    used0, rss0 = memory(s)
    for k in range(8):
        type_, fds = generated_schema(f"p{k}", 200)
        s.r.execute_command("CTX.SCHEMA.SET", f"big{k}", type_, fds)
        assert s.r.execute_command("CTX.CAS", f"c{k}", 0, version_payload(1), "SCHEMA",
                                   f"big{k}") == 1
    used1, rss1 = memory(s)
    info = ctx_info(s)
    assert info["ctx_schemas_loaded"] == 8
    assert info["ctx_schema_cache_bytes"] > 40 << 20, info  # the test measures something
    assert used1 - used0 >= info["ctx_schema_cache_bytes"]
    assert used1 - used0 >= 0.7 * (rss1 - rss0), (used1 - used0, rss1 - rss0)
    # and it is given back: FLUSHALL drops the compiled schemas with the registry
    s.r.flushall()
    used2, _ = memory(s)
    assert ctx_info(s)["ctx_schema_cache_bytes"] == 0
    assert used2 - used0 < 2 << 20, (used0, used2)


# --------------------------------------------------------------------------- LRU cache


def one_schema_bytes(servers) -> int:
    s = servers.start_module()
    type_, fds = generated_schema("p0", 20)
    s.r.execute_command("CTX.SCHEMA.SET", "s0", type_, fds)
    size = ctx_info(s)["ctx_schema_cache_bytes"]
    s.stop()
    return size


def register(s, k: int, messages: int = 20) -> None:
    type_, fds = generated_schema(f"p{k}", messages)
    s.r.execute_command("CTX.SCHEMA.SET", f"s{k}", type_, fds)


def write(s, k: int) -> None:
    """A create refused as a version conflict would not touch the schema: use a fresh key."""
    key = f"ctx:{k}:{time.monotonic_ns()}"
    assert s.r.execute_command("CTX.CAS", key, 0, version_payload(1), "SCHEMA", f"s{k}") == 1


@module_only
def test_cache_keeps_the_most_recently_used_schemas_within_the_byte_limit(servers):
    size = one_schema_bytes(servers)
    assert size > 0
    s = servers.start_module(module_args=["schema-cache-bytes", str(3 * size + size // 2)])
    for k in range(3):
        register(s, k)  # compiled on registration: cache [2, 1, 0]
    info = ctx_info(s)
    assert (info["ctx_schemas_loaded"], info["ctx_schema_cache_evictions"]) == (3, 0)
    write(s, 0)         # a hit moves 0 to the front: [0, 2, 1]
    register(s, 3)      # evicts the least recently used, 1: [3, 0, 2]
    info = ctx_info(s)
    assert (info["ctx_schemas_loaded"], info["ctx_schema_cache_evictions"]) == (3, 1)
    write(s, 0)         # still cached: no compile, no eviction
    write(s, 2)
    write(s, 3)
    assert ctx_info(s)["ctx_schema_cache_evictions"] == 1
    write(s, 1)         # compiled again, evicting the least recently used (0)
    assert ctx_info(s)["ctx_schema_cache_evictions"] == 2
    write(s, 2)
    write(s, 3)
    write(s, 1)
    assert ctx_info(s)["ctx_schema_cache_evictions"] == 2
    info = ctx_info(s)
    assert info["ctx_schema_cache_bytes"] <= info["ctx_schema_cache_bytes_limit"]
    assert info["ctx_schema_cache_bytes_limit"] == 3 * size + size // 2


@module_only
def test_cache_holds_at_most_64_schemas(servers):
    s = servers.start_module()
    for k in range(70):
        register(s, k, messages=0)
    info = ctx_info(s)
    assert (info["ctx_schemas_loaded"], info["ctx_schema_cache_evictions"]) == (64, 6)
    for k in range(6, 70):  # the 64 most recent are all cached
        write(s, k)
    assert ctx_info(s)["ctx_schema_cache_evictions"] == 6


@module_only
def test_schema_larger_than_the_cache_is_compiled_per_command_and_not_kept(servers, pb):
    s = servers.start_module(module_args=["schema-cache-bytes", "0"])
    b = ModuleBackend(s)
    pb.register(b, "order")
    assert b.cas("o", 0, pb.order(1), schema="order") == 1
    assert b.cas("o", 1, pb.order(2)) == 2
    assert_error("CTXINVALID", b.cas, "o", 2, b"\xff")
    # registering checks compatibility against the previous revision, compiled for the call
    assert b.schema_set("order", ORDER, pb.fds("order_v2_compat")) == 2
    assert_error("CTXSCHEMA", b.schema_set, "order", ORDER, pb.fds("order_v2_incompat"))
    assert b.cas("o", 2, pb.order(3)) == 3
    info = ctx_info(s)
    assert info["ctx_schemas_loaded"] == 0
    assert info["ctx_schema_cache_bytes"] == 0
    assert info["ctx_schema_cache_evictions"] == 0
    assert info["ctx_schema_cache_bytes_limit"] == 0
    s.r.flushall()  # releases the last schema compiled for a command
    assert ctx_info(s)["ctx_core_allocated_bytes"] == 0
