"""The ``ctxlink`` command line, every command run as a subprocess (``python -m ctxlink``)
against real servers: the module and the Lua engine on a standalone server, and a 3-primary
module cluster for ``ls``, ``stats`` and ``doctor``. JSON output is parsed and compared with what
the SDK reads."""

from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import ctxlink
import pytest
import redis
from ctxlink._cluster import _slot_tag
from ctxlink._order_schema import Order
from ctxlink.embedded import EmbeddedRedis, find_module, free_port
from google.protobuf import json_format
from redis.cluster import RedisCluster

REPO = Path(__file__).resolve().parent.parent
ORDER_PROTO = REPO / "proto" / "order.proto"
PROTOS = REPO / "tests" / "protos"
ENV = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CTXLINK_DEBUG")}


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctxlink", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env or ENV)


def ok(*args: object, **kw) -> str:
    proc = cli(*args, **kw)
    assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def as_json(*args: object) -> object:
    return json.loads(ok(*args, "--json"))


def fails(*args: object, code: int = 1, **kw) -> str:
    """The one-line error of a failing command (status ``code``, no traceback)."""
    proc = cli(*args, **kw)
    assert proc.returncode == code, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if code == 1:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctxlink: "), proc.stderr
    return proc.stderr.strip()


def order(i: int, **fields) -> Order:
    o = Order(order_id=f"o-{i}", base_price=1000 + i, final_price=1000 + i, **fields)
    o.items.add(sku=f"SKU-{i}", quantity=i + 1)
    return o


@pytest.fixture
def srv(shared_server):
    """The engine's shared server, emptied; yields its port."""
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    yield shared_server.port
    shared_server.assert_alive()


@pytest.fixture
def store(srv, engine) -> Iterator[ctxlink.Store]:
    with ctxlink.connect(f"redis://127.0.0.1:{srv}/0", engine=engine) as s:
        yield s


# --------------------------------------------------------------------------- the package


