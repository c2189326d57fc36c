"""Everything the sync and asyncio front ends share: the engine state, argument building, reply
parsing and the logic of every operation, written as sans-I/O generators.

An operation is a generator that *yields instructions* (:class:`Cmd`, :class:`LoadScript`,
:class:`Sleep`) and receives their results through ``send`` (or an exception through ``throw``).
It returns the operation's result with ``StopIteration.value``. The front ends
(:mod:`ctxlink._sync`, :mod:`ctxlink.aio`) only run the loop: the sync one calls the client, the
asyncio one awaits it. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Optional, TypeVar, Union

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from redis.exceptions import NoScriptError

from ctxlink._exceptions import (
    ConflictError,
    CtxError,
    EngineError,
    NotFoundError,
    SchemaError,
    VersionError,
    error_from_reply,
)
from ctxlink._types import CasResult, Snapshot, Updated, new_cas_result, new_snapshot

__all__ = [
    "Cmd",
    "LoadScript",
    "Sleep",
    "Instr",
    "Op",
    "SchemaInfo",
    "State",
    "Script",
    "map_error",
    "find_lua_dir",
    "load_scripts",
    "op_detect",
    "op_get",
    "op_cas",
    "op_delete",
    "op_update",
    "op_register_schema",
    "op_schemas",
    "op_get_schema",
    "op_drop_schema",
    "build_descriptor_set",
]

MODULE = "module"
LUA = "lua"
ENGINES = (MODULE, LUA)

SCHEMA_PREFIX = "__ctx:schema:"
SCHEMAS_KEY = "__ctx:schemas"
_KEY_MISMATCH = re.compile(r"^CTXSCHEMA schema key mismatch: the context uses '(.*)'$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-:]{1,128}$")
_SCRIPT_NAMES = (
    "get",
    "cas",
    "del",
    "schema_set",
    "schema_plan",
    "schema_get",
    "schema_list",
    "schema_del",
)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# instructions


@dataclass(frozen=True)
class Cmd:
    """Send one command; ``nodes`` ("primaries" / "random") only matters on a Redis Cluster."""

    args: tuple[Any, ...]
    nodes: Optional[str] = None


@dataclass(frozen=True)
class LoadScript:
    """``SCRIPT LOAD`` a source (on every primary of a cluster); the result is its SHA-1."""

    source: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


Instr = Union[Cmd, LoadScript, Sleep]
Op = Generator[Instr, Any, T]


def map_error(exc: BaseException) -> BaseException:
    """A client library error reply -> the ctxlink exception for its code (or ``exc`` itself)."""
    mapped = error_from_reply(str(exc))
    if mapped is None:
        return exc
    mapped.__cause__ = exc
    return mapped


# ---------------------------------------------------------------------------------------------
# Lua scripts


@dataclass(frozen=True)
class Script:
    name: str
    source: bytes
    sha: str

    def without_shebang(self) -> "Script":
        """The script for Redis 6.2, which does not know the ``#!lua flags=...`` line (7.0+):
        the line becomes a comment, so line numbers in error messages stay the same."""
        if not self.source.startswith(b"#!"):
            return self
        first, _, rest = self.source.partition(b"\n")
        source = b"-- " + first[2:] + b"\n" + rest
        return Script(self.name, source, hashlib.sha1(source).hexdigest())


def find_lua_dir() -> Optional[Path]:
    """Where the scripts are: ``ctxlink/lua`` inside an installed package, else ``<repo>/lua``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parents[1] / "lua"):
        if all((candidate / f"{n}.lua").is_file() for n in _SCRIPT_NAMES):
            return candidate
    return None


def load_scripts(directory: Optional[Path] = None) -> dict[str, Script]:
    directory = directory or find_lua_dir()
    if directory is None:
        raise EngineError("the Lua scripts (lua/*.lua) were not found next to the ctxlink package")
    scripts = {}
    for name in _SCRIPT_NAMES:
        source = (directory / f"{name}.lua").read_bytes()
        scripts[name] = Script(name, source, hashlib.sha1(source).hexdigest())
    return scripts


# ---------------------------------------------------------------------------------------------
# state shared by every call of one Store


