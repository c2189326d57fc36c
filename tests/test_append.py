"""Conflict-free appends (docs/PROTOCOL.md, "Appends"): ``CTX.PATCH ... APPEND`` and
``store.append``, on both engines: concurrent appenders never conflict, lose or double an
element; an append with a patch in one write; reads conflicts; re-sends replayed or refused
(``rebase``), never applied twice; only the new elements validated; max-payload-bytes; history.
"""

from __future__ import annotations

import threading

import pytest
from backends import start_engine_server

import ctxlink
from ctxlink._append import append_command
from ctxlink._protocol import MODULE

ITEMS = 10  # Order.items (repeated LineItem)


def _order(store: ctxlink.Store, pb, key: str = "o:1", **kw) -> None:
    store.register_schema("order", pb.Order)
    assert store.cas(key, 0, pb.Order(order_id="a", **kw), schema="order").ok


def _raw(shared_server, key: str) -> bytes:
    return bytes(shared_server.r.get(key))


def test_append_creates_then_adds_after_the_stored_elements(store, pb):
    store.register_schema("order", pb.Order)
    LI = pb.LineItem
    res = store.append("o:1", "items", [LI(sku="a", quantity=1)], schema="order",
                       message_class=pb.Order)
    assert res.ok and res.version == 1
    res = store.append("o:1", "items", [LI(sku="b"), LI(sku="c")], message_class=pb.Order)
    assert res.ok and res.version == 2
    snap = store.get("o:1")
    msg = snap.message(pb.Order) if hasattr(snap, "message") else pb.Order.FromString(snap.raw)
    assert [i.sku for i in msg.items] == ["a", "b", "c"] and msg.version == 2


def test_concurrent_appenders_never_conflict_lose_or_double_an_element(store, pb, shared_server):
    _order(store, pb)
    threads, per = 8, 200
    errors: list[BaseException] = []

    def run(t: int) -> None:
        s = ctxlink.connect(shared_server.client())
        try:
            for i in range(per):
                res = s.append("o:1", "items", [pb.LineItem(sku=f"{t}-{i}")],
                               message_class=pb.Order, by=f"agent-{t}")
                assert res.ok, res
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    snap = store.get("o:1")
    assert snap is not None and snap.version == 1 + threads * per
    msg = pb.Order.FromString(snap.raw)
    skus = [i.sku for i in msg.items]
    assert len(skus) == threads * per and len(set(skus)) == threads * per
    for t in range(threads):  # each appender's elements in its own order
        mine = [s for s in skus if s.startswith(f"{t}-")]
        assert mine == [f"{t}-{i}" for i in range(per)]


def test_append_and_patch_in_one_atomic_write(store, pb):
    _order(store, pb)
    res = store.append("o:1", "items", [pb.LineItem(sku="x")], patch=pb.Order(discount=7),
                       base_version=1)
    assert res.ok and res.version == 2
    msg = pb.Order.FromString(store.get("o:1").raw)
    assert msg.discount == 7 and [i.sku for i in msg.items] == ["x"] and msg.order_id == "a"
    # the patch conflicts with a write of its field; the append alone would not
    assert store.cas("o:1", 2, pb.Order(order_id="a", discount=9, items=msg.items)).ok
    res = store.append("o:1", "items", [pb.LineItem(sku="y")], patch=pb.Order(discount=8),
                       base_version=2)
    assert not res.ok and res.current is not None and res.current.version == 3


def test_reads_conflict_only_with_writes_of_the_fields_read(store, pb):
    _order(store, pb)
    Order, LI = pb.Order, pb.LineItem
    store.append("o:1", "items", [LI(sku="a")], message_class=Order)  # v2
    # another appender and a write of another field: no conflict for reads=["status"]
    res = store.append("o:1", "items", [LI(sku="b")], message_class=Order, reads=["status"],
                       base_version=1)
    assert res.ok, res
    # a write of the field read: conflict, nothing appended
    snap = store.get("o:1")
    cur = Order.FromString(snap.raw)
    cur.status = 2
    assert store.cas("o:1", snap.version, cur).ok
    res = store.append("o:1", "items", [LI(sku="c")], message_class=Order, reads=["status"],
                       base_version=snap.version)
    assert not res.ok and res.changed == ("status",)  # by name, as update() reports it
    assert [i.sku for i in Order.FromString(store.get("o:1").raw).items] == ["a", "b"]
    # reading the field appended to conflicts with other appenders
    v = store.get("o:1").version
    store.append("o:1", "items", [LI(sku="d")], message_class=Order)
    res = store.append("o:1", "items", [LI(sku="e")], message_class=Order, reads=["items"],
                       base_version=v)
    assert not res.ok