def test_import_ctxlink_imports_neither_click_nor_rich() -> None:
    code = ("import sys, ctxlink, ctxlink.aio; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich') "
            "or m.startswith('ctxlink.cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version_and_help() -> None:
    assert ok("--version").strip() == f"ctxlink {ctxlink.__version__}"
    text = ok("--help")
    for command in ("get", "ls", "history", "watch", "schema", "stats", "doctor", "touch",
                    "demo"):
        assert f"  {command} " in text
    assert "-h, --host" in ok("get", "--help")
    fails("get", code=2)  # usage: KEY missing
    fails("touch", "k", "0", code=2)  # SECONDS must be > 0
    # bad --since/--limit/--count/--after/--history: usage errors, nothing sent (no server here)
    for bad in (("history", "k", "--since", "-1"), ("history", "k", "--limit", "x"),
                ("watch", "k", "--count", "0"), ("watch", "k", "--after", "-2"),
                ("schema", "push", ORDER_PROTO, "a.B", "--history", "1001"),
                ("schema", "push", ORDER_PROTO, "a.B", "--history", "-1")):
        fails(*bad, "-p", "1", code=2)
    fails("nosuchcommand", code=2)


# --------------------------------------------------------------------------- contexts


def test_get_prints_the_decoded_context(store, srv, engine) -> None:
    store.register_schema("order", Order)
    store.cas("order:1", 0, order(1), schema="order", by="router")
    store.update("order:1", lambda o: setattr(o, "discount", 7), message_class=Order,
                 by="pricing")
    snap = store.get("order:1")
    # connection options before and after the command (the same code on both engines)
    variants = [("get", "order:1", "-p", srv), ("-p", srv, "get", "order:1"),
                ("get", "order:1", "--url", f"redis://127.0.0.1:{srv}/0")]
    for args in variants[:1] if engine == "lua" else variants:
        data = as_json(*args)
        assert re.fullmatch("[0-9a-f]{16}", snap.incarnation)
        assert data == {
            "key": "order:1", "version": 2, "incarnation": snap.incarnation,
            "schema": "order", "updated_ms": snap.updated_ms, "updated_by": "pricing",
            "message": json_format.MessageToDict(snap.decode(Order),
                                                 preserving_proto_field_name=True),
        }
    assert data["message"]["order_id"] == "o-1" and data["message"]["discount"] == "7"
    text = ok("get", "order:1", "-p", srv, "--engine", engine)
    for part in ("order:1", "ctxlink.example.Order", "pricing", '"order_id": "o-1"', '"items"'):
        assert part in text, text


def test_get_errors_are_one_line(store, srv) -> None:
    assert fails("get", "nope", "-p", srv) == "ctxlink: no context at 'nope'"
    store.client.set("plain", b"x")
    assert fails("get", "plain", "-p", srv).startswith("ctxlink: WRONGTYPE ")
    store.register_schema("gone", Order)
    store.cas("ctx:gone", 0, order(2), schema="gone")
    store.drop_schema("gone")
    assert fails("get", "ctx:gone", "-p", srv).startswith("ctxlink: CTXSCHEMA unknown schema")


def test_ls_lists_contexts_only_and_filters_by_schema(store, srv) -> None:
    store.register_schema("order", Order, history=3)  # history streams __ctxh:order:<n>
    store.register_schema("other", Order)
    for i in range(5):
        store.cas(f"order:{i}", 0, order(i), schema="order", by=f"w{i}")
    store.cas("misc:1", 0, order(9), schema="other")
    store.client.set("order:plain", b"not a context")
    store.client.hset("order:hash", "a", "b")
    store.client.set("__ctxf:order", b"a feed's key")
    assert store.client.exists("__ctxh:order:1")
    rows = as_json("ls", "-p", srv)
    assert [r["key"] for r in rows] == ["misc:1"] + [f"order:{i}" for i in range(5)]  # sorted
    by_key = {r["key"]: r for r in rows}
    snap = store.get("order:3")
    assert by_key["order:3"] == {"key": "order:3", "version": 1, "schema": "order",
                                 "incarnation": snap.incarnation,
                                 "updated_ms": snap.updated_ms, "updated_by": "w3"}
    assert [r["key"] for r in as_json("ls", "--schema", "other", "-p", srv)] == ["misc:1"]
    assert len(as_json("ls", "order:*", "--schema", "order", "-p", srv)) == 5
    assert as_json("ls", "nothing:*", "-p", srv) == []
    assert "6 contexts" in ok("ls", "-p", srv)


def test_touch(store, srv) -> None:
    store.register_schema("order", Order, history=2)
    store.cas("order:1", 0, order(1), schema="order")
    ok("touch", "order:1", "30", "-p", srv)
    assert 0 < store.client.pttl("order:1") <= 30_000
    assert 0 < store.client.pttl("__ctxh:order:1") <= 30_000  # its history expires with it
    assert fails("touch", "nope", "30", "-p", srv) == "ctxlink: no context at 'nope'"


def test_demo_on_a_given_server_leaves_its_orders(srv, engine) -> None:
    """README, "Watch your agents": the demo on a server, then ls and get on its data."""
    out = ok("demo", "-p", srv, "-n", "6", "--orders", "12", "--lanes", "2")
    assert f"127.0.0.1:{srv}/6" in out and "ctxlink (" in out
    rows = as_json("ls", "order:*", "-p", srv, "-n", "6")
    assert len(rows) == 12 and {r["version"] for r in rows} == {4}
    data = as_json("get", "order:7", "-p", srv, "-n", "6")
    assert data["message"]["order_id"] == "o-7" and data["message"]["inventory_reserved"]
    assert data["updated_by"] in ("router", "fulfillment", "pricing")
    assert as_json("stats", "-p", srv, "-n", "6")["engine"] == engine


def test_history(store, srv, engine) -> None:
    store.register_schema("order", Order)
    store.cas("order:1", 0, order(1), schema="order", by="router")
    # a schema without history: one line naming the fix
    err = fails("history", "order:1", "-p", srv)
    assert "keeps no history" in err and "--history" in err and "--name order" in err
    store.register_schema("order", Order, history=3, history_payloads=True)
    store.update("order:1", lambda o: setattr(o, "discount", 5), message_class=Order, by="a")
    store.update("order:1", lambda o: setattr(o, "status", 2), message_class=Order, by="b",
                 reads=["discount"])
    store.update("order:1", lambda o: setattr(o, "discount", 6), message_class=Order, by="c")
    store.update("order:1", lambda o: setattr(o, "final_price", 9), message_class=Order,
                 by="d", reads=[])
    changes = store.history("order:1")
    assert [c.version for c in changes] == [3, 4, 5]  # the last 3 kept
    lines = [json.loads(line) for line in ok("history", "order:1", "--json", "-p", srv)
             .splitlines()]
    assert lines == [{
        "key": "order:1", "incarnation": c.incarnation, "kind": c.kind, "version": c.version,
        "updated_ms": c.updated_ms, "updated_by": c.updated_by, "write_id": c.write_id,
        "fields": None if c.fields is None else list(c.fields),
        "message": json_format.MessageToDict(Order.FromString(c.payload),
                                             preserving_proto_field_name=True),
    } for c in changes]
    assert [(x["kind"], x["fields"], x["updated_by"]) for x in lines] == [
        ("patch", ["status"], "b"), ("update", None, "c"), ("patch", ["final_price"], "d")]
    assert lines[2]["message"]["final_price"] == "9" and lines[2]["write_id"]
    since = ok("history", "order:1", "--since", "3", "--limit", "1", "--json", "-p", srv)
    assert [json.loads(line)["version"] for line in since.splitlines()] == [5]
    text = ok("history", "order:1", "-p", srv)
    for part in ("patch", "status", "final_price", "(whole)", "3 changes", "keeps the last 3"):
        assert part in text, text
    assert fails("history", "nope", "-p", srv) == "ctxlink: no context at 'nope'"


class Tail:
    """A ``ctxlink watch`` subprocess whose stdout is read line by line (killed after 60 s)."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ctxlink", "watch", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=ENV)
        self.timer = threading.Timer(60, self.proc.kill)
        self.timer.start()

    def line(self) -> str:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline()
        assert got, f"watch ended: {self.end()}"
        return got

    def end(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        self.timer.cancel()
        return self.proc.returncode, out, err


def test_watch(store, srv, engine) -> None:
    store.register_schema("order", Order)
    # JSON lines, from the creation on; each the object get --json prints; --count ends it
    tail = Tail("order:1", "--after", "0", "--count", "3", "--json", "-p", srv)
    store.cas("order:1", 0, order(1), schema="order", by="router")
    seen = [json.loads(tail.line())]
    store.update("order:1", lambda o: setattr(o, "discount", 5), message_class=Order, by="a")
    seen.append(json.loads(tail.line()))
    store.update("order:1", lambda o: setattr(o, "status", 2), message_class=Order, by="b",
                 reads=[])
    seen.append(json.loads(tail.line()))
    assert tail.end() == (0, "", "")
    assert [(d["version"], d["updated_by"]) for d in seen] == [(1, "router"), (2, "a"), (3, "b")]
    assert seen[-1] == as_json("get", "order:1", "-p", srv)
    # people's lines; a deletion ends it: exit 1, one line on stderr
    tail = Tail("order:1", "-p", srv)
    assert tail.line().startswith("watching order:1 from version 3")
    store.update("order:1", lambda o: setattr(o, "discount", 6), message_class=Order, by="c")
    assert re.fullmatch(r"version 4  \S+ \S+ UTC  by c\n", tail.line())
    store.delete("order:1", 4)
    code, out, err = tail.end()
    assert (code, out, err) == (1, "", "ctxlink: the context at 'order:1' was deleted\n")
    assert fails("watch", "order:1", "--after", "2", "-p", srv) == \
        "ctxlink: no context at 'order:1'"


# --------------------------------------------------------------------------- schemas


def test_schema_push_ls_show(store, srv, tmp_path, engine) -> None:
    out = ok("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--name", "order",
             "-p", srv)
    assert out.strip() == "order: ctxlink.example.Order, revision 1"
    info = store.get_schema("order")
    assert info is not None and info.message_type == "ctxlink.example.Order"
    # the message type defaults to the name; the same definition keeps its revision
    ok("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "-I", REPO / "proto", "-p", srv)
    assert as_json("schema", "ls", "-p", srv) == [
        {"name": "ctxlink.example.Order", "message_type": "ctxlink.example.Order", "revision": 1},
        {"name": "order", "message_type": "ctxlink.example.Order", "revision": 1},
    ]
    shown = as_json("schema", "show", "order", "-p", srv)
    assert shown["message_type"] == "ctxlink.example.Order" and shown["revision"] == 1
    assert (shown["version_field"], shown["compat"]) == ("version", "WIRE_JSON")
    assert {"number": 2, "name": "version", "type": "int64", "repeated": False} in shown["fields"]
    assert {"number": 10, "name": "items", "type": "ctxlink.example.LineItem",
            "repeated": True} in shown["fields"]
    assert "ctxlink.example.LineItem" in ok("schema", "show", "order", "-p", srv)
    assert fails("schema", "show", "nope", "-p", srv) == "ctxlink: CTXSCHEMA unknown schema 'nope'"
    assert "has no top-level field 'nope'" in fails(
        "schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--version-field", "nope",
        "-p", srv)
    if engine == "lua":
        return  # the rest does not depend on the engine
    # a compiled set instead of the .proto
    fds = tmp_path / "order.pb"
    fds.write_bytes(info.descriptor_set)
    assert "revision 1" in ok("schema", "push", "--descriptor-set", fds, "ctxlink.example.Order",
                              "--name", "from-set", "--compat", "wire", "-p", srv)
    assert as_json("schema", "show", "from-set", "-p", srv)["compat"] == "WIRE"
    # bad input: a usage error (2), or the server's refusal in one line (1)
    fails("schema", "push", ORDER_PROTO, "-p", srv, code=2)
    fails("schema", "push", tmp_path / "none.proto", "a.B", "-p", srv, code=2)
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3"; message B { int64 version = 1; strin x = 2; }\n')
    assert "protoc could not compile" in fails("schema", "push", bad, "B", "-p", srv)


def test_schema_check_uses_the_compatibility_rules(store, srv) -> None:
    store.register_schema("order", Order)
    compat = PROTOS / "order_v2_compat.proto"
    incompat = PROTOS / "order_v2_incompat.proto"
    assert ok("schema", "check", compat, "ctxlink.example.Order", "--name", "order",
              "-p", srv).startswith("accepted: order would be revision 2")
    proc = cli("schema", "check", incompat, "ctxlink.example.Order", "--name", "order",
               "-p", srv)
    assert proc.returncode == 1 and proc.stdout.startswith("refused: CTXSCHEMA incompatible")
    verdict = json.loads(cli("schema", "check", incompat, "ctxlink.example.Order", "--name",
                             "order", "--json", "-p", srv).stdout)
    assert verdict["accepted"] is False and "base_price" in verdict["reason"]
    # the verdict is the one push gets; nothing was written by check
    assert store.get_schema("order").revision == 1
    assert "base_price" in fails("schema", "push", incompat, "ctxlink.example.Order",
                                 "--name", "order", "-p", srv)
    new = as_json("schema", "check", ORDER_PROTO, "ctxlink.example.Order", "--name", "new",
                  "-p", srv)
    assert new["accepted"] is True and new["revision"] == 1
    same = as_json("schema", "check", ORDER_PROTO, "ctxlink.example.Order", "--name", "order",
                   "-p", srv)
    assert same["accepted"] is True and same["revision"] == 1
    assert "revision 2" in ok("schema", "push", incompat, "ctxlink.example.Order", "--name",
                              "order", "--force", "-p", srv)


def test_schema_push_without_grpcio_tools_names_the_extra(srv) -> None:
    code = ("import sys; sys.modules['grpc_tools'] = None; from ctxlink.cli import main; "
            f"sys.exit(main(['schema', 'push', {str(ORDER_PROTO)!r}, 'ctxlink.example.Order', "
            f"'-p', '{srv}']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'ctxlink[proto]'" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the server


def test_stats(store, srv, engine) -> None:
    store.register_schema("order", Order)
    for i in range(3):
        store.cas(f"order:{i}", 0, order(i), schema="order")
    data = as_json("stats", "-p", srv)
    assert data["engine"] == engine
    if engine == "module":
        assert data["info"]["ctx_protocol"] >= 2 and data["info"]["ctx_cas_ok"] >= 3
    else:
        assert data == {"engine": "lua", "schemas": 1, "contexts": 3,
                        "contexts_by_schema": {"order": 3}}
    assert engine in ok("stats", "-p", srv)


def test_doctor(store, srv, engine) -> None:
    store.register_schema("order", Order)
    report = as_json("doctor", "-p", srv)
    assert report["ok"] is True, report
    assert {c["check"] for c in report["checks"]} >= {"server", "engine", "registry", "eviction"}
    r = store.client
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        r.config_set("maxmemory", "0")
        report = as_json("doctor", "-p", srv)  # no limit yet: a warning only
        assert report["ok"] is True
        assert [c["status"] for c in report["checks"] if c["check"] == "eviction"] == ["warn"]
        r.config_set("maxmemory", str(1 << 30))
        proc = cli("doctor", "-p", srv)
        assert proc.returncode == 1 and "allkeys-lru" in proc.stdout
    finally:
        r.config_set("maxmemory", "0")
        r.config_set("maxmemory-policy", "noeviction")
    r.hset("__ctx:schema:order", "digest", "0" * 40)  # edited by hand
    report = json.loads(cli("doctor", "--json", "-p", srv).stdout)
    assert report["ok"] is False
    assert any("digest does not match" in c["detail"] for c in report["checks"])


# --------------------------------------------------------------------------- connecting


def test_connection_options_and_precedence(store, srv, engine) -> None:
    if engine == "lua":
        pytest.skip("engine-independent: checked once, on the module's server")
    store.register_schema("order", Order)
    store.cas("order:1", 0, order(1), schema="order")
    db3 = redis.Redis(port=srv, db=3)
    with ctxlink.connect(db3, engine=store.engine) as s3:
        s3.register_schema("order", Order)
        s3.cas("order:1", 0, order(33), schema="order")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    good = f"redis://127.0.0.1:{srv}/0"
    env_good, env_dead = {**ENV, "REDIS_URL": good}, {**ENV, "REDIS_URL": dead}
    msg = lambda out: json.loads(out)["message"]["order_id"]  # noqa: E731
    assert msg(ok("get", "order:1", "--json", env=env_good)) == "o-1"  # $REDIS_URL
    assert msg(ok("get", "order:1", "--json", "-p", srv, env=env_dead)) == "o-1"  # -p beats it
    assert msg(ok("--url", good, "get", "order:1", "--json", "-p", "1")) == "o-1"  # --url beats -p
    assert msg(ok("-h", "127.0.0.1", "-p", srv, "-n", "3", "get", "order:1", "--json")) == "o-33"
    assert msg(ok("get", "order:1", "--json", "-n", "3", env=env_good)) == "o-33"
    err = fails("get", "order:1", "--url", dead)
    assert err.startswith("ctxlink: ConnectionError: ") and "refused" in err.lower()
    assert dead in err
    assert fails("get", "k", "--engine", "nope", code=2)
    assert "redis://" in fails("get", "k", "--url", "http://x", code=1)


def test_user_and_password(store, srv, engine) -> None:
    if engine == "lua":
        pytest.skip("engine-independent: checked once, on the module's server")
    r = store.client
    r.acl_setuser("alice", enabled=True, passwords=["+sesame"], keys=["*"], commands=["+@all"])
    try:
        err = fails("ls", "-p", srv, "--user", "alice", "-a", "wrong")
        assert "WRONGPASS" in err or "AuthenticationError" in err, err
        assert ok("ls", "-p", srv, "--user", "alice", "-a", "sesame", "--json").strip() == "[]"
        url = f"redis://alice:sesame@127.0.0.1:{srv}/0"
        assert ok("ls", "--url", url, "--json").strip() == "[]"
    finally:
        r.acl_deluser("alice")


def _certificates(d: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, signed by it (openssl)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=ctxlink-test-ca"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext"],
    ):
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)


def test_tls_with_a_ca_certificate(tmp_path, engine) -> None:
    if engine == "lua":
        pytest.skip("engine-independent: checked once")
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make certificates")
    _certificates(tmp_path)
    tls_port = free_port()
    server = EmbeddedRedis(args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no"])
    try:
        server.start()
    except Exception as exc:  # a redis-server built without TLS
        pytest.skip(f"redis-server without TLS: {exc}")
    try:
        with ctxlink.connect(server.client()) as s:
            s.register_schema("order", Order)
            s.cas("order:1", 0, order(1), schema="order")
        ca = tmp_path / "ca.crt"
        rows = as_json("ls", "-p", tls_port, "--tls", "--cacert", ca)
        assert [r["key"] for r in rows] == ["order:1"]
        url = f"rediss://127.0.0.1:{tls_port}/0"
        assert as_json("get", "order:1", "--url", url, "--cacert", ca)["version"] == 1
        fails("ls", "-p", tls_port, "--tls")  # the server's certificate is not trusted
    finally:
        server.close()


# --------------------------------------------------------------------------- a cluster


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[EmbeddedRedis]]:
    """Three module primaries, slots split evenly."""
    nodes: list[EmbeddedRedis] = []
    try:
        buses = []
        for _ in range(3):
            bus = free_port()
            nodes.append(EmbeddedRedis(module=find_module(), args=[
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-node-timeout", "5000"]).start())
            buses.append(bus)
        clients = [n.client() for n in nodes]
        for c, (lo, hi) in zip(clients, [(0, 5460), (5461, 10922), (10923, 16383)]):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for n, bus in zip(nodes[1:], buses[1:]):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
        _wait(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                          for c in clients), "cluster_state:ok")
        for c in clients:
            c.close()
        yield nodes
    finally:
        for n in nodes:
            n.close()


def test_cluster_ls_stats_doctor(cluster) -> None:
    port = cluster[0].port
    rc = RedisCluster(host="127.0.0.1", port=port)
    try:
        store = ctxlink.connect(rc)
        store.register_schema("order", Order)
        keys = [f"order:{i}" for i in range(40)]
        for i, key in enumerate(keys):
            store.cas(key, 0, order(i), schema="order", by="router")
        owners = {rc.get_node_from_key(k).name for k in keys}
        assert len(owners) == 3  # the keys are spread over every primary
        rows = as_json("ls", "-c", "-p", port)
        assert sorted(r["key"] for r in rows) == sorted(keys)
        assert all(r["schema"] == "order" and r["updated_by"] == "router" for r in rows)
        assert json.loads(ok("-c", "-p", port, "get", "order:7", "--json"))["message"][
            "order_id"] == "o-7"
        elsewhere = next(k for k in keys if rc.get_node_from_key(k).port != port)
        assert "add -c/--cluster" in fails("get", elsewhere, "-p", port)  # MOVED, without -c
        stats = as_json("stats", "-c", "-p", port)
        assert stats["engine"] == "module" and len(stats["nodes"]) == 3
        assert stats["info"]["ctx_cas_ok"] == sum(n["ctx_cas_ok"] for n in stats["nodes"].values())
        report = as_json("doctor", "-c", "-p", port)
        assert report["ok"] is True, report
        assert any("identical in all 16384 slot copies" in c["detail"] for c in report["checks"])
        # lose one slot copy, alter another: doctor names both, and exits 1
        node = rc.get_node_from_key("order:1")
        slot = rc.keyslot("order:1")
        direct = rc.get_redis_connection(node)
        direct.delete(f"__ctx:{{{_slot_tag(slot)}}}:schema:order")
        other = rc.keyslot("order:2") if rc.keyslot("order:2") != slot else rc.keyslot("order:3")
        rc.get_redis_connection(rc.get_node_from_key(f"{{{_slot_tag(other)}}}")).hset(
            f"__ctx:{{{_slot_tag(other)}}}:schema:order", "compat", "WIRE")
        proc = cli("doctor", "-c", "-p", port, "--json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        details = " ".join(c["detail"] for c in json.loads(proc.stdout)["checks"]
                           if c["status"] == "fail")
        assert "1 of 16384 slot copies missing" in details and node.name in details
        assert "1 of 16384 slot copies different" in details
    finally:
        rc.close()