class _LRU:
    """A small thread-safe LRU map."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)


@dataclass
class State:
    """Engine choice, limits the Lua engine enforces, and the caches of one Store."""

    engine: str
    cluster: bool = False
    max_payload_bytes: int = 1048576
    max_depth: int = 32
    unknown_fields: str = "reject"
    max_schema_bytes: int = 4194304
    scripts: dict[str, Script] = field(default_factory=dict)
    # schema name -> version field name (from register_schema or the registry)
    vfield_by_schema: dict[str, str] = field(default_factory=dict)
    # message full name -> version field name (from register_schema)
    vfield_by_type: dict[str, str] = field(default_factory=dict)
    # context key -> schema name (Lua engine: cas needs the registry key)
    key_schema: _LRU = field(default_factory=lambda: _LRU(4096))
    backoff_base: float = 0.001
    backoff_cap: float = 0.05
    # connect(local_check=True): a ctxlink._local.LocalValidator, None when off or not built
    local: Any = None
    local_limits_read: bool = False

    def remember_schema(self, key: Any, snap: Optional[Snapshot]) -> None:
        if self.engine == LUA:
            if snap is None:
                self.key_schema.pop(key)
            else:
                self.key_schema.put(key, snap.schema)


def registry_key(name: str) -> str:
    return SCHEMA_PREFIX + name


_SLOT_TAGS: list[str] = []


def _slot_tag(slot: int) -> str:
    """The smallest decimal integer whose CRC16 lands in ``slot`` (docs/PROTOCOL.md)."""
    if not _SLOT_TAGS:
        import binascii

        tags: list[Optional[str]] = [None] * 16384
        missing, n = 16384, 0
        while missing:
            t = str(n)
            slot_n = binascii.crc_hqx(t.encode(), 0) & 16383
            if tags[slot_n] is None:
                tags[slot_n] = t
                missing -= 1
            n += 1
        _SLOT_TAGS.extend(t for t in tags if t is not None)
    return _SLOT_TAGS[slot]


def registry_copies(st: "State", name: str) -> list[tuple[str, str]]:
    """(entry, index) of every copy of the registry: one on a standalone server, one per slot on
    a cluster (docs/PROTOCOL.md, "Redis Cluster")."""
    if not st.cluster:
        return [(registry_key(name), SCHEMAS_KEY)]
    tags = (_slot_tag(slot) for slot in range(16384))
    return [(f"__ctx:{{{t}}}:schema:{name}", f"__ctx:{{{t}}}:schemas") for t in tags]


def registry_tag(st: "State", key: Any) -> str:
    """The slot tag of ``key``'s registry copy on a cluster ("" on a standalone server)."""
    if not st.cluster or key is None:
        return ""
    from redis.crc import key_slot

    return _slot_tag(key_slot(_bytes(key)))


def registry_key_for(st: "State", name: str, key: Any) -> str:
    """The registry entry a command on ``key`` reads: on a cluster, the copy in ``key``'s slot."""
    tag = registry_tag(st, key)
    return f"__ctx:{{{tag}}}:schema:{name}" if tag else registry_key(name)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


# bytes -> str for the schema / updated_by fields of replies: a handful of distinct values, so
# decoded once (bounded; cleared when full)
_TEXT_CACHE: dict[bytes, str] = {}
_TEXT_CACHE_MAX = 1024


def _reply_text(value: Any) -> str:
    if type(value) is bytes:
        text = _TEXT_CACHE.get(value)
        if text is None:
            text = value.decode("utf-8", "surrogateescape")
            if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
                _TEXT_CACHE.clear()
            _TEXT_CACHE[value] = text
        return text
    return _text(value)


def parse_state(reply: Any) -> Optional[Snapshot]:
    """``CTX.GET``'s reply (nil or the 5-element array) -> Snapshot / None."""
    if reply is None:
        return None
    version, raw, schema, updated_ms, updated_by = reply
    return new_snapshot(
        (
            version if type(version) is int else int(version),
            raw if type(raw) is bytes else _bytes(raw),
            _reply_text(schema),
            updated_ms if type(updated_ms) is int else int(updated_ms),
            _reply_text(updated_by),
        )
    )


def parse_write(reply: Any) -> CasResult:
    """``CTX.CAS`` / ``CTX.DEL`` reply: an integer on success, else the conflict state (or nil)."""
    if type(reply) is int or isinstance(reply, int):
        return new_cas_result((True, reply, None))
    snap = parse_state(reply)
    return new_cas_result((False, snap[0] if snap is not None else 0, snap))


# ---------------------------------------------------------------------------------------------
# script calls


