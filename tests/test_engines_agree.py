"""The two engines side by side (issue: "identical replies, identical stored hashes for the same
sequence of calls"): one sequence of calls on a module server and on a stock server running the
Lua engine gives the same replies (errors: the same code) and leaves the same contexts (except
``updated_ms``) and the same registry entries (type, fds, revision, vfield, digest)."""

from __future__ import annotations

import redis

from backends import make_backend, start_engine_server
from servers import error_code
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
    ]


def normalized(reply):
    """A reply with the server clock (updated_ms of a context state) blanked."""
    if isinstance(reply, list) and len(reply) == 5 and isinstance(reply[0], int) \
            and isinstance(reply[3], int):
        return [reply[0], reply[1], reply[2], "<ms>", reply[4]]
    return reply


def run(backend, label, method, args, kwargs):
    try:
        return ("ok", normalized(getattr(backend, method)(*args, **kwargs)))
    except redis.ResponseError as exc:
        return ("error", error_code(exc))


def stored(r: redis.Redis) -> dict:
    out = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if key == b"__ctx:schemas":
            out[key] = (kind, sorted(r.smembers(key)))
        elif key.startswith(b"__ctx:schema:"):
            out[key] = (kind, dict(zip(REGISTRY_FIELDS, r.hmget(key, *REGISTRY_FIELDS))))
        else:
            fields = r.hgetall(key)
            assert fields.pop(b"updated_ms").isdigit()
            out[key] = (kind, fields)
    return out


def test_same_calls_give_same_replies_and_same_stored_state(module_servers, module_so, pb):
    backends = {engine: make_backend(engine, start_engine_server(module_servers, engine))
                for engine in ("module", "lua")}
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
