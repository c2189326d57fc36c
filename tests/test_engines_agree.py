"""The two engines side by side (issue: "identical replies, identical stored values for the same
sequence of calls"): one sequence of calls on a module server and on a stock server running the
Lua engine gives the same replies (errors: the same full text, except where the Lua engine's
limits differ) and leaves the same contexts (byte for byte except ``updated_ms``) and the same
registry entries (type, fds, revision, vfield, digest). Protocol v2 included: write ids,
replays, CTX.PATCH, v1 hashes upgraded by the first write."""

from __future__ import annotations

import redis

from backends import make_backend, start_engine_server
from ctxvalue import decode
from servers import error_code, error_text
from wire import f_len, f_str, f_varint

ORDER = "ctxlink.example.Order"
REGISTRY_FIELDS = (b"type", b"fds", b"revision", b"vfield", b"digest")


def calls(pb):
    """(label, method, args, kwargs): registrations, creates, updates, conflicts, every error."""
    order, doc = pb.order, pb.cls("versions", "ctxlink.test.v.Doc")
    bad_utf8 = f_varint(2, 2) + f_len(1, b"\xff")
    return [
        ("set order", "schema_set", ("order", ORDER, pb.fds("order")), {}),
        ("set order again", "schema_set", ("order", ORDER, pb.fds("order")), {}),
        ("set doc", "schema_set", ("doc", "ctxlink.test.v.Doc", pb.fds("versions")),
         {"versionfield": "rev"}),
        ("set node", "schema_set", ("node", "ctxlink.test.Node", pb.fds("node")), {}),
        ("set strict", "schema_set", ("strict", "ctxlink.test.p2.Strict", pb.fds("strict2")), {}),
        ("set incompatible", "schema_set", ("order", ORDER, pb.fds("order_v2_incompat")), {}),
        ("set bad fds", "schema_set", ("bad", ORDER, b"\xff\xff"), {}),
        ("set bad name", "schema_set", ("a b", ORDER, pb.fds("order")), {}),
        ("set no type", "schema_set", ("x", "ctxlink.example.Nope", pb.fds("order")), {}),
        ("create o1", "cas", ("o:1", 0, order(1, order_id="o-1"), "order", "router"), {}),
        ("create o2", "cas", ("o:2", 0, order(1, order_id="o-2", items=[("a", 2)]), "order"), {}),
        ("update o1", "cas", ("o:1", 1, order(2, order_id="o-1", base_price=10)), {}),
        ("update o1 named", "cas", ("o:1", 2, order(3, order_id="o-1"), "order", "pricing"), {}),
        ("conflict stale", "cas", ("o:1", 1, order(2)), {}),
        ("conflict create", "cas", ("o:1", 0, order(1), "order"), {}),
        ("conflict missing", "cas", ("o:404", 4, order(5)), {}),
        ("invalid utf8", "cas", ("o:1", 3, bad_utf8), {}),
        ("bad version", "cas", ("o:1", 3, order(9)), {}),
        ("no schema", "cas", ("o:3", 0, order(1)), {}),
        ("unknown schema", "cas", ("o:3", 0, order(1), "nosuch"), {}),
        ("schema mismatch", "cas", ("o:1", 3, order(4), "doc"), {}),
        ("unknown field", "cas", ("o:3", 0, order(1) + f_varint(99, 1), "order"), {}),
        ("doc create", "cas", ("d:1", 0, doc(id="d", rev=1).SerializeToString(), "doc"), {}),
        ("doc update", "cas", ("d:1", 1, doc(id="d", rev=2, body="b").SerializeToString()), {}),
        ("node create", "cas", ("n:1", 0, f_varint(1, 1) + f_str(3, "leaf"), "node"), {}),
        ("strict missing", "cas", ("s:1", 0, f_varint(1, 1), "strict"), {}),
        ("strict create", "cas", ("s:1", 0, f_varint(1, 1) + f_str(2, "id"), "strict", "w"), {}),
        ("compatible rev", "schema_set", ("order", ORDER, pb.fds("order_v2_compat")), {}),
        ("update after rev", "cas", ("o:2", 1, order(2, order_id="o-2")), {}),
        ("forced rev", "schema_set", ("node", "ctxlink.test.Node", pb.fds("order")),
         {"force": True}),
        ("del conflict", "delete", ("o:2", 1), {}),
        ("del missing", "delete", ("o:404", 1), {}),
        ("del o2", "delete", ("o:2", 2), {}),
        ("get o1", "get", ("o:1",), {}),
        ("get missing", "get", ("o:2",), {}),
        ("schema get", "schema_get", ("doc",), {}),
        ("schema list", "schema_list", (), {}),
        ("schema del strict", "schema_del", ("strict",), {}),
        ("schema del again", "schema_del", ("strict",), {}),
        ("write without schema", "cas", ("s:1", 1, f_varint(1, 2) + f_str(2, "id")), {}),
        ("get after del", "get", ("s:1",), {}),
        # protocol v2 as raw commands (LuaBackend.command parses them as the module does):
        # write ids, replays, patches, a v1 hash upgraded
        ("id create", "command", ("CTX.CAS", "w:1", 0, order(1, order_id="w"), "SCHEMA", "order",
                                  "ID", "a"), {}),
        ("id replay", "command", ("CTX.CAS", "w:1", 0, order(1, order_id="w"), "ID", "a"), {}),
        ("id conflict", "command", ("CTX.CAS", "w:1", 0, order(1), "id", "b"), {}),
        ("id missing", "command", ("CTX.CAS", "w:404", 3, order(4), "ID", "b"), {}),
        ("id too long", "command", ("CTX.CAS", "w:1", 1, order(2), "ID", "x" * 65), {}),
        ("id empty", "command", ("CTX.CAS", "w:1", 1, order(2), "ID", ""), {}),
        ("id twice", "command", ("CTX.CAS", "w:1", 1, order(2), "ID", "a", "ID", "b"), {}),
        ("by too long", "command", ("CTX.CAS", "w:1", 1, order(2), "BY", "b" * 65536), {}),
        ("patch", "command", ("CTX.PATCH", "w:1", 1, f_varint(4, 10), "FIELDS", 1, 4,
                              "READS", 1, 8, "ID", "p1", "BY", "pricing"), {}),
        ("patch replay", "command", ("CTX.PATCH", "w:1", 1, f_varint(4, 10), "FIELDS", 1, 4,
                                     "ID", "p1"), {}),
        ("patch disjoint", "command", ("CTX.PATCH", "w:1", 1, f_varint(5, 3), "fields", 1, 5,
                                       "ID", "p2"), {}),
        ("patch conflict", "command", ("CTX.PATCH", "w:1", 1, f_varint(6, 3), "FIELDS", 1, 6,
                                       "READS", 2, 5, 4, "ID", "p3"), {}),
        ("patch conflict no id", "command", ("CTX.PATCH", "w:1", 2, f_varint(6, 3), "FIELDS", 1,
                                             6, "READS", 1, 5), {}),
        ("patch stale base", "command", ("CTX.PATCH", "w:1", 0, f_varint(6, 3), "FIELDS", 1, 6,
                                         "ID", "p4"), {}),
        ("patch future base", "command", ("CTX.PATCH", "w:1", 9, f_varint(6, 3), "FIELDS", 1, 6,
                                          "READS", 0, "ID", "p4"), {}),
        ("patch not a field", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 1, 77), {}),
        ("patch version field", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 1, 4,
                                            "READS", 1, 2), {}),
        ("patch extra field", "command", ("CTX.PATCH", "w:1", 3, f_varint(5, 1), "FIELDS", 1, 4),
         {}),
        ("patch bad wire", "command", ("CTX.PATCH", "w:1", 3, b"\x20", "FIELDS", 1, 4), {}),
        ("patch bad utf8", "command", ("CTX.PATCH", "w:1", 3, f_len(8, b"\xff"), "FIELDS", 1, 8),
         {}),
        ("patch no fields", "command", ("CTX.PATCH", "w:1", 3, b""), {}),
        ("patch fields 0", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 0), {}),
        ("patch count past end", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 2, 4), {}),
        ("patch field 0", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 2, 4, 0), {}),
        ("patch field twice", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 3, 4, 5, 4), {}),
        ("patch reads twice", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 1, 4,
                                          "READS", 2, 1, 1), {}),
        ("patch fields again", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 1, 4,
                                           "FIELDS", 1, 5), {}),
        ("patch bad base", "command", ("CTX.PATCH", "w:1", "x", b"", "FIELDS", 1, 4), {}),
        ("patch arity", "command", ("CTX.PATCH", "w:1", 3), {}),
        ("patch create", "command", ("CTX.PATCH", "w:2", 0, f_str(1, "w2"), "FIELDS", 1, 1,
                                     "SCHEMA", "order"), {}),
        ("patch missing", "command", ("CTX.PATCH", "w:3", 2, f_str(1, "w3"), "FIELDS", 1, 1,
                                      "SCHEMA", "order"), {}),
        ("patch no schema", "command", ("CTX.PATCH", "w:3", 0, f_str(1, "w3"), "FIELDS", 1, 1),
         {}),
        ("patch remove", "command", ("CTX.PATCH", "w:1", 3, b"", "FIELDS", 2, 1, 5, "ID", "p5"),
         {}),
        ("del id conflict", "command", ("CTX.DEL", "w:1", 1, "ID", "d"), {}),
        ("del id bad", "command", ("CTX.DEL", "w:1", 4, "ID", ""), {}),
        ("del syntax", "command", ("CTX.DEL", "w:1", 4, "ID"), {}),
        ("del id", "command", ("CTX.DEL", "w:2", 1, "ID", "d"), {}),
        ("v1 get", "get", ("v1:1",), {}),
        ("v1 conflict id", "command", ("CTX.CAS", "v1:1", 1, order(2), "ID", "v"), {}),
        ("v1 patch", "command", ("CTX.PATCH", "v1:1", 2, f_varint(4, 1), "FIELDS", 1, 4,
                                 "ID", "v"), {}),
        ("v1 after", "get", ("v1:1",), {}),
    ]