def _evalsha(st: State, name: str, keys: tuple[Any, ...], args: tuple[Any, ...]) -> Op[Any]:
    script = st.scripts[name]
    cmd = Cmd(("EVALSHA", script.sha, len(keys), *keys, *args))
    try:
        return (yield cmd)
    except NoScriptError:  # the server lost its script cache (restart, SCRIPT FLUSH, failover)
        pass
    try:
        yield LoadScript(script.source)
    except CtxError:
        raise
    except Exception as exc:  # Redis < 7 cannot compile the "#!lua" line: use the 6.2 form
        if script.source == script.without_shebang().source or "compil" not in str(exc):
            raise
        st.scripts = {n: s.without_shebang() for n, s in st.scripts.items()}
        script = st.scripts[name]
        cmd = Cmd(("EVALSHA", script.sha, len(keys), *keys, *args))
        yield LoadScript(script.source)
    return (yield cmd)


def _admin(st: State, args: tuple[Any, ...], write: bool) -> Op[Any]:
    """A keyless schema command; on a cluster it goes to every primary (write) or any node."""
    reply = yield Cmd(args, nodes=("primaries" if write else "random") if st.cluster else None)
    return reply


# ---------------------------------------------------------------------------------------------
# engine detection


def op_detect(cluster: bool) -> Op[bool]:
    """True when the server knows ``CTX.CAS`` (``COMMAND INFO ctx.cas``; any node of a cluster)."""
    reply = yield Cmd(("COMMAND INFO", "ctx.cas"), nodes="random" if cluster else None)
    if isinstance(reply, dict):  # redis-py parses COMMAND replies into {name: info}
        return any(_text(k).lower() == "ctx.cas" for k in reply) or any(
            isinstance(v, dict) and _text(v.get("name", "")).lower() == "ctx.cas"
            for v in reply.values()
        )
    if isinstance(reply, (list, tuple)):
        return any(item is not None and item != [] for item in reply)
    return False


# ---------------------------------------------------------------------------------------------
# data operations


def op_get(st: State, key: Any) -> Op[Optional[Snapshot]]:
    if st.engine == MODULE:
        reply = yield Cmd(("CTX.GET", key))
    else:
        reply = yield from _evalsha(st, "get", (key,), ())
    snap = parse_state(reply)
    st.remember_schema(key, snap)
    return snap


def _vfield(st: State, schema: Optional[str], desc: Descriptor, key: Any = None) -> Op[str]:
    """The version field name for a payload of type ``desc`` stored under ``schema``.

    Cached per schema name; the first use of a name not registered through this Store reads
    the registry's ``vfield`` once. Without a schema name: the type's cached name, else "version".
    """
    if schema is not None:
        cached = st.vfield_by_schema.get(schema)
        if cached is not None:
            return cached
        try:
            value = yield Cmd(("HGET", registry_key_for(st, schema, key), "vfield"))
        except Exception:  # no ACL right on __ctx:* ... fall back to the default
            value = None
        if value:
            name = _text(value)
            st.vfield_by_schema[schema] = name
            st.vfield_by_type[desc.full_name] = name
            return name
    return st.vfield_by_type.get(desc.full_name, "version")


def _encode(
    st: State, payload: Union[bytes, Message], expected: int, schema: Optional[str],
    key: Any = None,
) -> Op[bytes]:
    if isinstance(payload, Message):
        vf = yield from _vfield(st, schema, payload.DESCRIPTOR, key)
        msg = type(payload)()
        msg.CopyFrom(payload)
        setattr(msg, vf, expected + 1)
        return bytes(msg.SerializeToString())
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or a protobuf message, not {type(payload).__name__}")


def _check_version(expected: int) -> int:
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise TypeError("expected_version must be an int")
    return expected


def cas_command(
    key: Any, expected: int, raw: bytes, schema: Optional[str], by: Optional[str]
) -> tuple[Any, ...]:
    """The arguments of ``CTX.CAS`` (one builder for the generic path and both fast paths)."""
    args: tuple[Any, ...] = ("CTX.CAS", key, expected, raw)
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    return args


