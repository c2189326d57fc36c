"""The two engines side by side (identical replies, identical stored values for the same
sequence of calls): one sequence of calls on a module server (raw CTX.* commands) and on a stock
server running the Lua engine through the shipped SDK (``ctxlink.connect(client, engine="lua")``,
tests/backends.py) gives the same replies (errors: the same code and the same full text) and
leaves the same contexts (byte for byte except ``updated_ms`` and the write-id digests: the SDK
sends an id with every write) and the same registry entries (type, fds, revision, vfield,
digest). Protocol v2 included: write ids, replays, CTX.PATCH, v1 hashes upgraded by the first
write. Command-line syntax (arity, options) is the module's alone: tests/test_commands.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import redis

import backends
import ctxlink
import test_commands as tc
import test_schema as ts
import test_validation as tv
from backends import make_backend, start_engine_server
from helpers import blanked, conflict_state
from servers import error_text
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
        # protocol v2: write ids, replays, patches, a v1 hash upgraded
        ("id create", "cas", ("w:1", 0, order(1, order_id="w"), "order"), {"write_id": "a"}),
        ("id replay", "cas", ("w:1", 0, order(1, order_id="w")), {"write_id": "a"}),
        ("id conflict", "cas", ("w:1", 0, order(1)), {"write_id": "b"}),
        ("id missing", "cas", ("w:404", 3, order(4)), {"write_id": "b"}),
        ("patch", "patch", ("w:1", 1, f_varint(4, 10), [4]),
         {"reads": [8], "write_id": "p1", "by": "pricing"}),
        ("patch replay", "patch", ("w:1", 1, f_varint(4, 10), [4]), {"write_id": "p1"}),
        ("patch disjoint", "patch", ("w:1", 1, f_varint(5, 3), [5]), {"write_id": "p2"}),
        ("patch conflict", "patch", ("w:1", 1, f_varint(6, 3), [6]),
         {"reads": [5, 4], "write_id": "p3"}),
        ("patch conflict no reads", "patch", ("w:1", 2, f_varint(6, 3), [6]), {"reads": [5]}),
        ("patch stale base", "patch", ("w:1", 0, f_varint(6, 3), [6]), {"write_id": "p4"}),
        ("patch future base", "patch", ("w:1", 9, f_varint(6, 3), [6]),
         {"reads": [], "write_id": "p4"}),
        ("patch not a field", "patch", ("w:1", 3, b"", [77]), {}),
        ("patch version field", "patch", ("w:1", 3, b"", [4]), {"reads": [2]}),
        ("patch extra field", "patch", ("w:1", 3, f_varint(5, 1), [4]), {}),
        ("patch bad wire", "patch", ("w:1", 3, b"\x20", [4]), {}),
        ("patch bad utf8", "patch", ("w:1", 3, f_len(8, b"\xff"), [8]), {}),
        ("patch field 0", "patch", ("w:1", 3, b"", [4, 0]), {}),
        ("patch field twice", "patch", ("w:1", 3, b"", [4, 5, 4]), {}),
        ("patch reads twice", "patch", ("w:1", 3, b"", [4]), {"reads": [1, 1]}),
        ("patch create", "patch", ("w:2", 0, f_str(1, "w2"), [1]), {"schema": "order"}),
        ("patch missing", "patch", ("w:3", 2, f_str(1, "w3"), [1]), {"schema": "order"}),
        ("patch no schema", "patch", ("w:3", 0, f_str(1, "w3"), [1]), {}),
        ("patch remove", "patch", ("w:1", 3, b"", [1, 5]), {"write_id": "p5"}),
        ("del id conflict", "delete", ("w:1", 1), {"write_id": "d"}),
        ("del id", "delete", ("w:2", 1), {"write_id": "d"}),
        ("v1 get", "get", ("v1:1",), {}),
        ("v1 conflict id", "cas", ("v1:1", 1, order(2)), {"write_id": "v"}),
        ("v1 patch", "patch", ("v1:1", 2, f_varint(4, 1), [4]), {"write_id": "v"}),
        ("v1 after", "get", ("v1:1",), {}),
    ]


def order_v1(pb) -> bytes:
    return pb.order(2, order_id="v1")


def normalized(method, reply):
    """A reply with the server clock (updated_ms of a context state) and the incarnation each
    server minted for a create blanked; a CAS or DEL conflict as the state both engines surface
    (:func:`helpers.conflict_state`)."""
    if method in ("cas", "delete") and isinstance(reply, list) and len(reply) >= 6:
        reply = conflict_state(reply)
    if isinstance(reply, list) and len(reply) in (6, 8) and isinstance(reply[0], int) \
            and isinstance(reply[3], int):
        inc = reply[-1]
        assert inc == b"" or len(inc) == 16, reply
        return [reply[0], reply[1], reply[2], "<ms>", *reply[4:-1], "<inc>" if inc else b""]
    return reply


def run(backend, label, method, args, kwargs):
    """("ok", reply) or ("error", full error text): code and text compared on both engines."""
    try:
        return ("ok", normalized(method, getattr(backend, method)(*args, **kwargs)))
    except redis.ResponseError as exc:
        return ("error", error_text(exc))


def stored(r: redis.Redis) -> dict:
    out = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if key == b"__ctx:schemas":
            out[key] = (kind, sorted(r.smembers(key)))
        elif key.startswith(b"__ctx:schema:"):
            out[key] = (kind, dict(zip(REGISTRY_FIELDS, r.hmget(key, *REGISTRY_FIELDS))))
        elif kind == b"string":
            out[key] = (kind, blanked(r.get(key)))
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

    from ctxvalue import WHOLE, encode, encode_v2, field_bit, id_digest
    i32 = pb.cls("versions", "ctxlink.test.v.Int32Version")
    d = id_digest("needle")
    spanning = (b"\0\0\0\0" + d[:4], struct.unpack("<I", d[4:])[0])
    top = 2**31 - 1
    values = {
        # v3: the digest across two records is no replay, a record's is
        "m:span": encode(7, 1, [b"\0\0\0\0" + d[:4], d[4:] + b"\0\0\0\0"], b"order", b"",
                         pb.order(7)),
        "m:found": encode(7, 1, [b"\0\0\0\0" + d[:4], d], b"order", b"by", pb.order(7)),
        # v2: across a record's digest and mask
        "m:span2": encode_v2(7, 1, [spanning, (bytes(8), WHOLE)], b"order", b"", pb.order(7)),
        "m:found2": encode_v2(7, 1, [spanning, (d, WHOLE)], b"order", b"by", pb.order(7)),
        "m:top": encode(top, 1, [], b"i32", b"", i32(version=top, id="a").SerializeToString()),
        # v2: the window's masks decide; v3: the clocks (field 4 at 8, bit 3 (fields 4, 35) 9)
        "m:win": encode_v2(9, 1, [(bytes(8), field_bit(4)), (bytes(8), field_bit(35))],
                           b"order", b"", pb.order(9)),
        "m:clk": encode(9, 1, [bytes(8), bytes(8)], b"order", b"", pb.order(9), floor=7,
                        clocks={4: 1, 3: 2}),
    }
    steps = [
        ("cas", ("m:span", 6, pb.order(7)), {"write_id": "needle"}),
        ("cas", ("m:found", 6, pb.order(7)), {"write_id": "needle"}),
        ("cas", ("m:span2", 6, pb.order(7)), {"write_id": "needle"}),
        ("cas", ("m:found2", 6, pb.order(7)), {"write_id": "needle"}),
        ("patch", ("m:top", top, f_str(2, "b"), [2]), {}),
    ] + [step for key in ("m:win", "m:clk") for step in (
        ("patch", (key, 8, b"", [5]), {"reads": [4]}),
        ("patch", (key, 7, b"", [5]), {}),
        ("patch", (key, 7, b"", [8]), {}),
        ("patch", (key, 6, b"", [8]), {}),
    )]
    replies = {}
    for engine in ("module", "lua"):
        b = make_backend(engine, start_engine_server(module_servers, engine))
        b.schema_set("order", ORDER, pb.fds("order"))
        b.schema_set("i32", "ctxlink.test.v.Int32Version", pb.fds("versions"))
        for key, raw in values.items():
            b.r.set(key, raw)
        replies[engine] = [run(b, "", method, args, kw) for method, args, kw in steps]
        replies[engine].append(sorted((k, blanked(b.r.get(k))) for k in values))
    assert replies["module"] == replies["lua"]
    assert replies["lua"][1] == replies["lua"][3] == ("ok", [b"replayed", 6])
    assert replies["lua"][4][1].startswith("CTXVERSION")


# --------------------------------------------------------------------------- the same verdicts
# The tables of the per-engine suites, run on both engines side by side: the same reply or the
# same full error text (code and message) for every bad payload and every schema change.


@pytest.fixture(scope="module")
def pair(module_servers, module_so):
    """One module server and one stock server (Lua engine through the SDK)."""
    return {engine: start_engine_server(module_servers, engine) for engine in ("module", "lua")}


def fresh(pair) -> dict:
    out = {}
    for engine, server in pair.items():
        server.r.flushall()
        out[engine] = make_backend(engine, server)
    return out


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except redis.ResponseError as exc:
        return ("error", error_text(exc))


def registry(r: redis.Redis) -> dict:
    fields = (*REGISTRY_FIELDS, b"compat")
    return {k: dict(zip(fields, r.hmget(k, *fields))) if r.type(k) == b"hash" else r.get(k)
            for k in sorted(r.keys("__ctx:schema:*"))}


@pytest.mark.parametrize("case", tv.BAD, ids=[c[0] for c in tv.BAD])
def test_an_invalid_payload_gets_the_same_error_text_on_both_engines(pair, pb, case):
    label, schema, build, code, _ = case
    got = {}
    for engine, b in fresh(pair).items():
        pb.register(b, schema)
        assert b.cas("k:old", 0, tv.BASE[schema](1), schema=schema) == 1
        got[engine] = [outcome(b.cas, "k:new", 0, build(1), schema=schema),
                       outcome(b.cas, "k:old", 1, build(2))]
    assert got["lua"] == got["module"]
    assert got["module"][0][1].startswith(code + " "), got["module"]


@pytest.mark.parametrize("compat", [None, "WIRE"])
@pytest.mark.parametrize("proto,type_,label,edits,compatible", ts.COMPAT_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in ts.COMPAT_CASES])
def test_a_schema_change_gets_the_same_verdict_and_text_on_both_engines(
        pair, pb, proto, type_, label, edits, compatible, compat):
    new = ts.edited(pb, proto, *edits)
    got = {}
    for engine, b in fresh(pair).items():
        assert b.schema_set("s", type_, pb.fds(proto), compat=compat) == 1
        got[engine] = [outcome(b.schema_set, "s", type_, new, compat=compat), registry(b.r)]
    assert got["lua"] == got["module"]
    if compat == "WIRE":  # the wire rules alone: the matrix's own verdict
        assert (got["module"][0][0] == "ok") == compatible, got["module"]


STRICT_REQUIRED_TO_OPTIONAL = ts.on_field(ts.STRICT, 2, lambda f: setattr(
    f, "label", ts.FDP.LABEL_OPTIONAL))


def test_a_required_field_made_optional_gets_the_same_verdict_on_both_engines(pair, pb):
    """Once a divergence: the module accepted it and the Lua engine refused it, with another
    message."""
    new = ts.edited(pb, "strict2", STRICT_REQUIRED_TO_OPTIONAL)
    got = {}
    for engine, b in fresh(pair).items():
        assert b.schema_set("s", ts.STRICT, pb.fds("strict2")) == 1
        got[engine] = [outcome(b.schema_set, "s", ts.STRICT, new), registry(b.r),
                       outcome(b.schema_set, "s", ts.STRICT, new, force=True)]
    assert got["lua"] == got["module"]


DAMAGES = {
    # the previous revision's descriptor set no longer parses; its digest still matches it
    "fds-garbage-digest-updated": lambda r: r.hset("__ctx:schema:s", mapping={
        "fds": b"\xff\xff", "digest": ts.registry_digest(ts.ORDER, "version", b"\xff\xff")}),
    # ... or no longer matches it
    "fds-garbage": lambda r: r.hset("__ctx:schema:s", "fds", b"\xff\xff"),
    "type-unknown": lambda r: r.hset("__ctx:schema:s", mapping={
        "type": "ctxlink.example.Nope",
        "digest": ts.registry_digest("ctxlink.example.Nope", "version", r.hget(
            "__ctx:schema:s", "fds"))}),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_change_over_an_entry_that_does_not_parse_is_handled_alike(pair, pb, damage):
    """Once a divergence: an incompatible change registered over a registry entry that no
    longer parses was refused by the module without FORCE and accepted through the Lua
    engine."""
    got = {}
    for engine, b in fresh(pair).items():
        assert b.schema_set("s", ORDER, pb.fds("order")) == 1
        DAMAGES[damage](b.r)
        got[engine] = [outcome(b.schema_set, "s", ORDER, pb.fds("order_v2_incompat")),
                       registry(b.r),
                       outcome(b.schema_set, "s", ORDER, pb.fds("order_v2_incompat"), force=True),
                       registry(b.r)]
    assert got["lua"] == got["module"]
    assert got["module"][0][0] == "error", got["module"]


@pytest.mark.parametrize("kind", list(tc.NON_CONTEXTS))
def test_a_key_that_is_not_a_context_gets_the_same_error_on_both_engines(pair, pb, kind):
    got = {}
    for engine, b in fresh(pair).items():
        pb.register(b, "order")
        tc.NON_CONTEXTS[kind](b.r, "k")
        got[engine] = [outcome(b.get, "k"), outcome(b.cas, "k", 0, pb.order(1), schema="order"),
                       outcome(b.cas, "k", 7, pb.order(8)), outcome(b.delete, "k", 1),
                       outcome(b.patch, "k", 1, f_varint(4, 1), [4])]
    assert got["lua"] == got["module"]


@pytest.mark.parametrize("edit", ts.REGISTRY_EDITS, ids=lambda f: f.__name__[5:])
def test_a_registry_entry_edited_by_hand_gets_the_same_error_on_both_engines(pair, pb, edit):
    """Each engine compiles the edited entry afresh (a new Store: the SDK's plan is made from
    the entry when a Store first writes with the schema, as the module compiles after a reload)."""
    got = {}
    for engine, b in fresh(pair).items():
        pb.register(b, "order", name="s")
        edit(b.r, "s")
        b = b.with_client(b.r)
        got[engine] = [outcome(b.cas, "n", 0, pb.order(1), schema="s"), registry(b.r)]
    assert got["lua"] == got["module"]


def _without_first_file(pb) -> bytes:
    s = pb.fdset("split_invoice")
    del s.file[0]
    return s.SerializeToString()


def _file_twice(pb) -> bytes:
    s = pb.fdset("split_invoice")
    s.file.append(s.file[0])
    return s.SerializeToString()


INVOICE = "ctxlink.test.split.Invoice"
# (label, pb -> (name, message type, descriptor set, schema_set keywords)): every registration
# the per-engine suite refuses (tests/test_schema.py), for a side-by-side of the full texts
BAD_REGISTRATIONS = [
    *[(f"unparsable-{i}", lambda pb, fds=fds: ("bad", ORDER, fds, {}))
      for i, fds in enumerate([b"\xff\xff\xff\xff", b"garbage that is not protobuf",
                               b"\x0a\x05abc", b"\x0a\x02\x08\x01", b""])],
    ("truncated-half", lambda pb: ("bad", ORDER, pb.fds("order")[:len(pb.fds("order")) // 2], {})),
    ("truncated-1", lambda pb: ("bad", ORDER, pb.fds("order")[:-1], {})),
    ("no-imports", lambda pb: ("inv", INVOICE, pb.fds("split_invoice", include_imports=False),
                               {})),
    ("import-dropped", lambda pb: ("inv", INVOICE, _without_first_file(pb), {})),
    ("file-twice", lambda pb: ("inv", INVOICE, _file_twice(pb), {})),
    *[(f"upb-{k}", lambda pb, k=k: ("bad", ORDER, ts.edited(pb, "order", ts.UPB_REFUSES[k]), {}))
      for k in ts.UPB_REFUSES],
    *[(f"type-{t or 'empty'}", lambda pb, t=t: ("order", t, pb.fds("order"), {}))
      for t in ["ctxlink.example.Nope", "Order", "example.Order", "ctxlink.example.OrderStatus",
                "ctxlink.example", ""]],
    *[(f"version-{t}", lambda pb, t=t: ("v", f"ctxlink.test.v.{t}", pb.fds("versions"), {}))
      for t in ["NoVersion", "StringVersion", "BytesVersion", "DoubleVersion", "FloatVersion",
                "BoolVersion", "RepeatedVersion", "MessageVersion", "Doc"]],
    *[(f"versionfield-{f}", lambda pb, f=f: ("doc", "ctxlink.test.v.Doc", pb.fds("versions"),
                                             {"versionfield": f}))
      for f in ["nope", "body", "sub", "revs", "score", "sub.version", "id", "Rev"]],
    *[(f"name-{i}", lambda pb, n=n: (n, ORDER, pb.fds("order"), {}))
      for i, n in enumerate(["", "x" * 129, "a b", "a/b", "a*", "é", "a\x00b", "{tag}",
                             "a\nb"])],
]


@pytest.mark.parametrize("label,make", BAD_REGISTRATIONS, ids=[c[0] for c in BAD_REGISTRATIONS])
def test_a_refused_registration_gets_the_same_error_text_on_both_engines(pair, pb, label, make):
    name, type_, fds, kw = make(pb)
    got = {}
    for engine, b in fresh(pair).items():
        got[engine] = [outcome(b.schema_set, name, type_, fds, **kw), registry(b.r)]
    assert got["lua"] == got["module"]
    assert got["module"][0][0] == "error" and got["module"][0][1].startswith("CTXSCHEMA ")


def test_the_lua_backend_is_the_sdk_not_a_second_implementation(pair):
    """The Lua engine is tested through ``ctxlink.connect(engine="lua")`` and the real
    scripts. tests/backends.py may reach into the SDK only for the write path ``update(reads=)``
    sends its patches with; it has no command line to parse and no raw script arguments."""
    tree = ast.parse(Path(backends.__file__).read_text())
    private = {(node.module, alias.name) for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctxlink._")
               for alias in node.names}
    assert private <= {("ctxlink._sync", "_run"), ("ctxlink._write", "_write_raw"),
                       ("ctxlink._write", "check_write_id"), ("ctxlink._write", "new_write_id")}
    for name in ("command", "get_args", "cas_args", "patch_args", "del_args"):
        assert not hasattr(backends.LuaBackend, name), name
    assert isinstance(make_backend("lua", pair["lua"]).store, ctxlink.Store)