def order_v1(pb) -> bytes:
    return pb.order(2, order_id="v1")


def normalized(reply):
    """A reply with the server clock (updated_ms of a context state) blanked."""
    if isinstance(reply, list) and len(reply) in (5, 7) and isinstance(reply[0], int) \
            and isinstance(reply[3], int):
        return [reply[0], reply[1], reply[2], "<ms>", *reply[4:]]
    return reply


def run(backend, label, method, args, kwargs):
    try:
        return ("ok", normalized(getattr(backend, method)(*args, **kwargs)))
    except redis.ResponseError as exc:
        text = error_text(exc)
        code = error_code(exc)
        # full texts where the engines promise them; the code only for the Lua engine's
        # version limit, its field paths by number and the SDK's descriptor checks
        # (docs/PROTOCOL.md, "Lua engine")
        exact = code in ("ERR", "WRONGTYPE", "CTXFIELD") \
            or text == "CTXINVALID payload is not valid protobuf wire format"
        if "must be an integer from 0 to" in text or not exact:
            return ("error", code)
        return ("error", text)


def stored(r: redis.Redis) -> dict:
    out = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if key == b"__ctx:schemas":
            out[key] = (kind, sorted(r.smembers(key)))
        elif key.startswith(b"__ctx:schema:"):
            out[key] = (kind, dict(zip(REGISTRY_FIELDS, r.hmget(key, *REGISTRY_FIELDS))))
        elif kind == b"string":
            raw = r.get(key)
            decode(raw)  # a v2 context value
            out[key] = (kind, raw[:12] + bytes(8) + raw[20:])
        else:
            fields = r.hgetall(key)
            assert fields.pop(b"updated_ms").isdigit()
            out[key] = (kind, fields)
    return out