def _cas_raw(
    st: State,
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
) -> Op[CasResult]:
    if st.engine == MODULE:
        return parse_write((yield Cmd(cas_command(key, expected, raw, schema, by))))

    name = schema if schema is not None else st.key_schema.get(key)
    if name is None:
        stored = yield Cmd(("HGET", key, "schema"))
        name = _text(stored) if stored else ""
    argv = (
        expected,
        raw,
        1 if schema is not None else 0,
        by if by is not None else "",
        st.max_payload_bytes,
        st.max_depth,
        st.unknown_fields,
    )
    tag = registry_tag(st, key)
    planned = relocated = False
    while True:
        try:
            # KEYS = the context key only; the registry entry is read undeclared (lua/cas.lua)
            reply = yield from _evalsha(st, "cas", (key,), (*argv, name, tag))
            break
        except SchemaError as exc:
            text = str(exc)
            if text.startswith("CTXSCHEMA noplan ") and not planned:
                # the entry has no (current) plan: compile it here, store it, retry once
                planned = True
                yield from _install_plan(st, text[len("CTXSCHEMA noplan ") :].strip(), key)
                continue
            match = _KEY_MISMATCH.match(text)
            if match and not relocated and schema is None:
                # our cached schema for the key was stale: use the one the context has
                relocated = True
                name = match.group(1)
                st.key_schema.put(key, name)
                continue
            if match:
                st.key_schema.pop(key)
            raise
    result = parse_write(reply)
    if result.ok:
        if name:
            st.key_schema.put(key, name)
    else:
        st.remember_schema(key, result.current)
    return result


def _install_plan(st: State, name: str, key: Any) -> Op[None]:
    """Lua engine: compile the entry's validation plan and store it next to the entry."""
    from ctxlink._plan import compile_plan

    rk = registry_key_for(st, name, key)
    type_name, fds, vfield, digest = yield Cmd(("HMGET", rk, "type", "fds", "vfield", "digest"))
    if type_name is None or fds is None:
        return
    plan = compile_plan(_bytes(fds), _text(type_name), _text(vfield or b"version"), _text(digest))
    yield from _evalsha(st, "schema_plan", (rk,), (_text(digest), plan))


def op_cas(
    st: State,
    key: Any,
    expected_version: int,
    payload: Union[bytes, Message],
    schema: Optional[str],
    by: Optional[str],
) -> Op[CasResult]:
    expected = _check_version(expected_version)
    # For a message, the version field's name comes from the schema: the one given, else the
    # context's own (known from an earlier reply, or one HGET), so a VERSIONFIELD is honoured.
    vschema = schema
    if (
        vschema is None
        and isinstance(payload, Message)
        and expected > 0
        and payload.DESCRIPTOR.full_name not in st.vfield_by_type
    ):
        vschema = st.key_schema.get(key)
        if vschema is None:
            stored = yield Cmd(("HGET", key, "schema"))
            vschema = _text(stored) if stored else None
            if vschema:
                st.key_schema.put(key, vschema)
    raw = yield from _encode(st, payload, expected, vschema, key)
    if st.local is not None:  # opt-in local check, see "local check" below
        yield from _local_precheck(st, key, expected, raw, schema, not isinstance(payload, Message))
    try:
        result = yield from _cas_raw(st, key, expected, raw, schema, by)
        if st.engine == MODULE:  # what the Lua engine's _cas_raw records, for _encode next time
            if result.ok and schema is not None:
                st.key_schema.put(key, schema)
            elif result.current is not None:
                st.key_schema.put(key, result.current.schema)
        return result
    except VersionError:
        if not isinstance(payload, Message) or vschema is None:
            raise
        if not (yield from _vfield_changed(st, vschema, payload.DESCRIPTOR, key)):
            raise
    raw = yield from _encode(st, payload, expected, vschema, key)
    return (yield from _cas_raw(st, key, expected, raw, schema, by))


def _vfield_changed(st: State, schema: str, desc: Descriptor, key: Any = None) -> Op[bool]:
    """After CTXVERSION: re-reads the schema's version field; True when the cached one was stale
    (the schema was re-registered with another VERSIONFIELD), so the write is worth retrying."""
    old = st.vfield_by_schema.pop(schema, None)
    new = yield from _vfield(st, schema, desc, key)
    return old is not None and new != old


def op_delete(st: State, key: Any, expected_version: int) -> Op[CasResult]:
    expected = _check_version(expected_version)
    if st.engine == MODULE:
        reply = yield Cmd(("CTX.DEL", key, expected))
    else:
        reply = yield from _evalsha(st, "del", (key,), (expected,))
    if isinstance(reply, int):
        st.remember_schema(key, None)
        return CasResult(True, 0, None)
    result = parse_write(reply)
    st.remember_schema(key, result.current)
    return result


