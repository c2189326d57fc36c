"""``ctxlink mcp``: the MCP server run as a subprocess (``python -m ctxlink mcp``) and driven over
stdio by the official ``mcp`` SDK's client, against real redis-servers, on both engines: every
tool, a conflict result, a schema refusal naming the field, the ``--prefix`` allow-list,
``--read-only``, the reply cap, contexts as resources, and a 3-primary module cluster (``-c``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import ctxlink
import ctxlink.aio
from ctxlink._order_schema import Order

mcp = pytest.importorskip("mcp", reason="the mcp package (the ctxlink[mcp] extra) is not "
                          "installed: pip install 'ctxlink[mcp]' (requirements-dev.txt has it)")
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CTXLINK_DEBUG")}
TOOLS = {"get_context", "write_context", "update_fields", "append_items", "context_history",
         "wait_for_change", "describe_schema"}
WRITES = {"write_context", "update_fields", "append_items"}


@pytest.fixture
def srv(shared_server):
    r = shared_server.r
    r.flushall()
    r.execute_command("SCRIPT", "FLUSH")
    yield shared_server.port
    shared_server.assert_alive()


@pytest.fixture
def store(srv, engine, pb):
    with ctxlink.connect(f"redis://127.0.0.1:{srv}/0", engine=engine) as s:
        s.register_schema("order", Order, history=20, history_payloads=True)
        s.register_schema("strict", pb.fds("strict2"), message_type="ctxlink.test.p2.Strict")
        yield s


class Session:
    """A client session on a ``ctxlink mcp`` subprocess; ``call`` answers the structured
    result (and checks that the text content is the same JSON)."""

    def __init__(self, session: ClientSession) -> None:
        self.s = session

    async def call(self, name: str, **args: Any) -> dict[str, Any]:
        res = await self.s.call_tool(name, args)
        data = res.structured_content
        assert data is not None, res
        assert json.loads(res.content[0].text) == data
        assert res.is_error == (not data["ok"]), data
        return data


def run(srv: int, engine: str, flags: list[str], body) -> None:
    run_on(["-p", str(srv), "--engine", engine, *flags], body)


def run_on(args: list[str], body) -> None:
    """Starts ``python -m ctxlink mcp ARGS``, runs ``body(Session)`` against it, stops it."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "ctxlink", "mcp", *args], env=ENV)

    async def main() -> None:
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await asyncio.wait_for(body(Session(session)), 60)

    asyncio.run(main())