def _send(store, args):
    """A raw ``CTX.PATCH ... APPEND`` on the module; on the Lua engine the same write through
    cas.lua (the SDK's one send of it, no retry)."""
    if store.engine == MODULE:
        return store.client.execute_command(*args)
    from ctxlink._lua import _write_lua
    from ctxlink._sync import _run

    key, base, payload = args[1], int(args[2]), args[3]
    lists: dict[str, tuple[int, ...]] = {"FIELDS": (), "APPEND": (), "READS": ()}
    opts: dict[str, str] = {}
    i = 4
    while i < len(args):
        word = args[i]
        if word in lists:
            n = int(args[i + 1])
            lists[word] = tuple(int(x) for x in args[i + 2:i + 2 + n])
            i += 2 + n
        else:
            opts[word] = args[i + 1]
            i += 2
    return _run(store.client, _write_lua(store._st, key, base, payload, opts.get("SCHEMA"),
                                         opts.get("BY"), opts.get("ID"), lists["FIELDS"],
                                         lists["READS"], None, None, lists["APPEND"]))


def test_an_append_based_on_a_deleted_and_recreated_context_is_refused_unapplied(store, pb):
    """``incarnation=``: an append based on a context that was deleted and created again since
    (the new one at the same version) raises ContextReplacedError and writes nothing; on the
    same incarnation it lands; a missing context at a base >= 1 is a conflict without current;
    a base of 0 sends no INC (the append may create the context)."""
    _order(store, pb)
    first = store.get("o:1")
    li = pb.LineItem(sku="x")
    assert store.append("o:1", "items", [li], base_version=first.version,
                        incarnation=first.incarnation, message_class=pb.Order).version == 2
    store.delete("o:1", 2)
    assert store.cas("o:1", 0, pb.Order(order_id="b"), schema="order").ok
    assert store.cas("o:1", 1, pb.Order(order_id="c")).ok
    before = store.get("o:1")
    with pytest.raises(ctxlink.ContextReplacedError):
        store.append("o:1", "items", [li], base_version=2, incarnation=first.incarnation,
                     message_class=pb.Order)
    assert store.get("o:1").raw == before.raw
    store.delete("o:1", 2)
    gone = store.append("o:1", "items", [li], base_version=2, incarnation=first.incarnation,
                        message_class=pb.Order)
    assert (gone.ok, gone.current) == (False, None) and store.get("o:1") is None
    made = store.append("o:1", "items", [li], base_version=0, incarnation=first.incarnation,
                        schema="order", message_class=pb.Order)
    assert made.ok and store.get("o:1").incarnation not in ("", first.incarnation)
    with pytest.raises(ctxlink.ArgumentError):
        store.append("o:1", "items", [li], incarnation="zz", message_class=pb.Order)


def test_resend_is_replayed_in_the_window_and_refused_beyond_it(store, pb, shared_server):
    _order(store, pb)
    el = pb.Order(items=[{"sku": "z"}]).SerializeToString()
    args = append_command("o:1", 1, el, (), (ITEMS,), (), None, None, "w-1")
    assert _send(store, args) == 2
    assert _send(store, args) == [b"replayed", 2]  # the re-send: not applied twice
    for i in range(16):
        store.append("o:1", "items", [pb.LineItem(sku=str(i))], message_class=pb.Order)
    # the id left the window and base 1 predates it: refused, not applied
    before = _raw(shared_server, "o:1")
    assert _send(store, args) == [b"rebase", 18]
    assert _raw(shared_server, "o:1") == before
    # a fresh id at a base the window covers is applied
    args2 = append_command("o:1", 18, el, (), (ITEMS,), (), None, None, "w-2")
    assert _send(store, args2) == 19