def op_update(
    st: State,
    key: Any,
    fn: Callable[[Any], Any],
    message_class: type[Message],
    schema: Optional[str],
    by: Optional[str],
    retries: int,
    default: Optional[Callable[[], Message]],
) -> Op[Updated[Any]]:
    snap = yield from op_get(st, key)
    attempts = 0
    while True:
        if snap is None:
            if default is None:
                raise NotFoundError(f"no context at {key!r} and no default to create one")
            if schema is None:
                raise ValueError("update() needs schema= to create a context from default()")
            msg = message_class()
            msg.CopyFrom(default())
            expected, name = 0, schema
        else:
            msg = snap.decode(message_class)
            expected, name = snap.version, snap.schema
        out = fn(msg)
        if out is not None:
            msg = out
        vf = yield from _vfield(st, name, msg.DESCRIPTOR, key)
        setattr(msg, vf, expected + 1)
        raw = msg.SerializeToString()
        try:
            result = yield from _cas_raw(st, key, expected, raw, schema or name, by)
        except VersionError:
            if not (yield from _vfield_changed(st, name, msg.DESCRIPTOR, key)):
                raise
            vf = yield from _vfield(st, name, msg.DESCRIPTOR, key)
            setattr(msg, vf, expected + 1)
            raw = msg.SerializeToString()
            result = yield from _cas_raw(st, key, expected, raw, schema or name, by)
        attempts += 1
        if result.ok:
            return Updated(result.version, msg, raw, name, attempts)
        if attempts > retries:
            raise ConflictError(
                f"update of {key!r} gave up after {attempts} conflicting attempts", result.current
            )
        snap = result.current
        yield Sleep(backoff_seconds(st, attempts))


def backoff_seconds(st: State, attempts: int) -> float:
    """Jittered exponential backoff after ``attempts`` conflicts, at most ``st.backoff_cap``."""
    ceiling = min(st.backoff_cap, st.backoff_base * 2 ** min(attempts - 1, 30))
    return random.uniform(0, ceiling)


# ---------------------------------------------------------------------------------------------
# local check (connect(local_check=True); ctxlink._local, the optional cffi extension)
#
# Before CTX.CAS / cas.lua, the payload is checked with the module's own validation core against
# the schema's descriptor set (fetched once with get_schema). A payload the core rejects raises
# the exception the server would raise, without sending the write. Everything else (no schema
# name known, schema missing or not compiling, out of memory) is left to the server, which stays
# the authority. Before refusing, the registry entry is read again (one round trip, on rejects
# only), so a schema re-registered by someone else is not judged with a stale copy.


def enable_local_check(st: State) -> bool:
    """Turns the local check on when the extension is built; False (server only) when not."""
    from ctxlink import _local

    if not _local.available():
        return False
    st.local = _local.LocalValidator(
        max_payload_bytes=st.max_payload_bytes,
        max_depth=st.max_depth,
        unknown_fields=st.unknown_fields,
    )
    return True


def _local_read_limits(st: State) -> Op[None]:
    """Module engine: the limits that count are the module's load-time arguments (INFO ctx)."""
    st.local_limits_read = True
    if st.engine != MODULE:
        return
    try:
        info = yield Cmd(("INFO", "ctx"), nodes="random" if st.cluster else None)
    except Exception:
        return
    if not isinstance(info, dict):
        return
    values = {_text(k): v for k, v in info.items()}
    try:
        if "ctx_max_payload_bytes" in values:
            st.local.max_payload_bytes = int(values["ctx_max_payload_bytes"])
        if "ctx_max_depth" in values:
            st.local.max_depth = int(values["ctx_max_depth"])
        if "ctx_unknown_fields" in values:
            st.local.unknown_fields = _text(values["ctx_unknown_fields"])
    except (TypeError, ValueError):
        return


def _local_load(st: State, name: str, key: Any = None) -> Op[Any]:
    """Fetches and compiles schema ``name`` for the local check (a ``LocalSchema`` whose
    ``vfield`` is None when the registry's version field name could not be read); None when the
    schema is unknown or does not compile (the server then answers)."""
    info = yield from op_get_schema(st, name)
    if info is None:
        st.local.forget(name)
        return None
    vfield = st.vfield_by_schema.get(name)
    if vfield is None:
        try:
            value = yield Cmd(("HGET", registry_key_for(st, name, key), "vfield"))
        except Exception:  # no ACL right on __ctx:* ... the version rule is then not checked
            value = None
        vfield = _text(value) if value else None
    try:
        return st.local.set_schema(name, info.descriptor_set, info.message_type, vfield)
    except (SchemaError, MemoryError):
        st.local.forget(name)
        return None


