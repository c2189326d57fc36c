"""The ``ctxlink`` command line, every command run as a subprocess (``python -m ctxlink``)
against real servers: the module and the Lua engine on a standalone server, and a 3-primary
module cluster for ``ls``, ``stats`` and ``doctor``. JSON output is parsed and compared with what
the SDK reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import ctxlink
import pytest
import redis
from ctxlink._cluster import _slot_tag
from ctxlink._order_schema import Order
from ctxlink.embedded import EmbeddedCluster, EmbeddedRedis, find_module, free_port
from google.protobuf import json_format
from redis.cluster import RedisCluster

REPO = Path(__file__).resolve().parent.parent
ORDER_PROTO = REPO / "proto" / "order.proto"
PROTOS = REPO / "tests" / "protos"
ENV = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CTXLINK_DEBUG")}


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctxlink", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env or ENV)


_BATCH = """
import contextlib, io, json, sys
from ctxlink.cli import main
runs = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    runs.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(runs))
"""


def batch(*argvs: tuple[object, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Several commands run one after the other by ``ctxlink.cli.main`` in one subprocess (one
    interpreter start instead of one each): their results."""
    lists = [[str(a) for a in argv] for argv in argvs]
    done = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(lists),
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    return [subprocess.CompletedProcess(argv, code, out, err)
            for argv, (code, out, err) in zip(lists, json.loads(done.stdout), strict=True)]