def test_import_ctxlink_does_not_import_mcp() -> None:
    code = ("import sys, ctxlink, ctxlink.aio, ctxlink.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types') "
            "or m.startswith('ctxlink.mcp')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_tool_over_stdio(store, srv, engine) -> None:
    def later_write() -> None:
        time.sleep(0.3)
        snap = store.get("order:1")
        o = snap.decode(Order)
        o.base_price = 999
        assert store.cas("order:1", snap.version, o, by="other")

    async def body(c: Session) -> None:
        names = {t.name for t in (await c.s.list_tools()).tools}
        assert names == TOOLS
        # describe_schema: the registered schemas, then one's fields and types
        listed = await c.call("describe_schema")
        assert [s["schema"] for s in listed["schemas"]] == ["order", "strict"]
        d = await c.call("describe_schema", schema="order")
        fields = {f["name"]: f for f in d["fields"]}
        assert d["message_type"] == "ctxlink.example.Order" and d["version_field"] == "version"
        assert fields["items"]["repeated"] and fields["items"]["type"] == "ctxlink.example.LineItem"
        assert "note" in fields["version"] and fields["base_price"]["json_name"] == "basePrice"
        assert "ORDER_STATUS_PRICED" in d["enums"]["ctxlink.example.OrderStatus"]
        assert {f["name"] for f in d["messages"]["ctxlink.example.LineItem"]} == {"sku", "quantity"}
        # absent, then created (0 creates; the schema is required then)
        assert (await c.call("get_context", key="order:1"))["exists"] is False
        need = await c.call("write_context", key="order:1", expected_version=0,
                            message={"order_id": "o-1"})
        assert need["error"]["field"] == "schema"
        first = {"order_id": "o-1", "base_price": 1000, "items": [{"sku": "A", "quantity": 2}]}
        w = await c.call("write_context", key="order:1", expected_version=0, message=first,
                         schema="order")
        assert w["ok"] and w["version"] == 1
        got = await c.call("get_context", key="order:1")
        assert got["version"] == 1 and got["updated_by"] == "mcp" and got["schema"] == "order"
        # protobuf's JSON mapping: 64-bit integers as strings
        assert got["message"] == {**first, "base_price": "1000", "version": "1"}
        assert store.get("order:1").decode(Order).items[0].sku == "A"
        # a conflict: a structured result with the current version and state
        again = await c.call("write_context", key="order:1", expected_version=0,
                             message={"order_id": "o-x"}, schema="order")
        assert again["error"]["code"] == "CONFLICT"
        assert again["current"]["version"] == 1
        assert again["current"]["message"]["order_id"] == "o-1"
        # schema refusals name the field; nothing is written
        for message, field in (({"discount": "abc"}, "discount"), ({"nope": 1}, "nope"),
                               ({"items": [{"skux": "A"}]}, "items[0].skux"),
                               ({"status": "NO_SUCH"}, "status"), ("{not json", "message"),
                               ({"items": [{"quantity": -1}]}, "items.quantity")):
            bad = await c.call("write_context", key="order:1", expected_version=1,
                               message=message)
            assert bad["error"]["code"] == "INVALID_MESSAGE", bad
            assert bad["error"]["field"] == field, bad
        # a value the server's validation refuses (a proto2 required field left out): the
        # server's verdict, naming the field
        strict = await c.call("write_context", key="strict:1", expected_version=0,
                              message={"id": "s1", "inner": {"n": 1}}, schema="strict")
        assert strict["error"]["code"] == "CTXINVALID", strict
        assert strict["error"]["field"] == "inner.name", strict
        assert store.get("strict:1") is None
        ok = await c.call("write_context", key="strict:1", expected_version=0,
                          message={"id": "s1", "inner": {"name": "n"}}, schema="strict")
        assert ok["version"] == 1
        assert (await c.call("get_context", key="strict:1"))["message"] == {
            "version": "1", "id": "s1", "inner": {"name": "n"}}
        # message as JSON text works too
        w2 = await c.call("write_context", key="order:1", expected_version=1,
                          message=json.dumps(first))
        assert w2["version"] == 2
        # field patches based on version 2: disjoint fields merge, the same field conflicts
        p1 = await c.call("update_fields", key="order:1", base_version=2,
                          fields={"discount": 5})
        assert p1["ok"] and p1["version"] == 3 and p1["fields"] == ["discount"]
        p2 = await c.call("update_fields", key="order:1", base_version=2,
                          fields={"status": "ORDER_STATUS_PRICED", "finalPrice": 995})
        assert p2["ok"] and p2["version"] == 4
        msg = store.get("order:1").decode(Order)
        assert (msg.discount, msg.final_price, msg.status) == (5, 995, 3)
        p3 = await c.call("update_fields", key="order:1", base_version=2,
                          fields={"discount": 7})
        assert p3["error"]["code"] == "CONFLICT" and p3["changed"] == ["discount"]
        assert p3["current"]["version"] == 4 and p3["current"]["message"]["discount"] == "5"
        p4 = await c.call("update_fields", key="order:1", base_version=3,
                          fields={"base_price": 1}, reads=["status"])
        assert p4["error"]["code"] == "CONFLICT" and p4["changed"] == ["status"]
        p5 = await c.call("update_fields", key="order:1", base_version=4,
                          fields={"bogus": 1})
        assert p5["error"]["code"] == "INVALID_MESSAGE" and p5["error"]["field"] == "bogus"
        p6 = await c.call("update_fields", key="order:1", base_version=4,
                          fields={"discount": 1}, reads=["nosuch"])
        assert p6["error"]["code"] == "CTXFIELD" and p6["error"]["field"] == "nosuch"
        assert (await c.call("update_fields", key="nope:1", base_version=1,
                             fields={"discount": 1}))["error"]["code"] == "NOT_FOUND"
        assert store.get("order:1").version == 4
        # append_items: its arguments are checked first (the field, each item as the element type)
        ap = await c.call("append_items", key="order:1", field="discount", items=[1])
        assert ap["error"]["code"] == "CTXFIELD" and ap["error"]["field"] == "field"
        ap = await c.call("append_items", key="order:1", field="items",
                          items=[{"sku": "B"}, {"skux": "C"}])
        assert ap["error"]["code"] == "INVALID_MESSAGE" and ap["error"]["field"] == "items[1].skux"
        assert store.get("order:1").version == 4
        # history
        h = await c.call("context_history", key="order:1")
        assert [(x["version"], x["kind"]) for x in h["changes"]] == [
            (1, "create"), (2, "update"), (3, "patch"), (4, "patch")]
        assert h["changes"][3]["fields"] == ["status", "final_price"] or \
            sorted(h["changes"][3]["fields"]) == ["final_price", "status"]
        assert h["changes"][2]["message"]["discount"] == "5"
        h2 = await c.call("context_history", key="order:1", since_version=2, limit=1)
        assert [x["version"] for x in h2["changes"]] == [4]
        # wait_for_change: at once, a timeout, and a change made meanwhile
        now = await c.call("wait_for_change", key="order:1", after_version=1, timeout_s=5)
        assert now["changed"] and now["version"] == 4
        quiet = await c.call("wait_for_change", key="order:1", after_version=4, timeout_s=0.2)
        assert quiet["ok"] and quiet["changed"] is False
        writer = threading.Thread(target=later_write)
        writer.start()
        woke = await c.call("wait_for_change", key="order:1", after_version=4, timeout_s=20)
        writer.join()
        assert woke["changed"] and woke["version"] == 5 and woke["updated_by"] == "other"
        assert woke["message"]["base_price"] == "999"

        # the server answers other calls while one waits (same session)
        async def patch_soon() -> dict[str, Any]:
            await asyncio.sleep(0.3)
            return await c.call("update_fields", key="order:1", base_version=5,
                                fields={"last_updated_by": "agent-b"})

        woke2, patched = await asyncio.gather(
            c.call("wait_for_change", key="order:1", after_version=5, timeout_s=20),
            patch_soon())
        assert patched["version"] == 6 and woke2["version"] == 6
        assert woke2["message"]["last_updated_by"] == "agent-b"
        # arguments outside a tool's input schema: structured, naming the argument
        too_long = await c.call("wait_for_change", key="order:1", after_version=4, timeout_s=61)
        assert too_long["error"]["code"] == "BAD_ARGUMENT"
        assert too_long["error"]["field"] == "timeout_s"
        negative = await c.call("update_fields", key="order:1", base_version=-1,
                                fields={"discount": 1})
        assert negative["error"]["field"] == "base_version"
        # appends (store.append), and a conflict with the fields it reads
        assert store.cas("order:2", 0, Order(order_id="o-2", discount=1), schema="order")
        ap = await c.call("append_items", key="order:2", field="items",
                          items=[{"sku": "B", "quantity": 1}, {"sku": "C"}])
        assert ap["ok"] and ap["version"] == 2 and ap["appended"] == 2, ap
        ap = await c.call("append_items", key="order:2", field="items",
                          items=[{"sku": "D"}])
        assert ap["ok"] and ap["version"] == 3, ap
        assert [i.sku for i in store.get("order:2").decode(Order).items] == ["B", "C", "D"]
        o = store.get("order:2").decode(Order)
        o.discount = 2
        assert store.cas("order:2", 3, o)
        ap = await c.call("append_items", key="order:2", field="items",
                          items=[{"sku": "E"}], reads=["discount"], base_version=3)
        assert ap["error"]["code"] == "CONFLICT" and ap["changed"] == ["discount"], ap
        assert ap["current"]["version"] == 4
        # describe_schema by key
        assert (await c.call("describe_schema", key="order:1"))["schema"] == "order"
        # resources
        templates = (await c.s.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["ctxlink://{key}"]
        res = await c.s.read_resource("ctxlink://order:1")
        data = json.loads(res.contents[0].text)
        assert data["version"] == 6 and data["message"]["order_id"] == "o-1"

    run(srv, engine, [], body)


def test_prefix_read_only_and_reply_cap(store, srv, engine) -> None:
    store.register_schema("lean", Order, history=100)  # history without payloads
    big = Order(order_id="big")
    for i in range(100):
        big.items.add(sku=f"SKU-{i:04d}-{'x' * 20}", quantity=i + 1)
    assert store.cas("team:big", 0, big, schema="lean")
    for v in range(1, 40):
        o = store.get("team:big").decode(Order)
        o.discount = v
        assert store.cas("team:big", v, o)
    assert store.cas("team:small", 0, Order(order_id="s"), schema="order")
    assert store.cas("order:1", 0, Order(order_id="o"), schema="order")
    assert store.cas("team:sp ace/x", 0, Order(order_id="sp"), schema="order")
    store.client.rpush("team:a-list", "not a context")

    async def body(c: Session) -> None:
        names = {t.name for t in (await c.s.list_tools()).tools}
        assert names == TOOLS - WRITES  # read-only: no write tools at all
        for tool, args in (("write_context", {"expected_version": 1, "message": {}}),
                           ("update_fields", {"base_version": 1, "fields": {"discount": 1}}),
                           ("append_items", {"field": "items", "items": [{}]})):
            refused = await c.call(tool, key="team:small", **args)
            assert refused["error"]["code"] == "READ_ONLY", refused
        assert store.get("team:small").version == 1
        # the allow-list
        out = await c.call("get_context", key="order:1")
        assert out["error"]["code"] == "KEY_REFUSED" and out["error"]["field"] == "key"
        assert out["allowed_prefixes"] == ["team:", "shared:"]
        for tool, args in (("context_history", {}), ("wait_for_change",
                                                     {"after_version": 0, "timeout_s": 1}),
                           ("describe_schema", {})):
            r = await c.call(tool, key="order:1", **args)
            assert r["error"]["code"] == "KEY_REFUSED", (tool, r)
        assert (await c.call("get_context", key="__ctx:schema:order"))["error"]["code"] == \
            "KEY_REFUSED"
        assert (await c.call("get_context", key="team:small"))["message"]["order_id"] == "s"
        # the reply cap: a large context is refused, a history loses its oldest changes
        large = await c.call("get_context", key="team:big")
        assert large["error"]["code"] == "REPLY_TOO_LARGE" and large["cap"] == 4096
        assert large["size"] > 4096
        h = await c.call("context_history", key="team:big")
        assert h["ok"] and h["truncated"] and h["changes"][-1]["version"] == 40
        assert len(json.dumps(h, separators=(",", ":")).encode()) <= 4096
        # resources honour the same rules
        with pytest.raises(Exception, match="outside"):
            await c.s.read_resource("ctxlink://order:1")
        small = json.loads((await c.s.read_resource("ctxlink://team:small")).contents[0].text)
        assert small["version"] == 1
        # the resource list: the contexts under the prefixes (not other keys, not other types)
        listed = [r.uri for r in (await c.s.list_resources()).resources]
        assert listed == ["ctxlink://team:big", "ctxlink://team:small",
                          "ctxlink://team:sp%20ace%2Fx"], listed
        spaced = json.loads((await c.s.read_resource(listed[2])).contents[0].text)
        assert spaced["message"]["order_id"] == "sp"

    run(srv, engine, ["--prefix", "team:", "--prefix", "shared:", "--read-only",
                      "--max-reply-bytes", "4096"], body)


def test_command_line_refusals() -> None:
    """Bad options are usage errors (status 2); an unreachable server is one line, status 1."""
    def mcp_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ctxlink", "mcp", *args], input="",
                              capture_output=True, text=True, timeout=60, env=ENV)

    script = ("import contextlib, io, sys\n"
              "from ctxlink.cli import main\n"
              "for args in (['--prefix', ''], ['--max-reply-bytes', '10'],\n"
              "             ['--max-reply-bytes', 'x']):\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err):\n"
              "        code = main(['mcp', *args, '-p', '1'])\n"
              "    print(code, 'Usage: ' in err.getvalue())\n")
    script += ("for m in [m for m in sys.modules if m.split('.')[0] == 'mcp'\n"
               "          or m.startswith('ctxlink.mcp')]:\n"
               "    del sys.modules[m]\n"
               "sys.modules['mcp'] = None  # as if the extra were not installed\n"
               "err = io.StringIO()\n"
               "with contextlib.redirect_stderr(err):\n"
               "    code = main(['mcp', '-p', '1'])\n"
               "text = err.getvalue()\n"
               "print(code, text.startswith('ctxlink: ') and text.count(chr(10)) == 1,\n"
               "      \"needs the mcp package: pip install 'ctxlink[mcp]'\" in text)\n")
    usage = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60, env=ENV)
    lines = usage.stdout.split("\n")
    assert lines[:3] == ["2 True"] * 3, (usage.stdout, usage.stderr)
    assert lines[3] == "1 True True", (usage.stdout, usage.stderr)  # one line naming the fix
    done = mcp_cmd("-p", "1")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxlink: ConnectionError"), done.stderr
    assert "127.0.0.1:1" in lines[0]


