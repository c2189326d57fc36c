"""Three-way parity: CTX.CAS on the module, the Lua engine (cas.lua through the SDK) and the local
cffi check (ctxlink._ctxcore, the module's own validation core) give every payload of a seeded
corpus the same accept/reject decision and the same error (code and full text), under identical
limits.

Also: the SDK's opt-in ``local_check`` raises the server's exception without sending, and the
SDK keeps working (server-side validation only) when the extension is absent.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "sdk"))

import ctxlink  # noqa: E402
from ctxlink import _local  # noqa: E402
from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402
from wirecorpus import corpus, ld, vint  # noqa: E402

MAX_PAYLOAD = 2048
MAX_DEPTH = 8
SEED = 20261125
ORDER = "ctxlink.example.Order"
TREE = "ctxlink.test.lua.Tree"
UNKNOWN_MODES = ("reject", "allow")

def _descriptor_set(include: Path, name: str, out: Path) -> bytes:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", "--include_imports",
                    f"--descriptor_set_out={out}", name], check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def fds(tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    d = tmp_path_factory.mktemp("parityprotos")
    return {
        "order": (ORDER, _descriptor_set(ROOT / "proto", "order.proto", d / "order.pb")),
        "tree": (TREE, _descriptor_set(ROOT / "tests" / "lua", "tree.proto", d / "tree.pb")),
    }


@pytest.fixture(scope="module")
def module_servers(fds):
    """One module server per unknown-fields mode, both with the corpus limits."""
    limits = ["max-payload-bytes", str(MAX_PAYLOAD), "max-depth", str(MAX_DEPTH)]
    with EmbeddedRedis(module=find_module(), module_args=limits) as rej, \
            EmbeddedRedis(module=find_module(),
                          module_args=limits + ["unknown-fields", "allow"]) as allow:
        servers = {"reject": rej, "allow": allow}
        for server in servers.values():
            r = server.client()
            for name, (mtype, data) in fds.items():
                assert r.execute_command("CTX.SCHEMA.SET", name, mtype, data) == 1
        yield servers


@pytest.fixture(scope="module")
def stock(fds):
    with EmbeddedRedis() as server:
        store = ctxlink.connect(server.client(), engine="lua")
        for name, (mtype, data) in fds.items():
            assert store.register_schema(name, data, message_type=mtype) == 1
        yield server


def lua_store(stock: EmbeddedRedis, unknown: str) -> Any:
    return ctxlink.connect(stock.client(), engine="lua", max_payload_bytes=MAX_PAYLOAD,
                           max_depth=MAX_DEPTH, unknown_fields=unknown)


def module_outcome(r: redis.Redis, key: str, schema: str, payload: bytes) -> Optional[str]:
    """None when written, else the full error reply (code and message)."""
    try:
        assert r.execute_command("CTX.CAS", key, 0, payload, "SCHEMA", schema) == 1
        return None
    except redis.ResponseError as exc:
        return str(exc)


def lua_outcome(store: Any, key: str, schema: str, payload: bytes) -> Optional[str]:
    try:
        result = store.cas(key, 0, payload, schema=schema)
    except ctxlink.ServerError as exc:
        return str(exc)
    assert result.ok and result.version == 1
    return None


LUA_EXACT = 2**53
_INEXACT = "CTXVERSION payload version is out of the exact range, expected "


def lua_limit(module: Optional[str], lua: Optional[str]) -> bool:
    """The documented Lua-only limit (docs/PROTOCOL.md, "What the Lua engine guarantees"): a
    payload version beyond 2^53 is not exact in Lua, so its CTXVERSION text cannot quote it."""
    prefix = "CTXVERSION payload version is "
    if not (module and lua and module.startswith(prefix) and lua.startswith(_INEXACT)):
        return False
    number, expected = module[len(prefix):].split(", expected ")
    return abs(int(number)) >= LUA_EXACT and lua == _INEXACT + expected


def local_outcome(handle: Any, payload: bytes, unknown: str) -> Optional[str]:
    code, message = _local.check_cas(handle, payload, 0, max_payload_bytes=MAX_PAYLOAD,
                                     max_depth=MAX_DEPTH, unknown_fields=unknown)
    return None if code is None else f"{code} {message}"


@pytest.mark.parametrize("unknown", UNKNOWN_MODES)
def test_corpus_gets_the_same_decision_and_code_from_module_lua_and_local_check(
        module_servers, stock, fds, unknown):
    mod = module_servers[unknown].client()
    lua = lua_store(stock, unknown)
    handles = {name: _local.compile_schema(data, mtype, "version")
               for name, (mtype, data) in fds.items()}
    items = corpus(SEED, MAX_PAYLOAD, MAX_DEPTH)
    assert len(items) >= 500

    agree = collections.Counter()
    outcomes = collections.Counter()
    diverge = []
    for i, (category, schema, payload) in enumerate(items):
        key = f"parity:{unknown}:{i}"
        m = module_outcome(mod, key, schema, payload)
        lu = lua_outcome(lua, key, schema, payload)
        lo = local_outcome(handles[schema], payload, unknown)
        outcomes[m.split(" ", 1)[0] if m else "ok"] += 1
        same_lua = m == lu or lua_limit(m, lu)
        agree["module=lua"] += same_lua
        agree["module=local"] += m == lo
        agree["lua=local"] += lu == lo
        if not (same_lua and m == lo):
            diverge.append((i, category, schema, payload.hex()[:120], m, lu, lo))
    print(f"\nparity[unknown-fields {unknown}]: {len(items)} payloads; "
          f"agreements {dict(agree)}; module outcomes {dict(outcomes)}; "
          f"categories {dict(collections.Counter(c for c, _, _ in items))}")
    assert not diverge, "\n".join(map(str, diverge[:25]))
    # the corpus exercises every verdict
    assert {"ok", "CTXINVALID", "CTXTOOBIG", "CTXVERSION"} <= set(outcomes)


def test_local_messages_are_the_module_messages(module_servers, fds):
    mod = module_servers["reject"].client()
    mtype, data = fds["order"]
    handle = _local.compile_schema(data, mtype, "version")
    for i, payload in enumerate([vint(2, 1) + ld(8, b"\xff"), vint(2, 5), ld(99, b"x"),
                                 vint(2, 1) + ld(8, b"z" * MAX_PAYLOAD)]):
        with pytest.raises(redis.ResponseError) as info:
            mod.execute_command("CTX.CAS", f"msg:{i}", 0, payload, "SCHEMA", "order")
        code, message = _local.check_cas(handle, payload, 0, max_payload_bytes=MAX_PAYLOAD,
                                         max_depth=MAX_DEPTH, unknown_fields="reject")
        assert f"{code} {message}" == str(info.value)


def test_compile_schema_refuses_what_the_module_refuses(fds):
    mtype, data = fds["order"]
    with pytest.raises(ctxlink.SchemaError, match="^CTXSCHEMA "):
        _local.compile_schema(data, "no.Such", "version")
    with pytest.raises(ctxlink.SchemaError, match="^CTXSCHEMA "):
        _local.compile_schema(data, mtype, "order_id")
    with pytest.raises(ctxlink.SchemaError, match="^CTXSCHEMA "):
        _local.compile_schema(b"\xff\xff", mtype, "version")
    assert _local.compile_schema(data, mtype, "version") is _local.compile_schema(
        data, mtype, "version")


@pytest.mark.parametrize("engine", ["module", "lua"])
def recording_client(server: EmbeddedRedis, sent: list) -> redis.Redis:
    """A client whose connections record every command they put on the wire: the SDK sends its
    writes on a pooled connection of its own, not through ``execute_command``."""

    class Recording(redis.Connection):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            sent.append(args)
            super().send_command(*args, **kwargs)

    return redis.Redis(connection_pool=redis.ConnectionPool(
        host="127.0.0.1", port=server.port, connection_class=Recording))


def test_local_check_raises_the_server_exception_without_sending(module_servers, stock, engine):
    sent: list[tuple] = []
    if engine == "module":
        client = recording_client(module_servers["reject"], sent)
        store = ctxlink.connect(client, local_check=True)  # limits read from INFO ctx
        assert store._st.local is not None
    else:
        client = recording_client(stock, sent)
        store = ctxlink.connect(client, engine="lua", local_check=True,
                                max_payload_bytes=MAX_PAYLOAD, max_depth=MAX_DEPTH)
    cases = [
        (vint(2, 1) + ld(8, b"\xc3("), ctxlink.ValidationError),
        (vint(2, 1) + ld(77, b"x"), ctxlink.ValidationError),
        (vint(2, 1) + ld(8, b"z" * MAX_PAYLOAD), ctxlink.PayloadTooLarge),
        (vint(2, 3), ctxlink.VersionError),
    ]
    del sent[:]
    for i, (payload, exc) in enumerate(cases):
        with pytest.raises(exc):
            store.cas(f"local:{engine}:{i}", 0, payload, schema="order")
    writes = [a for a in sent if any(arg == payload for arg in a for payload, _ in cases)]
    assert not writes, "a locally rejected payload reached the server"
    assert sent, "the schema is fetched from the server"
    for i in range(len(cases)):
        assert client.exists(f"local:{engine}:{i}") == 0
    # a valid payload is still written by the server, and the recording sees it go out
    ok = vint(2, 1) + ld(1, b"o-1")
    assert store.cas(f"local:{engine}:ok", 0, ok, schema="order").ok
    assert any(ok in a for a in sent)