def _local_precheck(
    st: State, key: Any, expected: int, raw: bytes, schema: Optional[str], own_version: bool
) -> Op[None]:
    from ctxlink import _local

    # Only writes that name their schema: a cached key -> schema may be stale (the context was
    # deleted and created again with another schema), and judging by it could refuse a payload
    # the server would accept. Without SCHEMA the server checks, as always.
    name = schema
    if name is None:
        return
    if not st.local_limits_read:
        yield from _local_read_limits(st)
    entry = st.local.get_schema(name)
    if entry is None:
        entry = yield from _local_load(st, name, key)
        if entry is None:
            return
    for attempt in range(2):
        code, message = st.local.check_cas(entry, raw, expected)
        if code == "CTXVERSION" and not (own_version and entry.vfield is not None):
            code = None  # the SDK set the version itself, or we do not know the field's name
        if code not in ("CTXINVALID", "CTXTOOBIG", "CTXVERSION"):
            return
        if attempt == 0:  # confirm against the current registry entry before refusing
            fresh = yield from _local_load(st, name, key)
            if fresh is None:
                return
            if fresh is entry:
                break
            entry = fresh
    _local.raise_for(code, message)


# ---------------------------------------------------------------------------------------------
# schemas


@dataclass(frozen=True)
class SchemaInfo:
    """A registry entry, as ``get_schema`` returns it."""

    name: str
    message_type: str
    descriptor_set: bytes
    revision: int


def build_descriptor_set(desc: Union[Descriptor, FileDescriptor]) -> bytes:
    """A serialized FileDescriptorSet with ``desc``'s file and every transitive import,
    dependencies first."""
    root = desc if isinstance(desc, FileDescriptor) else desc.file
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        ordered.append(f)

    visit(root)
    fds = descriptor_pb2.FileDescriptorSet()
    for f in ordered:
        f.CopyToProto(fds.file.add())
    return bytes(fds.SerializeToString())


def resolve_schema_source(source: Any, message_type: Optional[str]) -> tuple[str, bytes]:
    """(message type, descriptor set) from a message class/instance/descriptor or a set's bytes."""
    desc = getattr(source, "DESCRIPTOR", source)
    if isinstance(desc, Descriptor):
        if message_type is not None and message_type != desc.full_name:
            raise ValueError(f"message_type {message_type!r} != {desc.full_name!r}")
        return desc.full_name, build_descriptor_set(desc)
    if isinstance(source, descriptor_pb2.FileDescriptorSet):
        source = source.SerializeToString()
    if isinstance(source, (bytes, bytearray, memoryview)):
        fds = bytes(source)
        if message_type is None:
            parsed = descriptor_pb2.FileDescriptorSet.FromString(fds)
            names = [
                (f.package + "." if f.package else "") + m.name
                for f in parsed.file
                for m in f.message_type
            ]
            if len(names) != 1:
                raise ValueError("message_type= is required: the set defines several messages")
            message_type = names[0]
        return message_type, fds
    raise TypeError("register_schema needs a message class, a Descriptor or descriptor-set bytes")


_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_WIRE_CLASS = {
    FieldDescriptor.TYPE_INT32: "varint",
    FieldDescriptor.TYPE_INT64: "varint",
    FieldDescriptor.TYPE_UINT32: "varint",
    FieldDescriptor.TYPE_UINT64: "varint",
    FieldDescriptor.TYPE_BOOL: "varint",
    FieldDescriptor.TYPE_ENUM: "varint",
    FieldDescriptor.TYPE_SINT32: "zigzag",
    FieldDescriptor.TYPE_SINT64: "zigzag",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_SFIXED32: "fixed32",
    FieldDescriptor.TYPE_FLOAT: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED64: "fixed64",
    FieldDescriptor.TYPE_DOUBLE: "fixed64",
    FieldDescriptor.TYPE_STRING: "bytes",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_MESSAGE: "message",
    FieldDescriptor.TYPE_GROUP: "group",
}


def _repeated(f: FieldDescriptor) -> bool:
    value = getattr(f, "is_repeated", None)
    return bool(value) if value is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _required(f: FieldDescriptor) -> bool:
    value = getattr(f, "is_required", None)
    return bool(value) if value is not None else f.label == FieldDescriptor.LABEL_REQUIRED