def test_on_a_redis_cluster() -> None:
    """``-c``: the asyncio cluster client, contexts on every primary (writes, patches, waits,
    history, the resource list); the module engine."""
    from redis.cluster import RedisCluster

    from ctxlink.embedded import EmbeddedCluster, find_module

    with EmbeddedCluster(3, module=find_module()) as cluster:
        nodes = cluster.nodes
        rc = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        store = ctxlink.connect(rc)
        store.register_schema("order", Order, history=5)
        keys = [f"order:{i}" for i in range(12)]
        assert len({rc.get_node_from_key(k).name for k in keys}) == 3

        async def body(c: Session) -> None:
            for i, key in enumerate(keys):
                w = await c.call("write_context", key=key, expected_version=0,
                                 message={"order_id": f"o-{i}"}, schema="order")
                assert w["version"] == 1, w
            for key in keys:
                p = await c.call("update_fields", key=key, base_version=1,
                                 fields={"discount": 3})
                assert p["version"] == 2, p
                h = await c.call("context_history", key=key)
                assert [x["kind"] for x in h["changes"]] == ["create", "patch"]
            far = next(k for k in keys if rc.get_node_from_key(k).port != nodes[0].port)
            woke = await c.call("wait_for_change", key=far, after_version=1, timeout_s=5)
            assert woke["changed"] and woke["version"] == 2
            listed = {r.uri for r in (await c.s.list_resources()).resources}
            assert listed == {f"ctxlink://{k}" for k in keys}
            assert store.get(far).decode(Order).discount == 3

        run_on(["-c", "-p", str(nodes[0].port)], body)
        rc.close()