def test_same_calls_give_same_replies_and_same_stored_state(module_servers, module_so, pb):
    backends = {engine: make_backend(engine, start_engine_server(module_servers, engine))
                for engine in ("module", "lua")}
    for b in backends.values():  # a context written by protocol v1
        b.r.hset("v1:1", mapping={"raw": order_v1(pb), "version": 2, "schema": "order",
                                  "updated_ms": 1700000000000, "updated_by": "old"})
    diverged = []
    for label, method, args, kwargs in calls(pb):
        replies = {e: run(b, label, method, args, kwargs) for e, b in backends.items()}
        if replies["module"] != replies["lua"]:
            diverged.append((label, replies))
    assert not diverged, "\n".join(f"{label}: {replies}" for label, replies in diverged)
    # sanity: the sequence exercised successes and errors on both
    assert stored(backends["module"].r) == stored(backends["lua"].r)
    snapshot = stored(backends["module"].r)
    assert b"o:1" in snapshot and b"__ctx:schema:order" in snapshot
    assert snapshot[b"__ctx:schema:order"][1][b"revision"] == b"2"
    assert snapshot[b"v1:1"][0] == b"string" and snapshot[b"w:1"][0] == b"string"


def test_planted_values_get_the_same_replies(module_servers, module_so, pb):
    """Values written by hand (ctxvalue.encode): a digest spanning a record's digest and mask
    is no replay; a patch past a 32-bit version field's top is CTXVERSION; a window that does
    not reach back to the base is a conflict on every listed field."""
    import struct

    from ctxvalue import WHOLE, encode, field_bit, id_digest
    i32 = pb.cls("versions", "ctxlink.test.v.Int32Version")
    d = id_digest("needle")
    spanning = (b"\0\0\0\0" + d[:4], struct.unpack("<I", d[4:])[0])
    top = 2**31 - 1
    values = {
        "m:span": encode(7, 1, [spanning, (bytes(8), WHOLE)], b"order", b"", pb.order(7)),
        "m:found": encode(7, 1, [spanning, (d, WHOLE)], b"order", b"by", pb.order(7)),
        "m:top": encode(top, 1, [], b"i32", b"", i32(version=top, id="a").SerializeToString()),
        "m:win": encode(9, 1, [(bytes(8), field_bit(4)), (bytes(8), field_bit(35))], b"order",
                        b"", pb.order(9)),
    }
    steps = [
        ("CTX.CAS", "m:span", 6, pb.order(7), "ID", "needle"),
        ("CTX.CAS", "m:found", 6, pb.order(7), "ID", "needle"),
        ("CTX.PATCH", "m:top", top, f_str(2, "b"), "FIELDS", 1, 2),
        ("CTX.PATCH", "m:win", 8, b"", "FIELDS", 1, 5, "READS", 1, 4),
        ("CTX.PATCH", "m:win", 7, b"", "FIELDS", 1, 5),
        ("CTX.PATCH", "m:win", 7, b"", "FIELDS", 1, 8),
        ("CTX.PATCH", "m:win", 6, b"", "FIELDS", 1, 8),
    ]
    replies = {}
    for engine in ("module", "lua"):
        b = make_backend(engine, start_engine_server(module_servers, engine))
        b.schema_set("order", ORDER, pb.fds("order"))
        b.schema_set("i32", "ctxlink.test.v.Int32Version", pb.fds("versions"))
        for key, raw in values.items():
            b.r.set(key, raw)
        replies[engine] = [run(b, "", "command", s, {}) for s in steps]
        replies[engine].append(sorted((k, b.r.get(k)[:12] + b.r.get(k)[20:]) for k in values))
    assert replies["module"] == replies["lua"]
    assert replies["lua"][1] == ("ok", [b"replayed", 6])
    assert replies["lua"][2][1].startswith("CTXVERSION")