def test_sdk_rebases_a_first_send_and_reports_unknown_after_a_lost_reply(store, pb, monkeypatch):
    _order(store, pb)
    for i in range(20):  # another SDK's appends: this one's remembered base is old
        store.append("o:1", "items", [pb.LineItem(sku=str(i))], message_class=pb.Order)
    store._st.append_base.put("o:1", 1)
    res = store.append("o:1", "items", [pb.LineItem(sku="new")], message_class=pb.Order)
    assert res.ok and res.version == 22  # refused (rebase), then sent again: applied once
    skus = [i.sku for i in pb.Order.FromString(store.get("o:1").raw).items]
    assert skus.count("new") == 1
    # a lost reply whose re-send meets a window that moved on: OutcomeUnknownError
    from ctxlink import _append

    def fake_send(reply_seq):
        calls = iter(reply_seq)

        def settled(st, key, send, wid, deadline, resends, pause=None, sent=False):
            reply, resent = next(calls)
            return reply, resent
            yield  # pragma: no cover

        return settled

    monkeypatch.setattr(_append, "_send_settled", fake_send([([b"rebase", 40], True)]))
    with pytest.raises(ctxlink.OutcomeUnknownError):
        store.append("o:1", "items", [pb.LineItem(sku="lost")], message_class=pb.Order)


def test_only_the_new_elements_are_validated_and_a_bad_one_changes_nothing(
        store, pb, shared_server):
    _order(store, pb)
    store.append("o:1", "items", [pb.LineItem(sku="ok")], message_class=pb.Order)
    before = _raw(shared_server, "o:1")
    bad = b"\x52\x03\x0a\x01\xff"  # items { sku: "\xff" } (not UTF-8)
    args = append_command("o:1", 2, bad, (), (ITEMS,), (), None, None, "w-bad")
    with pytest.raises(Exception, match="CTXINVALID"):
        _send(store, args)
    assert _raw(shared_server, "o:1") == before
    # a payload field that is not in APPEND, a field that is not repeated
    with pytest.raises(Exception, match="CTXFIELD"):
        _send(store, append_command("o:1", 2, b"\x20\x01", (), (ITEMS,), (), None, None, "w-x"))
    with pytest.raises(Exception, match="CTXFIELD"):
        _send(store, append_command("o:1", 2, b"", (), (4,), (), None, None, "w-y"))
    with pytest.raises(Exception, match="CTXFIELD"):
        _send(store, append_command("o:1", 2, b"", (ITEMS,), (ITEMS,), (), None, None, "w-z"))
    assert _raw(shared_server, "o:1") == before


@pytest.mark.parametrize("args, message", [
    (("APPEND",), "syntax error"),
    (("APPEND", "0"), "APPEND needs a count"),
    (("APPEND", "1", "x"), "field numbers must be integers"),
    (("APPEND", "2", "10", "10"), "field 10 is listed twice in APPEND"),
    (("APPEND", "1", "10", "APPEND", "1", "10"), "syntax error"),
])
@pytest.mark.module_only("argument syntax is the module's; the SDK builds cas.lua's ARGV")
def test_bad_append_arguments_are_errors_and_change_nothing(store, pb, shared_server, args,
                                                            message):
    _order(store, pb)
    before = _raw(shared_server, "o:1")
    with pytest.raises(Exception, match=message):
        _send(store, ("CTX.PATCH", "o:1", 1, b"", *args))
    assert _raw(shared_server, "o:1") == before


def test_max_payload_bytes_refuses_the_append_that_would_cross_it(engine, servers, pb):
    server = start_engine_server(servers, engine, {"max-payload-bytes": 2000})
    store = ctxlink.connect(server.client(), **({"max_payload_bytes": 2000}
                                                if engine != MODULE else {}))
    _order(store, pb)
    big = [pb.LineItem(sku="x" * 100) for _ in range(5)]
    for _ in range(3):
        assert store.append("o:1", "items", big, message_class=pb.Order).ok
    before = bytes(server.r.get("o:1"))
    with pytest.raises(ctxlink.CtxError, match="CTXTOOBIG|limit"):
        store.append("o:1", "items", big, message_class=pb.Order)
    assert bytes(server.r.get("o:1")) == before