def succeeded(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def failed(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one-line error of a failing command (status ``code``, no traceback)."""
    assert proc.returncode == code, \
        f"{proc.args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if code == 1:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctxlink: "), proc.stderr
    return proc.stderr.strip()


def ok(*args: object, **kw) -> str:
    return succeeded(cli(*args, **kw))


def as_json(*args: object) -> object:
    return json.loads(ok(*args, "--json"))


def fails(*args: object, code: int = 1, **kw) -> str:
    return failed(cli(*args, **kw), code)


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
    # usage errors (2), nothing sent (-p 1: no server there): KEY missing, SECONDS <= 0, and
    # bad --since/--limit/--count/--after/--history
    runs = batch(("get", "--help"), ("get",), ("touch", "k", "0"), ("nosuchcommand",),
                 *((*bad, "-p", "1") for bad in (
                     ("history", "k", "--since", "-1"), ("history", "k", "--limit", "x"),
                     ("watch", "k", "--count", "0"), ("watch", "k", "--after", "-2"),
                     ("schema", "push", ORDER_PROTO, "a.B", "--history", "1001"),
                     ("schema", "push", ORDER_PROTO, "a.B", "--history", "-1"))))
    assert "-h, --host" in succeeded(runs[0])
    for run in runs[1:]:
        assert "Usage: " in failed(run, code=2)


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
    *runs, shown = batch(*((*args, "--json") for args in variants[1:] if engine == "module"),
                         ("get", "order:1", "-p", srv, "--engine", engine))
    assert re.fullmatch("[0-9a-f]{16}", snap.incarnation)
    for out in [ok(*variants[0], "--json")] + [succeeded(run) for run in runs]:
        data = json.loads(out)
        assert data == {
            "key": "order:1", "version": 2, "incarnation": snap.incarnation,
            "schema": "order", "updated_ms": snap.updated_ms, "updated_by": "pricing",
            "message": json_format.MessageToDict(snap.decode(Order),
                                                 preserving_proto_field_name=True),
        }
    assert data["message"]["order_id"] == "o-1" and data["message"]["discount"] == "7"
    text = succeeded(shown)
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
    other, orders, nothing, text = (succeeded(run) for run in batch(
        ("ls", "--schema", "other", "-p", srv, "--json"),
        ("ls", "order:*", "--schema", "order", "-p", srv, "--json"),
        ("ls", "nothing:*", "-p", srv, "--json"), ("ls", "-p", srv)))
    assert [r["key"] for r in json.loads(other)] == ["misc:1"]
    assert len(json.loads(orders)) == 5
    assert json.loads(nothing) == []
    assert "6 contexts" in text


def test_touch(store, srv) -> None:
    store.register_schema("order", Order, history=2)
    store.cas("order:1", 0, order(1), schema="order")
    ok("touch", "order:1", "30", "-p", srv)
    assert 0 < store.client.pttl("order:1") <= 30_000
    assert 0 < store.client.pttl("__ctxh:order:1") <= 30_000  # its history expires with it
    assert fails("touch", "nope", "30", "-p", srv) == "ctxlink: no context at 'nope'"


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


def test_demo_on_a_given_server_leaves_its_orders(srv, engine, tmp_path) -> None:
    """README, "Watch your agents": a schema with history, a watch started before the demo,
    the demo on a server, then ls, history and get on its data."""
    from ctxlink._registry import build_descriptor_set

    fds = tmp_path / "order.pb"
    fds.write_bytes(build_descriptor_set(Order.DESCRIPTOR))
    assert ok("schema", "push", "--descriptor-set", fds, "ctxlink.example.Order", "--name",
              "order", "--history", "20", "-p", srv, "-n", "6").endswith(", history 20\n")
    tail = Tail("order:7", "--after", "0", "--count", "4", "--json", "-p", srv, "-n", "6")
    out = ok("demo", "-p", srv, "-n", "6", "--orders", "12", "--lanes", "2")
    assert f"127.0.0.1:{srv}/6" in out and "ctxlink (" in out
    code, lines, err = tail.end()
    assert (code, err) == (0, "")
    seen = [json.loads(line) for line in lines.splitlines()]
    assert seen[-1]["version"] == 4 and seen[-1]["message"]["order_id"] == "o-7"
    rows, changes, data, stats = (succeeded(run) for run in batch(
        ("ls", "order:*", "-p", srv, "-n", "6", "--json"),
        ("history", "declared:order:7", "-p", srv, "-n", "6", "--json"),
        ("get", "order:7", "-p", srv, "-n", "6", "--json"),
        ("stats", "-p", srv, "-n", "6", "--json")))
    rows = json.loads(rows)
    assert len(rows) == 12 and {r["version"] for r in rows} == {4}
    changes = [json.loads(line) for line in changes.splitlines()]
    assert [c["kind"] for c in changes] == ["create", "patch", "patch", "patch"]
    assert {c["updated_by"] for c in changes[1:]} == {"router", "fulfillment", "pricing"}
    data = json.loads(data)
    assert data == seen[-1]  # what the watch printed last is the context as it stayed
    assert data["message"]["order_id"] == "o-7" and data["message"]["inventory_reserved"]
    assert data["updated_by"] in ("router", "fulfillment", "pricing")
    assert json.loads(stats)["engine"] == engine


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
    every, since, text, nope = batch(
        ("history", "order:1", "--json", "-p", srv),
        ("history", "order:1", "--since", "3", "--limit", "1", "--json", "-p", srv),
        ("history", "order:1", "-p", srv), ("history", "nope", "-p", srv))
    lines = [json.loads(line) for line in succeeded(every).splitlines()]
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
    assert [json.loads(line)["version"] for line in succeeded(since).splitlines()] == [5]
    for part in ("patch", "status", "final_price", "(whole)", "3 changes", "keeps the last 3"):
        assert part in succeeded(text), text
    assert failed(nope) == "ctxlink: no context at 'nope'"


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
    got, early = batch(("get", "order:1", "-p", srv, "--json"),
                       ("watch", "order:1", "--after", "4", "-p", srv))
    assert seen[-1] == json.loads(succeeded(got))
    assert failed(early) == "ctxlink: --after 4: the context at 'order:1' is at version 3"
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


def test_schema_push_window_sets_and_show_reports_the_write_id_window(store, srv) -> None:
    pushed, shown, text, bad, again = batch(
        ("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--name", "w", "--window", "64",
         "-p", srv),
        ("schema", "show", "w", "--json", "-p", srv), ("schema", "show", "w", "-p", srv),
        ("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--window", "256", "-p", srv),
        ("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--name", "w", "-p", srv))
    assert succeeded(pushed).strip() == "w: ctxlink.example.Order, revision 1, window 64"
    assert json.loads(succeeded(shown))["window"] == 64
    assert "the last 64 write ids of each context" in succeeded(text)
    assert "Usage: " in failed(bad, code=2)
    assert "revision 1, window 64" in succeeded(again)  # not given: the entry's
    assert store.get_schema("w").window == 64


def test_schema_push_ls_show(store, srv, tmp_path, engine) -> None:
    first, again = batch(
        ("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "--name", "order", "-p", srv),
        # the message type defaults to the name; the same definition keeps its revision
        ("schema", "push", ORDER_PROTO, "ctxlink.example.Order", "-I", REPO / "proto",
         "-p", srv))
    assert succeeded(first).strip() == "order: ctxlink.example.Order, revision 1"
    succeeded(again)
    info = store.get_schema("order")
    assert info is not None and info.message_type == "ctxlink.example.Order"
    fds = tmp_path / "order.pb"  # a compiled set instead of the .proto
    fds.write_bytes(info.descriptor_set)
    push_set = ("schema", "push", "--descriptor-set", fds, "ctxlink.example.Order", "-p", srv)
    listed, shown, text, nope, bad_field, with_history, shown_h, text_h = batch(
        ("schema", "ls", "--json", "-p", srv), ("schema", "show", "order", "--json", "-p", srv),
        ("schema", "show", "order", "-p", srv), ("schema", "show", "nope", "-p", srv),
        (*push_set, "--version-field", "nope"),
        # history settings: other settings for the same definition are a new revision
        (*push_set, "--name", "order", "--history", "5", "--history-payloads"),
        ("schema", "show", "order", "--json", "-p", srv), ("schema", "show", "order", "-p", srv))
    assert json.loads(succeeded(listed)) == [
        {"name": "ctxlink.example.Order", "message_type": "ctxlink.example.Order", "revision": 1},
        {"name": "order", "message_type": "ctxlink.example.Order", "revision": 1},
    ]
    shown = json.loads(succeeded(shown))
    assert shown["message_type"] == "ctxlink.example.Order" and shown["revision"] == 1
    assert (shown["version_field"], shown["compat"]) == ("version", "WIRE_JSON")
    assert (shown["history"], shown["history_payloads"]) == (0, False)
    assert {"number": 2, "name": "version", "type": "int64", "repeated": False} in shown["fields"]
    assert {"number": 10, "name": "items", "type": "ctxlink.example.LineItem",
            "repeated": True} in shown["fields"]
    assert "ctxlink.example.LineItem" in succeeded(text) and "off" in text.stdout
    assert failed(nope) == "ctxlink: CTXSCHEMA unknown schema 'nope'"
    assert "has no top-level field 'nope'" in failed(bad_field)
    assert succeeded(with_history).strip() == (
        "order: ctxlink.example.Order, revision 2, history 5 with payloads")
    info = store.get_schema("order")
    assert (info.revision, info.history, info.history_payloads) == (2, 5, True)
    shown = json.loads(succeeded(shown_h))
    assert (shown["revision"], shown["history"], shown["history_payloads"]) == (2, 5, True)
    assert "the last 5 changes of each context, with payloads" in succeeded(text_h)
    if engine == "lua":
        return  # the rest does not depend on the engine
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3"; message B { int64 version = 1; strin x = 2; }\n')
    off, wire, shown, no_message, no_file, broken = batch(
        (*push_set, "--name", "order", "--no-history-payloads"),
        (*push_set, "--name", "from-set", "--compat", "wire"),
        ("schema", "show", "from-set", "--json", "-p", srv),
        # bad input: a usage error (2), or the server's refusal in one line (1)
        ("schema", "push", ORDER_PROTO, "-p", srv),
        ("schema", "push", tmp_path / "none.proto", "a.B", "-p", srv),
        ("schema", "push", bad, "B", "-p", srv))
    assert succeeded(off).strip() == "order: ctxlink.example.Order, revision 3, history 5"
    info = store.get_schema("order")
    assert (info.revision, info.history, info.history_payloads) == (3, 5, False)
    assert "revision 1" in succeeded(wire)
    assert json.loads(succeeded(shown))["compat"] == "WIRE"
    failed(no_message, code=2)
    failed(no_file, code=2)
    assert "protoc could not compile" in failed(broken)


def test_schema_check_uses_the_compatibility_rules(store, srv) -> None:
    store.register_schema("order", Order)
    compat = PROTOS / "order_v2_compat.proto"
    incompat = PROTOS / "order_v2_incompat.proto"
    check = ("schema", "check", "-p", srv)
    accepted, refused, verdict, pushed, new, same = batch(
        (*check, compat, "ctxlink.example.Order", "--name", "order"),
        (*check, incompat, "ctxlink.example.Order", "--name", "order"),
        (*check, incompat, "ctxlink.example.Order", "--name", "order", "--json"),
        # the verdict is the one push gets
        ("schema", "push", incompat, "ctxlink.example.Order", "--name", "order", "-p", srv),
        (*check, ORDER_PROTO, "ctxlink.example.Order", "--name", "new", "--json"),
        (*check, ORDER_PROTO, "ctxlink.example.Order", "--name", "order", "--json"))
    assert succeeded(accepted).startswith("accepted: order would be revision 2")
    assert refused.returncode == 1 and refused.stdout.startswith(
        "refused: CTXSCHEMA incompatible")
    verdict = json.loads(verdict.stdout)
    assert verdict["accepted"] is False and "base_price" in verdict["reason"]
    assert "base_price" in failed(pushed)
    assert store.get_schema("order").revision == 1  # nothing was written by check (or push)
    new = json.loads(succeeded(new))
    assert new["accepted"] is True and new["revision"] == 1
    same = json.loads(succeeded(same))
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
    store.register_schema("order", Order, history=2)  # its streams are not counted
    for i in range(3):
        store.cas(f"order:{i}", 0, order(i), schema="order")
    data, text = (succeeded(run) for run in batch(("stats", "-p", srv, "--json"),
                                                  ("stats", "-p", srv)))
    data = json.loads(data)
    assert data["engine"] == engine
    if engine == "module":
        assert data["info"]["ctx_protocol"] >= 2 and data["info"]["ctx_cas_ok"] >= 3
    else:
        assert data == {"engine": "lua", "schemas": 1, "contexts": 3,
                        "contexts_by_schema": {"order": 3}}
    assert engine in text


def test_doctor(store, srv, engine) -> None:
    store.register_schema("order", Order)
    store.register_schema("hist", Order, history=2)
    for i in range(3):
        store.cas(f"h:{i}", 0, order(i), schema="hist")
    r = store.client
    r.delete("h:1")  # a raw DEL leaves the context's history stream behind
    report = as_json("doctor", "-p", srv)
    assert report["ok"] is True, report  # a warning only
    assert {c["check"] for c in report["checks"]} >= {"server", "engine", "registry", "history",
                                                      "eviction"}
    (check,) = [c for c in report["checks"] if c["check"] == "history"]
    assert check["status"] == "warn" and "1 of all 3 history stream(s)" in check["detail"]
    assert "__ctxh:h:1" in check["detail"]
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        r.config_set("maxmemory", "0")
        report = as_json("doctor", "-p", srv)  # no limit yet: a warning only
        assert report["ok"] is True
        assert [c["status"] for c in report["checks"] if c["check"] == "eviction"] == ["warn"]
        r.config_set("maxmemory", str(1 << 30))
        proc = cli("doctor", "-p", srv, env={**ENV, "COLUMNS": "400"})
        assert proc.returncode == 1 and "allkeys-lru" in proc.stdout
        assert "history streams" in proc.stdout
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


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[EmbeddedRedis]]:
    """Three module primaries, slots split evenly."""
    with EmbeddedCluster(3, module=find_module()) as c:
        yield c.nodes


def test_cluster_ls_stats_doctor(cluster) -> None:
    port = cluster[0].port
    rc = RedisCluster(host="127.0.0.1", port=port)
    try:
        store = ctxlink.connect(rc)
        store.register_schema("order", Order, history=2)
        keys = [f"order:{i}" for i in range(40)]
        for i, key in enumerate(keys):
            store.cas(key, 0, order(i), schema="order", by="router")
        owners = {rc.get_node_from_key(k).name for k in keys}
        assert len(owners) == 3  # the keys are spread over every primary
        rows = as_json("ls", "-c", "-p", port)
        assert sorted(r["key"] for r in rows) == sorted(keys)
        assert all(r["schema"] == "order" and r["updated_by"] == "router" for r in rows)
        elsewhere = next(k for k in keys if rc.get_node_from_key(k).port != port)
        got, changes, tail = batch(
            ("-c", "-p", port, "get", "order:7", "--json"),
            # history and watch of a context on another primary: __ctxh:{<tag>}:<key>, CTX.WAIT
            ("history", elsewhere, "-c", "-p", port, "--json"),
            ("watch", elsewhere, "--after", "0", "--count", "1", "--json", "-c", "-p", port))
        assert json.loads(succeeded(got))["message"]["order_id"] == "o-7"
        assert [(c["kind"], c["version"], c["updated_by"]) for c in map(
            json.loads, succeeded(changes).splitlines())] == [("create", 1, "router")]
        assert json.loads(succeeded(tail))["key"] == elsewhere
        assert "add -c/--cluster" in fails("get", elsewhere, "-p", port)  # MOVED, without -c
        stats = as_json("stats", "-c", "-p", port)
        assert stats["engine"] == "module" and len(stats["nodes"]) == 3
        assert stats["info"]["ctx_cas_ok"] == sum(n["ctx_cas_ok"] for n in stats["nodes"].values())
        report = as_json("doctor", "-c", "-p", port)
        assert report["ok"] is True, report
        assert any("identical in all 16384 slot copies" in c["detail"] for c in report["checks"])
        assert any(c["detail"] == "all 40 history stream(s) checked: each has its context"
                   for c in report["checks"])  # __ctxh:{<tag>}:<key>, each on its key's node
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
