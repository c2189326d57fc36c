"""Assertions and schema helpers shared by the test files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from servers import REPO_ROOT, error_text

TESTS_DIR = Path(__file__).resolve().parent
PROTO_DIR = TESTS_DIR / "protos"

CODES = ("ERR", "WRONGTYPE", "CTXSCHEMA", "CTXINVALID", "CTXVERSION", "CTXTOOBIG")

# name -> (include dir, file)
PROTO_FILES = {
    "order": (REPO_ROOT / "proto", "order.proto"),
    "strict2": (PROTO_DIR, "strict2.proto"),
    "node": (PROTO_DIR, "node.proto"),
    "split_common": (PROTO_DIR, "split_common.proto"),
    "split_invoice": (PROTO_DIR, "split_invoice.proto"),
    "versions": (PROTO_DIR, "versions.proto"),
    "kitchen": (PROTO_DIR, "kitchen.proto"),
    "order_v2_compat": (PROTO_DIR, "order_v2_compat.proto"),
    "order_v2_incompat": (PROTO_DIR, "order_v2_incompat.proto"),
    "editions": (PROTO_DIR, "editions.proto"),
}

# Schemas the tests register under fixed names. A name always means the same definition (and
# version field), so the module's compiled cache never sees two definitions for one revision of
# one name across tests that share a server.
SCHEMAS = {
    # name: (proto file, message type, VERSIONFIELD)
    "order": ("order", "ctxlink.example.Order", None),
    "strict": ("strict2", "ctxlink.test.p2.Strict", None),
    "node": ("node", "ctxlink.test.Node", None),
    "kitchen": ("kitchen", "ctxlink.test.Kitchen", None),
    "invoice": ("split_invoice", "ctxlink.test.split.Invoice", None),
    "doc": ("versions", "ctxlink.test.v.Doc", "rev"),
    "ed": ("editions", "ctxlink.test.ed.Ed", None),
}


class ProtoLib:
    """Descriptor sets compiled with grpc_tools.protoc and message classes built from them."""

    def __init__(self, outdir: Path):
        self.outdir = Path(outdir)
        self._fds: dict[tuple[str, bool], bytes] = {}
        self._classes: dict[tuple[str, str], type] = {}
        self._lock = threading.Lock()
        jobs = [(name, True) for name in PROTO_FILES] + [("split_invoice", False)]
        threads = [threading.Thread(target=self._compile_job, args=job) for job in jobs]
        self._errors: list[str] = []
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._errors:
            raise RuntimeError("\n".join(self._errors))

    def _compile_job(self, name: str, include_imports: bool) -> None:
        include, filename = PROTO_FILES[name]
        out = self.outdir / f"{name}{'' if include_imports else '-noimports'}.pb"
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}",
               f"--descriptor_set_out={out}"]
        if include_imports:
            cmd.append("--include_imports")
        cmd.append(filename)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=include)
        if proc.returncode != 0:
            with self._lock:
                self._errors.append(f"protoc failed for {filename}: {proc.stderr}")
            return
        with self._lock:
            self._fds[(name, include_imports)] = out.read_bytes()

    def fds(self, name: str, include_imports: bool = True) -> bytes:
        return self._fds[(name, include_imports)]

    def fdset(self, name: str, include_imports: bool = True) -> descriptor_pb2.FileDescriptorSet:
        s = descriptor_pb2.FileDescriptorSet()
        s.ParseFromString(self.fds(name, include_imports))
        return s

    def cls(self, name: str, full_name: str):
        key = (name, full_name)
        if key not in self._classes:
            pool = descriptor_pool.DescriptorPool()
            for f in self.fdset(name).file:
                pool.Add(f)
            self._classes[key] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
        return self._classes[key]

    @staticmethod
    def classes_from_fds(fds: bytes, full_name: str):
        s = descriptor_pb2.FileDescriptorSet()
        s.ParseFromString(fds)
        pool = descriptor_pool.DescriptorPool()
        for f in s.file:
            pool.Add(f)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    # ---- the example schema
    @property
    def Order(self):
        return self.cls("order", "ctxlink.example.Order")

    @property
    def LineItem(self):
        return self.cls("order", "ctxlink.example.LineItem")

    def order(self, version: int, **fields) -> bytes:
        """A serialized ctxlink.example.Order; ``items`` may be a list of (sku, quantity)."""
        items = fields.pop("items", None)
        msg = self.Order(version=version, **fields)
        if items:
            for sku, qty in items:
                msg.items.add(sku=sku, quantity=qty)
        return msg.SerializeToString()

    def register(self, backend, schema: str = "order", name: str | None = None, **kw):
        """Register one of SCHEMAS (under its own name unless ``name`` is given)."""
        proto, full, vfield = SCHEMAS[schema]
        if vfield is not None:
            kw.setdefault("versionfield", vfield)
        return backend.schema_set(name or schema, full, self.fds(proto), **kw)


# --------------------------------------------------------------------------- assertions

#: The full error texts that assert_error / check_error saw in the running test, when it runs on
#: both engines (set by conftest's ``same_error_texts_on_both_engines``, which compares them).
ERROR_LOG: list[str] | None = None
#: The names ``uniq`` made in the running test (compared by position across engines).
UNIQ_LOG: list[str] | None = None


def _logged(text: str) -> str:
    if ERROR_LOG is not None:
        ERROR_LOG.append(text)
    return text


def assert_error(code: str, fn, *args, **kwargs) -> str:
    """Call ``fn`` and assert it fails with an error reply whose code is ``code``.
    Returns the full error text (which must be the same on both engines: see conftest)."""
    with pytest.raises(redis.ResponseError) as excinfo:
        fn(*args, **kwargs)
    text = _logged(error_text(excinfo.value))
    assert text == code or text.startswith(code + " "), (
        f"expected a {code} error reply, got {text!r}"
    )
    return text


def check_error(value, code: str) -> str:
    """``value`` is an exception object (pipeline reply); assert its code."""
    assert isinstance(value, redis.ResponseError), f"expected {code} error, got {value!r}"
    text = _logged(error_text(value))
    assert text == code or text.startswith(code + " "), f"expected {code}, got {text!r}"
    return text


def key_state(r: redis.Redis, key) -> tuple:
    """Type and exact contents of a key ((b'none', None) for a missing key).

    Hashes and sets are compared by their members, byte for byte, not by DUMP:
    a plain read may advance a hash table's incremental rehash, which reorders
    DUMP's output without changing a single byte of content."""
    kind = r.type(key)
    if kind == b"hash":
        return (kind, sorted(r.hgetall(key).items()))
    if kind == b"set":
        return (kind, sorted(r.smembers(key)))
    return (kind, r.dump(key))


