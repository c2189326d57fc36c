"""Self-checks of the test infrastructure against a stock redis-server (no module needed):
if these fail, the other results mean nothing."""

from __future__ import annotations

import pytest
import redis

import servers as srv
from helpers import nothing_written
from wire import f_len, f_varint, fields, long_varint, varint

pytestmark = pytest.mark.stock


def test_stock_server_starts_answers_and_stops_cleanly(servers):
    s = servers.start()
    assert s.r.ping()
    with s.raw() as c:
        assert c.call("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
        assert c.call("CONFIG", "GET", "save") == [b"save", b""]
    s.r.set("k", "v")
    assert s.stop() == 0
    assert not s.alive()


def test_crash_is_detected(tmp_path):
    s = srv.start_server(tmp_path / "crash")
    try:
        s.r.execute_command("DEBUG", "SEGFAULT")
    except redis.ConnectionError:
        pass
    s.proc.wait(timeout=20)
    with pytest.raises(AssertionError, match="crash|signal|exited"):
        s.stop(check=True)


def test_failed_start_is_reported(servers):
    s = servers.start_failing(config=[("maxmemory", "notanumber")])
    assert s.proc.returncode != 0
    assert "maxmemory" in s.log_text()


def test_restart_on_same_dir_keeps_rdb(servers):
    s = servers.start()
    s.r.hset("h", mapping={"a": "1"})
    s.r.save()
    s2 = servers.restart(s)
    assert s2.dir == s.dir
    assert s2.r.hgetall("h") == {b"a": b"1"}


def test_aof_tail_sees_exactly_the_written_commands(servers):
    s = servers.start(appendonly=True, config=[("appendfsync", "always"),
                                               ("aof-use-rdb-preamble", "no")])
    tail = srv.AofTail(s)
    s.r.set("a", b"x\r\ny")
    assert tail.commands() == [[b"SET", b"a", b"x\r\ny"]]
    tail.mark()
    s.r.get("a")
    assert tail.commands() == []
    tail.mark()
    p = s.r.pipeline(transaction=True)
    p.set("a", 1)
    p.set("b", 2)
    p.execute()
    assert [c[0].upper() for c in tail.commands()] == [b"MULTI", b"SET", b"SET", b"EXEC"]


def test_replica_sync_digest_and_monitor(servers):
    p = servers.start()
    rep = servers.replica(p, module=False)
    mon = srv.Monitor(rep)
    try:
        p.r.hset("h", mapping={"a": b"\x00\xff\"\\"})
        p.r.set("__marker__", 1)
        seen = mon.commands_until(lambda a: a[:2] == [b"SET", b"__marker__"])
    finally:
        mon.close()
    cmds = [a for _, a in seen if a[0] not in (b"SELECT", b"PING")]
    assert cmds == [[b"HSET", b"h", b"a", b"\x00\xff\"\\"]]
    srv.wait_replicated(p, rep)
    assert p.digest() == rep.digest()
    with pytest.raises(redis.ReadOnlyError) as ei:
        rep.r.set("x", 1)
    assert srv.error_text(ei.value).startswith("READONLY")


def test_raw_connection_and_error_codes(servers):
    s = servers.start()
    with s.raw() as c:
        assert c.call("PING") == b"PONG"
        err = c.call("NOSUCHCOMMAND")
        assert isinstance(err, srv.RawError) and err.code == "ERR"
        assert c.call("HSET", "h", "f", "v") == 1
        assert c.call("HGETALL", "h") == [b"f", b"v"]
    with pytest.raises(redis.ResponseError) as ei:
        s.r.execute_command("HSET", "h")
    assert srv.error_code(ei.value) == "ERR"
    s.r.set("str", 1)
    with pytest.raises(redis.ResponseError) as ei:
        s.r.hget("str", "f")
    assert srv.error_code(ei.value) == "WRONGTYPE"


def test_nothing_written_catches_writes(servers):
    s = servers.start()
    with nothing_written(s.r):
        s.r.get("x")
    with pytest.raises(AssertionError):
        with nothing_written(s.r):
            s.r.set("x", 1)


def test_protos_compile_to_descriptor_sets(pb):
    order = pb.Order(version=3, order_id="o-1")
    assert pb.Order.FromString(order.SerializeToString()).version == 3
    assert [f.name for f in pb.fdset("split_invoice").file] == ["split_common.proto",
                                                               "split_invoice.proto"]
    assert [f.name for f in pb.fdset("split_invoice", include_imports=False).file] == [
        "split_invoice.proto"]
    Strict = pb.cls("strict2", "ctxlink.test.p2.Strict")
    assert Strict(version=1, id="x").IsInitialized()
    Node = pb.cls("node", "ctxlink.test.Node")
    assert Node(version=1).children.add(label="x").label == "x"


def test_wire_helpers():
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert long_varint(1, 3) == b"\x81\x80\x00"
    data = f_varint(2, 5) + f_len(1, b"abc")
    assert [f[2] for f in fields(data)] == [2, 1]