def test_history_and_feed_entries_of_an_append_are_patches_of_the_field(store, pb):
    store.register_schema("order", pb.Order, history=10, feed=10)
    assert store.cas("o:1", 0, pb.Order(order_id="a"), schema="order").ok
    store.append("o:1", "items", [pb.LineItem(sku="a")], message_class=pb.Order, by="ag")
    store.append("o:1", "items", [pb.LineItem(sku="b")], patch=pb.Order(discount=1),
                 base_version=2)
    ch = store.history("o:1")
    assert [c.kind for c in ch] == ["create", "patch", "patch"]
    assert ch[1].fields == ("items",) and ch[1].updated_by == "ag"
    assert ch[2].fields == ("discount", "items")  # FIELDS, then APPEND
    feed = store.changes("order").changes
    assert [(c.kind, c.fields) for c in feed] == [
        ("create", None), ("patch", ("items",)), ("patch", ("discount", "items"))]


def test_both_engines_store_the_same_bytes_version_field_first(store, pb, shared_server):
    _order(store, pb)
    for sku in ("x", "y"):
        assert store.append("o:1", "items", [pb.LineItem(sku=sku)], message_class=pb.Order).ok
    snap = store.get("o:1")
    item = pb.Order(items=[{"sku": "x"}]).SerializeToString()
    item2 = pb.Order(items=[{"sku": "y"}]).SerializeToString()
    assert snap.raw == b"\x10\x03" + b"\n\x01a" + item + item2


def test_in_place_appends_reach_the_replica_byte_identical(engine, module_servers, pb):
    import servers as srv

    module = engine == MODULE
    primary = module_servers.start(module=module, appendonly=True,
                                   config=[("appendfsync", "always"),
                                           ("aof-use-rdb-preamble", "no")])
    replica = module_servers.replica(primary, module=module)
    tail = srv.AofTail(primary)
    store = ctxlink.connect(primary.client())
    _order(store, pb)
    for i in range(20):  # past the first 16 writes: the header keeps its size, in place
        assert store.append("o:1", "items", [pb.LineItem(sku=str(i))], message_class=pb.Order,
                            by="agent-1").ok
    assert store.append("o:1", "items", [pb.LineItem(sku="t")], message_class=pb.Order,
                        by="agent-1", ttl=60).ok
    names = [c[0].upper() for c in tail.commands()]
    assert b"SETRANGE" in names and b"APPEND" in names
    srv.wait_replicated(primary, replica)
    assert bytes(replica.r.get("o:1")) == bytes(primary.r.get("o:1"))
    assert primary.digest() == replica.digest()
    assert 0 < replica.r.pttl("o:1") <= 60000
    skus = [i.sku for i in pb.Order.FromString(store.get("o:1").raw).items]
    assert skus == [str(i) for i in range(20)] + ["t"]


def test_aio_store_appends_like_the_sync_one(store, pb, shared_server):
    import asyncio

    import ctxlink.aio

    _order(store, pb)

    async def main() -> list[int]:
        s = await ctxlink.aio.connect(shared_server.async_client()) \
            if hasattr(shared_server, "async_client") else None
        if s is None:
            import redis.asyncio

            s = await ctxlink.aio.connect(redis.asyncio.Redis(port=shared_server.port))
        res = await asyncio.gather(*(
            s.append("o:1", "items", [pb.LineItem(sku=f"a{i}")], message_class=pb.Order)
            for i in range(10)))
        return sorted(r.version for r in res)

    assert asyncio.run(main()) == list(range(2, 12))
    skus = {i.sku for i in pb.Order.FromString(store.get("o:1").raw).items}
    assert skus == {f"a{i}" for i in range(10)}


def test_a_waiter_wakes_on_an_append(store, pb, shared_server):
    _order(store, pb)
    got: list = []
    waiter = ctxlink.connect(shared_server.client())
    t = threading.Thread(target=lambda: got.append(waiter.wait("o:1", 1, timeout=10)))
    t.start()
    import time

    time.sleep(0.2)
    assert store.append("o:1", "items", [pb.LineItem(sku="w")], message_class=pb.Order).ok
    t.join(10)
    assert got and got[0] is not None and got[0].version == 2