def db_state(r: redis.Redis) -> dict:
    return {k: key_state(r, k) for k in sorted(r.keys("*"))}


def dirty(r: redis.Redis) -> int:
    return r.info("persistence")["rdb_changes_since_last_save"]


@contextmanager
def nothing_written(r: redis.Redis):
    """Assert that the block leaves every key byte-identical and the dirty counter unmoved."""
    before, d0 = db_state(r), dirty(r)
    yield
    after, d1 = db_state(r), dirty(r)
    assert after == before, "a rejected / conflicting command changed the dataset"
    assert d1 == d0, f"a rejected / conflicting command counted {d1 - d0} writes (dirty counter)"


def server_time_ms(r: redis.Redis) -> int:
    sec, usec = r.execute_command("TIME")
    return int(sec) * 1000 + int(usec) // 1000


def context_hash(payload: bytes, version: int, schema: str, updated_ms: int, by: str = "") -> dict:
    return {
        b"raw": payload,
        b"version": str(version).encode(),
        b"schema": schema.encode(),
        b"updated_ms": str(updated_ms).encode(),
        b"updated_by": by.encode(),
    }


def registry_digest(type_: str | bytes, vfield: str | bytes, fds: bytes) -> str:
    """``digest`` of a registry entry: sha1 of ``<len(type)>:<type><len(vfield)>:<vfield><fds>``."""
    t = type_.encode() if isinstance(type_, str) else type_
    v = vfield.encode() if isinstance(vfield, str) else vfield
    return hashlib.sha1(b"%d:%s%d:%s" % (len(t), t, len(v), v) + fds).hexdigest()