def _schema_error(text: str) -> SchemaError:
    return SchemaError("CTXSCHEMA " + text)


def load_descriptor(fds: bytes, type_name: str, max_bytes: int) -> Descriptor:
    """Checks a descriptor set as CTX.SCHEMA.SET does and returns the message's descriptor."""
    if len(fds) > max_bytes:
        raise _schema_error(f"descriptor set is {len(fds)} bytes, over max-schema-bytes")
    from ctxlink._plan import PlanError, load_pool

    try:
        pool = load_pool(fds)
    except PlanError as exc:
        raise _schema_error(str(exc)) from None
    try:
        return pool.FindMessageTypeByName(type_name)
    except KeyError:
        raise _schema_error(f"message type '{type_name}' is not in the descriptor set") from None


def check_version_field(desc: Descriptor, vfield: str) -> None:
    f = desc.fields_by_name.get(vfield)
    if f is None or _repeated(f) or f.type not in _INT_TYPES:
        raise _schema_error(
            f"message '{desc.full_name}' has no top-level singular integer field '{vfield}'"
        )


def check_compatible(old: Descriptor, new: Descriptor) -> None:
    """Raises SchemaError when ``new`` is not wire-compatible with ``old`` (PROTOCOL rules)."""
    seen: set[tuple[str, str]] = set()
    todo = [(old, new, old.full_name)]
    while todo:
        a, b, path = todo.pop()
        if (a.full_name, b.full_name) in seen:
            continue
        seen.add((a.full_name, b.full_name))
        for fa in a.fields:
            fb = b.fields_by_number.get(fa.number)
            if fb is None:
                if _required(fa):
                    raise _schema_error(
                        f"incompatible: required field {path}.{fa.name} ({fa.number}) removed"
                    )
                continue
            where = f"{path}.{fa.name} ({fa.number})"
            if _WIRE_CLASS[fa.type] != _WIRE_CLASS[fb.type]:
                raise _schema_error(
                    f"incompatible: field {where} changes wire class "
                    f"{_WIRE_CLASS[fa.type]} -> {_WIRE_CLASS[fb.type]}"
                )
            if _repeated(fa) != _repeated(fb):
                raise _schema_error(f"incompatible: field {where} changes cardinality")
            if _required(fa) and not _required(fb):
                raise _schema_error(f"incompatible: required field {where} removed")
            if _required(fb) and not _required(fa):
                raise _schema_error(f"incompatible: new required field {where}")
            if fa.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
                todo.append((fa.message_type, fb.message_type, f"{path}.{fa.name}"))
        for fb in b.fields:
            if _required(fb) and fb.number not in a.fields_by_number:
                raise _schema_error(
                    f"incompatible: new required field {path}.{fb.name} ({fb.number})"
                )


def op_register_schema(
    st: State,
    name: str,
    source: Any,
    force: bool,
    version_field: Optional[str],
    message_type: Optional[str],
) -> Op[int]:
    type_name, fds = resolve_schema_source(source, message_type)
    vfield = version_field or "version"
    if st.engine == MODULE:
        args: tuple[Any, ...] = ("CTX.SCHEMA.SET", name, type_name, fds)
        if force:
            args += ("FORCE",)
        if version_field is not None:
            args += ("VERSIONFIELD", version_field)
        revision = int((yield from _admin(st, args, write=True)))
    else:
        from ctxlink._plan import compile_plan, registry_digest

        if not _NAME_RE.match(name):
            raise _schema_error("invalid schema name")
        desc = load_descriptor(fds, type_name, st.max_schema_bytes)
        check_version_field(desc, vfield)
        copies = registry_copies(st, name)
        prev = yield Cmd(("HMGET", copies[0][0], "type", "fds", "revision", "digest"))
        prev_type, prev_fds, prev_rev, prev_digest = prev
        digest = registry_digest(type_name, vfield, fds)
        same = prev_rev is not None and prev_digest is not None and _text(prev_digest) == digest
        if not same and prev_rev is not None and prev_type is not None and prev_fds is not None:
            if not force:
                try:
                    old = load_descriptor(_bytes(prev_fds), _text(prev_type), 1 << 62)
                except SchemaError:
                    old = None  # a damaged previous entry cannot constrain the new one
                if old is not None:
                    check_compatible(old, desc)
        plan = compile_plan(fds, type_name, vfield, digest)
        seen = int(prev_rev) if prev_rev is not None else 0
        # every copy (one per slot on a cluster); the script writes nothing where the very same
        # definition is intact, and repairs a damaged or missing copy under the same revision
        for entry, index in copies:
            reply = yield from _evalsha(
                st,
                "schema_set",
                (entry, index),
                (name, type_name, fds, vfield, plan, seen, 1 if same else 0),
            )
        revision = int(reply)
    st.vfield_by_schema[name] = vfield
    st.vfield_by_type[type_name] = vfield
    if st.local is not None:  # local check: recompile from the registry on next use
        st.local.forget(name)
    return revision