def test_scalars_packed_runs_and_a_map_append_alike_on_both_engines(store, pb, shared_server):
    K = pb.cls("kitchen", "ctxlink.test.Kitchen")
    store.register_schema("kitchen", K)
    assert store.cas("k:1", 0, K(tags=["a"], packed=[1]), schema="kitchen").ok
    assert store.append("k:1", "tags", ["b", "c"], message_class=K).ok
    assert store.append("k:1", "packed", [2, 3], message_class=K).ok  # a second packed run
    assert store.append("k:1", "dd", [1.5], message_class=K).ok
    with pytest.raises(TypeError):
        store.append("k:1", "tags", [1], message_class=K)
    with pytest.raises(ctxlink.ArgumentError):
        store.append("k:1", "blob", [b"x"], message_class=K)  # not repeated
    with pytest.raises(ctxlink.ArgumentError):
        store.append("k:1", "counts", [], message_class=K)  # a map: the SDK refuses it
    entry = K(counts={"x": 1}).SerializeToString()  # raw: the server appends a map's entries
    assert _send(store, append_command("k:1", 4, entry, (), (2,), (), None, None, "w-m")) == 5
    msg = K.FromString(store.get("k:1").raw)
    assert list(msg.tags) == ["a", "b", "c"] and list(msg.packed) == [1, 2, 3]
    assert list(msg.dd) == [1.5] and dict(msg.counts) == {"x": 1} and msg.version == 5


@pytest.mark.parametrize("extra", ["", " +getrange +strlen +setrange +append"])
def test_lua_agent_on_the_narrow_acl_line_appends_with_or_without_the_in_place_commands(
        engine, store, pb, shared_server, extra):
    if engine == MODULE:
        pytest.skip("the narrow command list is the Lua engine's (PROTOCOL.md, Trust boundary)")
    r = shared_server.r
    _order(store, pb, key="ctx:o1")
    r.execute_command("ACL", "SETUSER", "narrow", "reset", "on", ">pw", "~ctx:*", "%R~__ctx:*",
                      *("+evalsha +script|load +get +set +type +exists +time +hget +hmget +del "
                        "+pexpire" + extra).split())
    try:
        agent = ctxlink.connect(shared_server.client(username="narrow", password="pw"))
        for i in range(20):
            assert agent.append("ctx:o1", "items", [pb.LineItem(sku=str(i))],
                                message_class=pb.Order, by="agent-1").ok
        msg = pb.Order.FromString(store.get("ctx:o1").raw)
        assert [i.sku for i in msg.items] == [str(i) for i in range(20)] and msg.version == 21
    finally:
        r.execute_command("ACL", "DELUSER", "narrow")


def test_a_cas_payload_that_repeats_the_version_field_is_spliced_not_patched_in_place(
        store, pb, shared_server):
    store.register_schema("order", pb.Order)
    # version first and again last (the last occurrence counts): a hand-made CAS payload
    raw = b"\x10\x01" + b"\n\x01a" + b"\x10\x01"
    assert store.cas("o:1", 0, raw, schema="order").ok
    for sku in ("x", "y", "z"):
        assert store.append("o:1", "items", [pb.LineItem(sku=sku)], message_class=pb.Order).ok
    snap = store.get("o:1")
    msg = pb.Order.FromString(snap.raw)
    assert msg.version == snap.version == 4 and snap.raw.count(b"\x10\x04") == 1
    assert [i.sku for i in msg.items] == ["x", "y", "z"]


def test_required_fields_of_new_elements_are_checked_with_the_whole_message(store, pb):
    S = pb.cls("strict2", "ctxlink.test.p2.Strict")
    store.register_schema("strict", S)
    assert store.cas("s:1", 0, S(id="x"), schema="strict").ok
    assert store.append("s:1", "inners", [S(inners=[{"name": "a"}]).inners[0]],
                        message_class=S).ok
    with pytest.raises(ctxlink.CtxError, match="required field is missing"):
        store.append("s:1", "inners", [S(inners=[{"n": 1}]).inners[0]], message_class=S)
    for _ in range(3):  # the root's required fields are checked too: the whole message
        assert store.append("s:1", "nums", [1, 2], message_class=S).ok
    msg = S.FromString(store.get("s:1").raw)
    assert [i.name for i in msg.inners] == ["a"] and list(msg.nums) == [1, 2] * 3