def registry_entry(type_: str, fds: bytes, revision: int = 1, vfield: str = "version",
                   compat: str = "WIRE_JSON", history: int = 0, hpayload: bool = False,
                   window: int = 16) -> dict:
    """The fields of ``__ctx:schema:<name>`` as the protocol defines them (what a Lua engine or
    redis-cli writes)."""
    return {b"type": type_.encode(), b"fds": fds, b"revision": str(revision).encode(),
            b"vfield": vfield.encode(), b"digest": registry_digest(type_, vfield, fds).encode(),
            b"compat": compat.encode(), b"history": str(history).encode(),
            b"hpayload": b"1" if hpayload else b"0", b"feed": b"0",
            b"window": str(window).encode()}


def write_registry(r: redis.Redis, name: str, type_: str, fds: bytes, revision: int = 1,
                   vfield: str = "version") -> None:
    r.hset(f"__ctx:schema:{name}", mapping=registry_entry(type_, fds, revision, vfield))
    r.sadd("__ctx:schemas", name)


def registry_snapshot(r: redis.Redis) -> dict:
    return {k: key_state(r, k) for k in sorted(r.keys("__ctx:*"))}


# --------------------------------------------------------------------------- engines' replies


def conflict_state(reply):
    """The context state a conflict reply carries: its first five elements (``CTX.GET``'s
    shape), or None. Both engines surface it; the ``oldest_known`` and ``changed`` that the
    module appends for a command with ``ID`` are raw-reply details the SDK keeps to itself (it
    uses ``oldest_known`` to settle re-sent writes: tests/sdk/test_exactly_once.py)."""
    return reply[:5] + reply[-1:] if isinstance(reply, list) else reply  # + the incarnation


def blanked(raw: bytes) -> bytes:
    """A v2 context value with ``updated_ms`` and the window's id digests zeroed (the SDK sends a
    fresh id with every write that names none; the masks stay)."""
    from ctxvalue import blanked as blank  # v3 too: the incarnation blanked as well

    return blank(raw)


def raw_replies(backend) -> bool:
    """True when ``backend`` returns the server's raw replies (the module's CTX.* commands);
    False for the Lua engine, driven through the SDK (tests/backends.py)."""
    return backend.engine == "module"


def batch_cas(backend, r: redis.Redis, calls: list) -> list:
    """Runs ``backend.cas(key, expected, payload, **kw)`` for each ``(key, expected, payload,
    kw)``: on the module as one pipeline of raw commands, through the SDK (Lua engine) one call
    after another. Returns each reply, or its error (as ``pipe.execute(raise_on_error=False)``)."""
    if raw_replies(backend):
        pipe = r.pipeline(transaction=False)
        for key, expected, payload, kw in calls:
            pipe.execute_command(*backend.cas_args(key, expected, payload, **kw))
        return pipe.execute(raise_on_error=False)
    out = []
    for key, expected, payload, kw in calls:
        try:
            out.append(backend.cas(key, expected, payload, **kw))
        except redis.ResponseError as exc:
            out.append(exc)
    return out


def assert_refused_argument(backend, error: str, fn, *args, **kwargs) -> None:
    """An argument refused before anything is written: on the module the command's error reply
    ``error`` (full text); through the SDK (Lua engine) its ``ArgumentError``, raised before
    anything is sent, naming the same limit."""
    if raw_replies(backend):
        with pytest.raises(redis.ResponseError) as excinfo:
            fn(*args, **kwargs)
        assert error_text(excinfo.value) == error
        return
    import ctxlink

    with pytest.raises(ctxlink.ArgumentError):
        fn(*args, **kwargs)


#: module_only reasons shared by the suites
NO_COMMAND_LINE = ("CTX.* command-line syntax (arity, options, numbers in arguments): the Lua "
                   "engine has no command line; the SDK takes typed arguments")
NO_RAW_COMMANDS = ("raw commands queued in a pipeline or MULTI: the Lua engine is driven through "
                   "the SDK, whose script arguments are its own internals")
SDK_SENDS_IDS = "a write without ID: the SDK sends a write id with every write"