def op_schemas(st: State) -> Op[list[str]]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.LIST",), write=False)
    else:
        reply = yield from _evalsha(st, "schema_list", (registry_copies(st, "")[0][1],), ())
    return sorted(_text(n) for n in (reply or []))


def op_get_schema(st: State, name: str) -> Op[Optional[SchemaInfo]]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.GET", name), write=False)
    else:
        reply = yield from _evalsha(st, "schema_get", (registry_copies(st, name)[0][0],), ())
    if reply is None:
        return None
    type_name, fds, revision = reply[:3]
    return SchemaInfo(name, _text(type_name), _bytes(fds), int(revision))


def op_drop_schema(st: State, name: str) -> Op[bool]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.DEL", name), write=True)
    else:
        removed = 0
        for entry, index in registry_copies(st, name):
            removed |= int((yield from _evalsha(st, "schema_del", (entry, index), (name,))))
        reply = removed
    st.vfield_by_schema.pop(name, None)
    if st.local is not None:  # local check: forget the dropped schema
        st.local.forget(name)
    return bool(int(reply))


def cluster_targets(client: Any, nodes: str) -> list[Any]:
    """The ClusterNodes of a RedisCluster (sync or asyncio) a keyless command goes to."""
    if nodes == "primaries":
        return list(client.get_primaries())
    return [client.get_random_node()]


def merge_node_replies(results: list[tuple[str, Any]]) -> Any:
    """The reply of a schema command sent to several cluster nodes: every node must have
    answered, and the same. Otherwise an error that says which nodes did what (a schema write
    that reached only some primaries must be repeated: it is idempotent)."""
    failed = [(node, r) for node, r in results if isinstance(r, BaseException)]
    if failed:
        done = [node for node, r in results if not isinstance(r, BaseException)]
        first = failed[0][1]
        if not done:  # failed everywhere: the error as it is
            raise first
        detail = "; ".join(f"{node}: {r}" for node, r in failed)
        text = f"{first} [failed on {detail}; succeeded on {', '.join(done) or 'none'}]"
        if isinstance(first, CtxError):
            raise type(first)(text) from first
        raise EngineError(text) from first
    replies = [r for _, r in results]
    if any(r != replies[0] for r in replies[1:]):
        raise EngineError(
            "cluster primaries answered differently: "
            + "; ".join(f"{node}: {r!r}" for node, r in results)
        )
    return replies[0]


def is_cluster(client: Any) -> bool:
    return hasattr(client, "nodes_manager")


def check_client(client: Any) -> None:
    """Refuses clients that decode replies to str (payloads are bytes)."""
    kwargs: dict[str, Any] = {}
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", {}) or {}
    else:
        nm = getattr(client, "nodes_manager", None)
        kwargs = getattr(nm, "connection_kwargs", {}) or {}
    if kwargs.get("decode_responses"):
        raise ValueError("ctxlink needs a client with decode_responses=False (payloads are bytes)")


def make_state(engine: str, cluster: bool, options: dict[str, Any]) -> State:
    st = State(engine=engine, cluster=cluster, **options)
    if engine == LUA:
        st.scripts = load_scripts()
    return st


def choose_engine(requested: str, has_module: Optional[bool]) -> str:
    if requested == MODULE:
        if has_module is False:
            raise EngineError("engine='module' but the server does not know CTX.CAS")
        return MODULE
    if requested == LUA:
        return LUA
    if requested != "auto":
        raise ValueError(f"engine must be 'auto', 'module' or 'lua', not {requested!r}")
    if has_module:
        return MODULE
    if find_lua_dir() is None:
        raise EngineError("the server has no ctxlink module and the Lua scripts are missing")
    return LUA
