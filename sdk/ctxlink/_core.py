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
import inspect
import os
import random
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Optional, TypeVar, Union

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message
from redis.exceptions import NoScriptError, ResponseError

from ctxlink._exceptions import (
    ArgumentError,
    ConflictError,
    CtxError,
    EngineError,
    FieldError,
    MessageTypeError,
    NotFoundError,
    OutcomeUnknownError,
    SchemaError,
    ValidationError,
    VersionError,
    WrongTypeError,
    error_from_reply,
)
from ctxlink._fields import FieldNameError, field_plan
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, _not_sent
from ctxlink._types import (
    Backoff,
    CasResult,
    Snapshot,
    Updated,
    new_cas_result,
    new_snapshot,
    note_schema_type,
)

__all__ = [
    "Cmd",
    "LoadScript",
    "Sleep",
    "Await",
    "Write",
    "Instr",
    "Op",
    "SchemaInfo",
    "State",
    "Script",
    "map_error",
    "find_lua_dir",
    "load_scripts",
    "op_detect",
    "op_check_protocol",
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
    #: made on the way to a write (see :func:`_reads_not_sent`): a transport error is thrown
    #: into the operation instead of ending it
    settle: bool = False


@dataclass(frozen=True)
class LoadScript:
    """``SCRIPT LOAD`` a source (on every primary of a cluster); the result is its SHA-1."""

    source: bytes
    settle: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Await:
    """Await ``awaitable`` (what ``update``'s function returned) and send back its result. The
    asyncio front end awaits it; the sync one closes it and throws ``TypeError`` into the op."""

    awaitable: Any


@dataclass(frozen=True)
class Write:
    """Send one write on ``key`` exactly once: the front end sends it on a connection it owns,
    without redis-py's retries (:mod:`ctxlink._send`), and throws a transport error (the reply was
    lost: the write may have landed) back into the operation, which re-sends the same attempt."""

    key: Any
    args: tuple[Any, ...]


Instr = Union[Cmd, LoadScript, Sleep, Await, Write]
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
    # schema name -> message type full name (register_schema or the registry's ``type``)
    type_by_schema: dict[str, str] = field(default_factory=dict)
    # context key -> schema name (Lua engine: cas needs the registry key)
    key_schema: _LRU = field(default_factory=lambda: _LRU(4096))
    backoff: Backoff = field(default_factory=Backoff)
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


_REPLAYED = (b"replayed", "replayed")


def parse_write(reply: Any) -> CasResult:
    """A ``CTX.CAS`` / ``CTX.PATCH`` / ``CTX.DEL`` reply as a CasResult (field numbers of
    ``changed`` as decimal text; :func:`parse_outcome` names them)."""
    return parse_outcome(reply).result


@dataclass(frozen=True)
class Outcome:
    """A write's reply: the result, the oldest version the window knows (conflicts of commands
    that carried an id), the merged payload (``CTX.PATCH`` success) and the raw ``changed``."""

    result: CasResult
    oldest: Optional[int] = None
    raw: Optional[bytes] = None
    changed: tuple[int, ...] = ()


def parse_outcome(reply: Any, names: Optional[Callable[[tuple[int, ...]], tuple[str, ...]]] = None
                  ) -> Outcome:
    """Replies (docs/PROTOCOL.md): an integer (done), ``["replayed", version]``, ``[version,
    merged payload]`` (a patch, done), nil (conflict: no context) or the conflict state
    ``[version, raw, schema, updated_ms, updated_by(, oldest_known, changed)]``."""
    if type(reply) is int:
        return Outcome(new_cas_result((True, reply, None, False, ())))
    if reply is None:
        return Outcome(new_cas_result((False, 0, None, False, ())))
    if isinstance(reply, int):
        return Outcome(new_cas_result((True, int(reply), None, False, ())))
    if len(reply) == 2:
        first = reply[0]
        if first in _REPLAYED:
            return Outcome(new_cas_result((True, int(reply[1]), None, True, ())))
        return Outcome(new_cas_result((True, int(first), None, False, ())), raw=_bytes(reply[1]))
    snap = parse_state(reply[:5])
    assert snap is not None
    oldest = int(reply[5]) if len(reply) > 5 else None
    changed = tuple(int(n) for n in reply[6]) if len(reply) > 6 and reply[6] else ()
    named = names(changed) if names is not None else tuple(str(n) for n in changed)
    return Outcome(new_cas_result((False, snap[0], snap, False, named)), oldest, None, changed)


# ---------------------------------------------------------------------------------------------
# script calls


def _evalsha(
    st: State, name: str, keys: tuple[Any, ...], args: tuple[Any, ...], write: bool = False
) -> Op[Any]:
    """Runs a script; ``write``: as a :class:`Write` on ``keys[0]`` (sent once; NOSCRIPT means it
    did not run, so loading the script and sending it again is no re-send)."""
    script = st.scripts[name]

    def instr(sha: str) -> Instr:
        args_ = ("EVALSHA", sha, len(keys), *keys, *args)
        return Write(keys[0], args_) if write else Cmd(args_)

    cmd = instr(script.sha)
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
        cmd = instr(script.sha)
        yield LoadScript(script.source)
    return (yield cmd)


def _admin(st: State, args: tuple[Any, ...], write: bool) -> Op[Any]:
    """A keyless schema command; on a cluster it goes to every primary (write) or any node."""
    reply = yield Cmd(args, nodes=("primaries" if write else "random") if st.cluster else None)
    return reply


# ---------------------------------------------------------------------------------------------
# engine detection


def op_detect(cluster: bool) -> Op[bool]:
    """True when the server has the module; asked of any node of a cluster.

    ``CTX.GET`` without arguments needs no ACL right to tell: a stock server answers "unknown
    command" (checked before anything else), a server with the module "wrong number of
    arguments" (Redis 7: arity is checked before ACL) or NOPERM naming the command (Redis 6.2:
    ACL first). Any other answer falls back to ``COMMAND INFO ctx.cas``.
    """
    nodes = "random" if cluster else None
    try:
        yield Cmd(("CTX.GET",), nodes=nodes)
    except Exception as exc:  # the expected outcome: an error reply
        known = _detect_reply(str(exc))
        if known is not None:
            return known
    return (yield from _detect_command_info(nodes))


#: The protocol this SDK speaks (docs/PROTOCOL.md): it needs a module that speaks it too.
PROTOCOL = 2


def op_check_protocol(cluster: bool) -> Op[None]:
    """Refuses a module older than :data:`PROTOCOL` (EngineError, before anything is written).

    ``CTX.PATCH`` without arguments needs no ACL right to tell: protocol 2 answers "wrong number
    of arguments" (Redis 7: arity before ACL) or NOPERM naming the command (6.2: ACL first); a
    protocol 1 module "unknown command". Anything else is let through: the writes will tell."""
    try:
        yield Cmd(("CTX.PATCH",), nodes="random" if cluster else None)
    except Exception as exc:  # the expected outcome: an error reply
        low = str(exc).lower()
        if "ctx.patch" in low and "unknown command" in low:
            raise EngineError(
                f"the server's ctxlink module speaks protocol 1; this SDK ({PROTOCOL}) needs "
                "protocol 2 (CTX.PATCH, write ids): upgrade the module first, then the SDKs "
                "(docs/PROTOCOL.md, \"Storage format\")"
            ) from None


def _detect_reply(text: str) -> Optional[bool]:
    """The verdict of ``CTX.GET``'s error reply (see :func:`op_detect`), None when unclear."""
    low = text.lower()  # redis-py may have cut the code (ERR, NOPERM) off the text
    if "ctx.get" not in low:
        return None
    if "unknown command" in low:
        return False
    if "wrong number of arguments" in low or "no permissions to run" in low:
        return True
    return None


def _detect_command_info(nodes: Optional[str]) -> Op[bool]:
    reply = yield Cmd(("COMMAND INFO", "ctx.cas"), nodes=nodes)
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
    check_key(key)
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
    raise TypeError(
        f"payload must be the encoded bytes or a protobuf message, not {type(payload).__name__}"
        + (" (encode text first? payloads are protobuf bytes)" if isinstance(payload, str) else "")
    )


#: Largest ``expected_version`` the module accepts (the new version must fit in an int64) and
#: the Lua engine's (Lua numbers are doubles; docs/PROTOCOL.md, "Lua engine").
MAX_EXPECTED_MODULE = (1 << 63) - 2
MAX_EXPECTED_LUA = (1 << 53) - 2


def max_expected(st: Optional[State]) -> int:
    return MAX_EXPECTED_LUA if st is not None and st.engine == LUA else MAX_EXPECTED_MODULE


def _check_version(expected: int, st: Optional[State] = None) -> int:
    """``expected_version`` as sent: an int in ``0 .. max`` (ArgumentError / TypeError before
    anything is sent, instead of the server's bare ``ERR``)."""
    if type(expected) is not int:
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise TypeError(
                f"expected_version must be an int (0 creates), not {type(expected).__name__}"
            )
        expected = int(expected)
    limit = max_expected(st)
    if not 0 <= expected <= limit:
        raise ArgumentError(
            f"expected_version must be 0 (create) or the stored version, in 0..{limit}"
            f"{' on the Lua engine' if limit == MAX_EXPECTED_LUA else ''}; got {expected}"
        )
    return expected


def _schema_type(st: State, name: str, key: Any = None) -> Op[Optional[str]]:
    """The message type (full name) schema ``name`` stores: cached per name, else read once from
    the registry entry's ``type`` field. None when unknown or not readable (no ACL right on
    ``__ctx:*``): the type check is then skipped and the server validates as always."""
    cached = st.type_by_schema.get(name)
    if cached is not None:
        return cached
    try:
        value = yield Cmd(("HGET", registry_key_for(st, name, key), "type"))
    except Exception:  # NOPERM, WRONGTYPE ... no check
        return None
    if not value:
        return None
    type_name = _text(value)
    st.type_by_schema[name] = type_name
    note_schema_type(name, type_name)
    return type_name


def _check_type(st: State, name: Optional[str], desc: Descriptor, key: Any = None) -> Op[None]:
    """Refuses (MessageTypeError) a message whose type is not the one schema ``name`` stores. A
    mismatch is confirmed against a fresh read of the registry before refusing."""
    if not name:
        return
    expected = yield from _schema_type(st, name, key)
    if expected is None or expected == desc.full_name:
        return
    st.type_by_schema.pop(name, None)
    expected = yield from _schema_type(st, name, key)
    if expected is None or expected == desc.full_name:
        return
    raise MessageTypeError(
        f"schema {name!r} stores {expected} messages, not {desc.full_name}: pass the class "
        f"generated for {expected}",
        expected,
        desc.full_name,
    )


def new_write_id() -> str:
    """A fresh write id: 16 random bytes as 32 hex characters."""
    return os.urandom(16).hex()


def check_write_id(write_id: Any) -> Union[str, bytes]:
    """A write id as given (str or bytes of 1 to 64 bytes), else ArgumentError / TypeError."""
    if isinstance(write_id, str):
        size = len(write_id.encode("utf-8", "surrogateescape"))
    elif isinstance(write_id, (bytes, bytearray, memoryview)):
        write_id = bytes(write_id)
        size = len(write_id)
    else:
        raise TypeError(f"write_id must be str or bytes, not {type(write_id).__name__}")
    if not 1 <= size <= 64:
        raise ArgumentError(f"write_id must be 1 to 64 bytes, not {size}")
    return write_id


def check_by(by: Any) -> None:
    """``by`` (the writer id stored as ``updated_by``): None, or str/bytes of at most 65535
    bytes (the server's limit), checked before anything is sent."""
    if by is None:
        return
    if isinstance(by, str):
        size = len(by.encode("utf-8", "surrogateescape"))
    elif isinstance(by, (bytes, bytearray, memoryview)):
        size = len(by)
    else:
        raise TypeError(f"by must be a str (the writer's name), not {type(by).__name__}")
    if size > 65535:
        raise ArgumentError(f"by must be at most 65535 bytes, not {size}")


def check_key(key: Any) -> None:
    """A context key: str or bytes (TypeError before anything is sent)."""
    if not isinstance(key, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"a context key must be str or bytes, not {type(key).__name__}")


def cas_command(
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.CAS`` (one builder for the generic path and both fast paths)."""
    args: tuple[Any, ...] = ("CTX.CAS", key, expected, raw)
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    if write_id is not None:
        args += ("ID", write_id)
    return args


def patch_command(
    key: Any,
    base: int,
    payload: bytes,
    fields: tuple[int, ...],
    reads: tuple[int, ...],
    schema: Optional[str],
    by: Optional[str],
    write_id: Any,
) -> tuple[Any, ...]:
    """The arguments of ``CTX.PATCH``."""
    args: tuple[Any, ...] = ("CTX.PATCH", key, base, payload, "FIELDS", len(fields), *fields)
    if reads:
        args += ("READS", len(reads), *reads)
    if schema is not None:
        args += ("SCHEMA", schema)
    if by is not None:
        args += ("BY", by)
    return args + ("ID", write_id)


def _lua_argv(
    st: State,
    expected: int,
    payload: bytes,
    given: bool,
    by: Optional[str],
    name: str,
    tag: str,
    write_id: Any,
    fields: Optional[tuple[int, ...]],
    reads: tuple[int, ...],
) -> tuple[Any, ...]:
    """ARGV of lua/cas.lua (its header documents them): 1..9 for a CAS without id, else 1..13."""
    argv = (
        expected,
        payload,
        1 if given else 0,
        by if by is not None else "",
        st.max_payload_bytes,
        st.max_depth,
        st.unknown_fields,
        name,
        tag,
    )
    if write_id is None and fields is None:
        return argv
    return argv + (
        "patch" if fields is not None else "cas",
        " ".join(map(str, fields or ())),
        " ".join(map(str, reads)),
        write_id if write_id is not None else "",
    )


def _write_raw(
    st: State,
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
    fields: Optional[tuple[int, ...]] = None,
    reads: tuple[int, ...] = (),
) -> Op[Any]:
    """Sends one write (``CTX.CAS``, or ``CTX.PATCH`` when ``fields`` is given) once, as a
    :class:`Write`, and returns its raw reply. A transport error passes through: the caller
    decides about re-sending."""
    if st.engine == MODULE:
        if fields is None:
            args = cas_command(key, expected, raw, schema, by, write_id)
        else:
            args = patch_command(key, expected, raw, fields, reads, schema, by, write_id)
        return (yield Write(key, args))

    name = schema if schema is not None else st.key_schema.get(key)
    if name is None:
        stored = yield from _evalsha(st, "get", (key,), ())
        name = _reply_text(stored[2]) if stored else ""
    tag = registry_tag(st, key)
    planned = relocated = False
    moving = 0
    while True:
        argv = _lua_argv(st, expected, raw, schema is not None, by, name, tag, write_id, fields,
                         reads)
        try:
            # KEYS = the context key only; the registry entry is read undeclared (lua/cas.lua)
            reply = yield from _evalsha(st, "cas", (key,), argv, write=True)
            break
        except SchemaError as exc:
            text = str(exc)
            if st.cluster and text.startswith("CTXSCHEMA unknown schema ") and moving < len(
                _MOVING_DELAYS
            ):
                # the context reached this node before the registry copy of its slot did
                # (resharding in progress): the copy follows within milliseconds
                yield Sleep(_MOVING_DELAYS[moving])
                moving += 1
                continue
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
        except ResponseError as exc:
            if not _slot_moving(st, exc) or moving >= len(_MOVING_DELAYS):
                raise
            yield Sleep(_MOVING_DELAYS[moving])
            moving += 1
    if isinstance(reply, (list, tuple)) and len(reply) >= 5:  # a conflict: the context's own
        st.key_schema.put(key, _reply_text(reply[2]))
    elif reply is None:
        st.key_schema.pop(key)
    elif name:
        st.key_schema.put(key, name)
    return reply


#: ``update``'s default total time, in seconds, for conflicts and re-sends together.
UPDATE_TIMEOUT = 30.0

#: How often ``cas``/``delete`` re-send a write whose reply was lost before giving up with
#: OutcomeUnknownError (``update`` re-sends until its deadline).
CAS_RESENDS = 3


def _send_settled(
    st: State,
    key: Any,
    send: Callable[[], Op[Any]],
    write_id: Any,
    deadline: Optional[float],
    resends: Optional[int],
    pause: Optional[Backoff] = None,
    sent: bool = False,
) -> Op[tuple[Any, bool]]:
    """Sends a write until a reply arrives: after a transport error the very same attempt
    (same id) is sent again, after a backoff, while ``resends`` and ``deadline`` allow. Then:
    the client's error when no send ever went out (the write certainly did not run), else
    OutcomeUnknownError. Returns (reply, whether an earlier send may have landed). ``sent``: a
    send of this very attempt went out already (its reply was lost)."""
    tries = 0
    while True:
        try:
            return (yield from _reads_not_sent(send())), sent
        except TRANSPORT_ERRORS as exc:
            if not isinstance(exc, WriteNotSent):
                sent = True  # it went out: it may have run
            tries += 1
            if (resends is not None and tries > resends) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                if not sent:  # nothing ever reached the server
                    raise exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                raise OutcomeUnknownError(
                    f"the reply to a write of {key!r} (write id {write_id!r}) was lost and "
                    f"re-sending it did not settle whether it was applied: it may have landed; "
                    f"read the context before deciding ({type(exc).__name__}: {exc})",
                    key,
                    write_id,
                ) from exc
            yield Sleep(random.uniform(0, (pause or st.backoff).ceiling(tries)))
        except ResponseError as exc:
            # the write's own checks after the replay check (CTXINVALID, CTXVERSION, ...) prove
            # that no send of it ran; an error before them (OOM, READONLY, LOADING's kin,
            # WRONGTYPE, CLUSTERDOWN, NOPERM) says nothing about the send whose reply was lost
            if not sent or (isinstance(exc, CtxError) and not isinstance(exc, WrongTypeError)):
                raise
            raise OutcomeUnknownError(
                f"the reply to a write of {key!r} (write id {write_id!r}) was lost and the "
                f"re-sent write was refused before the server could tell whether it had been "
                f"applied: it may have landed; read the context before deciding "
                f"({type(exc).__name__}: {exc})",
                key,
                write_id,
            ) from exc


def _reads_not_sent(op: Op[T]) -> Op[T]:
    """Runs ``op`` (one try of a write); a transport error of a read it makes on the way (the
    context's schema, ``SCRIPT LOAD`` after ``NOSCRIPT``, a plan) is thrown into it as
    :class:`WriteNotSent`: that try did not send the write, but an earlier one may have, so the
    caller decides (re-send, then OutcomeUnknownError) instead of the read's error ending it."""
    reply: Any = None
    error: Optional[BaseException] = None
    while True:
        try:
            instr = op.send(reply) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        if type(instr) is Cmd or type(instr) is LoadScript:
            instr = replace(instr, settle=True)
        try:
            reply = yield instr
        except TRANSPORT_ERRORS as exc:
            error = exc if type(instr) is Write or isinstance(exc, WriteNotSent) else (
                _not_sent(exc))
        except BaseException as exc:  # noqa: B036 - handed to the op, as the front end would
            error = exc


def _ambiguous(outcome: Outcome, expected: int, resent: bool) -> bool:
    """A conflict reply to a re-sent write that cannot tell whether the first send landed: the
    write id is not in the window (else the reply says "replayed"), but the window does not
    reach back to the version that write would have produced, or the context is gone."""
    if not resent or outcome.result.ok:
        return False
    if outcome.result.current is None:
        return expected > 0
    return outcome.oldest is None or expected + 1 < outcome.oldest


# Lua engine on a cluster: pauses before retrying cas.lua while the key's slot is being migrated
_MOVING_DELAYS = (0.005, 0.02, 0.05, 0.1)
_MOVING_ERRORS = ("non local key", "TRYAGAIN", "ASK ")


def _slot_moving(st: State, exc: BaseException) -> bool:
    """True for the error cas.lua gets when the registry copy it reads left (or has not yet
    reached) the node during a slot migration: worth a retry after a short pause."""
    if not st.cluster or isinstance(exc, CtxError):
        return False
    text = str(exc)
    return any(marker in text for marker in _MOVING_ERRORS)


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
    write_id: Any = None,
    sent: bool = False,
) -> Op[CasResult]:
    """``cas``; ``sent``: this write (same ``write_id``) was sent already and its reply lost."""
    check_key(key)
    check_by(by)
    expected = _check_version(expected_version, st)
    wid = new_write_id() if write_id is None else check_write_id(write_id)
    # For a message, the version field's name comes from the schema: the one given, else the
    # context's own (known from an earlier reply, or one read), so a VERSIONFIELD is honoured.
    # The message's type must be the one that schema stores (checked before sending).
    vschema = schema
    if isinstance(payload, Message):
        if vschema is None and expected > 0:
            vschema = st.key_schema.get(key)
            # a read only when this type's version field is not known yet (the server checks
            # the payload anyway; the type check is the SDK's early hint)
            if vschema is None and payload.DESCRIPTOR.full_name not in st.vfield_by_type:
                current = yield from op_get(st, key)
                vschema = current.schema if current is not None else None
                if vschema:
                    st.key_schema.put(key, vschema)
        yield from _check_type(st, vschema, payload.DESCRIPTOR, key)
    raw = yield from _encode(st, payload, expected, vschema, key)
    if st.local is not None:  # opt-in local check, see "local check" below
        yield from _local_precheck(st, key, expected, raw, schema, not isinstance(payload, Message))
    for attempt in range(2):
        try:
            reply, resent = yield from _send_settled(
                st, key, lambda: _write_raw(st, key, expected, raw, schema, by, wid), wid, None,
                CAS_RESENDS, sent=sent,
            )
            break
        except VersionError:
            if attempt or not isinstance(payload, Message) or vschema is None:
                raise
            if not (yield from _vfield_changed(st, vschema, payload.DESCRIPTOR, key)):
                raise
            raw = yield from _encode(st, payload, expected, vschema, key)
    outcome = parse_outcome(reply)
    if _ambiguous(outcome, expected, resent):
        raise _unknown(key, wid)
    result = outcome.result
    if st.engine == MODULE:  # what the Lua engine's _write_raw records, for _encode next time
        if result.ok and schema is not None:
            st.key_schema.put(key, schema)
        elif result.current is not None:
            st.key_schema.put(key, result.current.schema)
    return result


def _unknown(key: Any, write_id: Any) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"the reply to a write of {key!r} (write id {write_id!r}) was lost, and by the time it "
        "was re-sent more writes had happened than the context's window of recent write ids "
        "holds (or the context was deleted): it may have landed; read the context before "
        "deciding",
        key,
        write_id,
    )


def _vfield_changed(st: State, schema: str, desc: Descriptor, key: Any = None) -> Op[bool]:
    """After CTXVERSION: re-reads the schema's version field; True when the cached one was stale
    (the schema was re-registered with another VERSIONFIELD), so the write is worth retrying."""
    old = st.vfield_by_schema.pop(schema, None)
    new = yield from _vfield(st, schema, desc, key)
    return old is not None and new != old


def op_delete(st: State, key: Any, expected_version: int, write_id: Any = None) -> Op[CasResult]:
    check_key(key)
    expected = _check_version(expected_version, st)
    wid = new_write_id() if write_id is None else check_write_id(write_id)

    def send() -> Op[Any]:
        if st.engine == MODULE:
            return (yield Write(key, ("CTX.DEL", key, expected, "ID", wid)))
        return (yield from _evalsha(st, "del", (key,), (expected, wid), write=True))

    reply, resent = yield from _send_settled(st, key, send, wid, None, CAS_RESENDS)
    if isinstance(reply, int):
        st.remember_schema(key, None)
        return new_cas_result((True, 0, None, False, ()))
    if reply is None and resent:
        # the re-sent delete finds no context: gone either way (ours, or another agent's)
        st.remember_schema(key, None)
        return new_cas_result((True, 0, None, True, ()))
    result = parse_write(reply)
    st.remember_schema(key, result.current)
    return result


def _field_error(exc: FieldNameError) -> FieldError:
    return FieldError(f"CTXFIELD {exc}")


def op_update(
    st: State,
    key: Any,
    fn: Callable[[Any], Any],
    message_class: type[Message],
    schema: Optional[str],
    by: Optional[str],
    retries: Optional[int],
    default: Optional[Callable[[], Message]],
    drop_unknown: bool = False,
    reads: Optional[Any] = None,
    timeout: Optional[float] = None,
    backoff: Optional[Backoff] = None,
) -> Op[Updated[Any]]:
    """``update`` (and ``migrate`` with ``drop_unknown``: the stored payload is parsed leniently,
    fields the class does not know are dropped, and ``fn`` may be None).

    Each attempt gets its own write id. After a transport error the same attempt is re-sent
    (same payload, same id) until ``timeout``; ``fn`` runs again only after a real conflict."""
    check_message_class(message_class, "message_class")
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be a function taking the message, not {type(fn).__name__}")
    if retries is not None and (type(retries) is not int or retries < 0):
        raise ArgumentError(f"retries must be None (no limit) or an int >= 0, not {retries!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be None or a number of seconds, not {timeout!r}")
        if not timeout > 0:
            raise ArgumentError(f"timeout must be None or a number of seconds > 0, not {timeout}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a ctxlink.Backoff(base, cap), not {backoff!r}")
    pause = backoff if backoff is not None else st.backoff
    check_by(by)
    desc = message_class.DESCRIPTOR
    if reads is not None:  # names checked before anything is sent
        try:
            field_plan(desc, st.vfield_by_type.get(desc.full_name, "version")).read_numbers(reads)
        except FieldNameError as exc:
            raise _field_error(exc) from None
    deadline = None if timeout is None else time.monotonic() + timeout
    snap = yield from op_get(st, key)
    calls = conflicts = 0
    checked = None
    while True:
        if snap is None:
            if default is None:
                raise NotFoundError(
                    f"no context at {key!r} and no default= to create one"
                    if not drop_unknown
                    else f"no context at {key!r} to migrate"
                )
            if schema is None:
                raise ArgumentError("update() needs schema= to create a context from default()")
            if checked != schema and st.type_by_schema.get(schema) != desc.full_name:
                yield from _check_type(st, schema, desc, key)
                checked = schema
            first = default()
            if inspect.isawaitable(first):
                first = yield Await(first)
            msg = message_class()
            msg.CopyFrom(first)
            expected, name = 0, schema
        else:
            expected, name = snap[0], snap[2]
            if checked != name and st.type_by_schema.get(name) != desc.full_name:
                yield from _check_type(st, name, desc, key)
                checked = name
            if drop_unknown:
                msg = message_class()
                try:
                    msg.ParseFromString(snap[1])
                except DecodeError as exc:
                    raise ValidationError(
                        f"CTXINVALID the stored payload at {key!r} does not parse as "
                        f"{desc.full_name} ({exc}); write a fixed payload with cas()"
                    ) from None
                msg.DiscardUnknownFields()
            else:
                msg = snap.decode(message_class)
        patching = reads is not None and snap is not None
        if patching:  # to tell what fn changed
            before = message_class()
            before.CopyFrom(msg)
        calls += 1
        if fn is not None:
            out = fn(msg)
            if out is not None:
                if inspect.isawaitable(out):
                    out = yield Await(out)
                # a message of the type replaces the one given; anything else (what
                # `lambda o: o.items.add(...)` returns, say) is ignored: fn changed it in place
                if isinstance(out, Message) and out.DESCRIPTOR.full_name == desc.full_name:
                    msg = out
        vf = yield from _vfield(st, name, msg.DESCRIPTOR, key)
        wid = new_write_id()
        plan = None
        if patching:
            assert snap is not None
            plan = field_plan(desc, vf)
            try:
                read_numbers = plan.read_numbers(reads)
            except FieldNameError as exc:
                raise _field_error(exc) from None
            units = plan.changed(before, msg)
            if not units:  # nothing to write: the state fn saw
                return Updated(snap[0], before, snap[1], name, calls)
            raw, fields = plan.patch(msg, units)

            def send() -> Op[Any]:
                return _write_raw(st, key, expected, raw, schema or name, by, wid, fields,
                                  read_numbers)
        else:
            # written even when fn changed nothing: the write also confirms that the state fn
            # decided on is still current (whole-context semantics)
            setattr(msg, vf, expected + 1)
            raw = msg.SerializeToString()

            def send() -> Op[Any]:
                return _write_raw(st, key, expected, raw, schema or name, by, wid)

        try:
            reply, resent = yield from _send_settled(st, key, send, wid, deadline, None, pause)
        except VersionError:
            if patching or not (yield from _vfield_changed(st, name, msg.DESCRIPTOR, key)):
                raise
            vf = yield from _vfield(st, name, msg.DESCRIPTOR, key)
            setattr(msg, vf, expected + 1)
            raw = msg.SerializeToString()
            reply, resent = yield from _send_settled(st, key, send, wid, deadline, None, pause)
        outcome = parse_outcome(reply, plan.names if plan is not None else None)
        if _ambiguous(outcome, expected, resent):
            raise _unknown(key, wid)
        result = outcome.result
        if result.ok:
            if not patching:
                return Updated(result.version, msg, raw, name, calls)
            merged = outcome.raw
            if merged is None:  # a replayed patch: the merge it stored, if nothing came after
                try:
                    now = yield from _reads_not_sent(op_get(st, key))
                except TRANSPORT_ERRORS:  # the write is done: a lost read must not say otherwise
                    now = None
                if now is not None and now[0] == result.version:
                    merged = now[1]
            if merged is None:  # overwritten since: the writer's own view, at its version
                setattr(msg, vf, result.version)
                return Updated(result.version, msg, msg.SerializeToString(), name, calls)
            stored = message_class()
            stored.ParseFromString(merged)
            return Updated(result.version, stored, merged, name, calls)
        conflicts += 1
        if (retries is not None and conflicts > retries) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            why = f"{conflicts} conflicts" if retries is not None and conflicts > retries else (
                f"its {timeout:g} s timeout")
            raise ConflictError(
                f"update of {key!r} gave up after {why}"
                + (f" (changed: {', '.join(result.changed)})" if result.changed else ""),
                result.current,
                result.changed,
                calls,
                key,
            )
        if conflicts == 1:  # the state that came with the conflict is fresh: retry at once
            snap = result.current
            continue
        # repeated conflicts: back off, then read again (the conflict's state went stale while
        # sleeping, and retrying from it would only conflict again)
        yield Sleep(random.uniform(0, pause.ceiling(conflicts - 1)))
        snap = yield from op_get(st, key)


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
    if message_type is not None and not isinstance(message_type, str):
        raise TypeError(f"message_type must be a str, not {type(message_type).__name__}")
    desc = getattr(source, "DESCRIPTOR", source)
    if isinstance(desc, Descriptor):
        if message_type is not None and message_type != desc.full_name:
            raise ArgumentError(
                f"message_type {message_type!r} is not the class's type {desc.full_name!r}; "
                "leave message_type out when passing a class"
            )
        return desc.full_name, build_descriptor_set(desc)
    if isinstance(source, descriptor_pb2.FileDescriptorSet):
        source = source.SerializeToString()
    if isinstance(source, (bytes, bytearray, memoryview)):
        fds = bytes(source)
        try:
            parsed = descriptor_pb2.FileDescriptorSet.FromString(fds)
        except DecodeError as exc:
            raise _schema_error(
                f"the descriptor set does not parse as a FileDescriptorSet ({exc}); pass the "
                "message class, or the bytes protoc --include_imports --descriptor_set_out writes"
            ) from None
        names = [
            (f.package + "." if f.package else "") + m.name
            for f in parsed.file
            for m in f.message_type
        ]
        if not names:
            raise _schema_error(
                "the descriptor set defines no message; pass the message class, or the bytes "
                "protoc --include_imports --descriptor_set_out writes"
            )
        if message_type is None:
            if len(names) != 1:
                raise ArgumentError(
                    f"message_type= is required: the set defines {len(names)} messages "
                    f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                )
            message_type = names[0]
        return message_type, fds
    if isinstance(source, str):
        raise TypeError(
            "register_schema needs a message class or descriptor-set bytes, not a str "
            "(read the .pb file in binary mode)"
        )
    raise TypeError(
        "register_schema needs a generated message class (or instance, or Descriptor) or "
        f"serialized FileDescriptorSet bytes, not {type(source).__name__}"
    )


def check_message_class(cls: Any, what: str) -> None:
    """TypeError unless ``cls`` is a generated protobuf message class."""
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        hint = " (pass the class, not an instance)" if isinstance(cls, Message) else ""
        raise TypeError(
            f"{what} must be a generated protobuf message class, not {type(cls).__name__}{hint}"
        )


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
    if not isinstance(name, str):
        raise TypeError(f"the schema name must be a str, not {type(name).__name__}")
    if version_field is not None and (not isinstance(version_field, str) or not version_field):
        raise ArgumentError(f"version_field must be a non-empty field name, not {version_field!r}")
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
    st.type_by_schema[name] = type_name
    note_schema_type(name, type_name)
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
    st.type_by_schema.pop(name, None)
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


_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def open_client(target: Any, asyncio: bool) -> tuple[Any, bool]:
    """``(client, owned)`` for ``connect``'s first argument: a ``redis://``, ``rediss://`` or
    ``unix://`` URL becomes a new ``redis.Redis`` (``redis.asyncio.Redis`` for asyncio) that the
    Store owns and closes; a client is checked (:func:`check_client`) and used as it is."""
    if isinstance(target, (str, bytes)):
        url = target.decode() if isinstance(target, bytes) else target
        if not url.startswith(_URL_SCHEMES):
            raise ArgumentError(
                f"connect() takes a redis-py client or a redis://, rediss:// or unix:// URL, "
                f"not {url!r} (e.g. 'redis://localhost:6379/0')"
            )
        if asyncio:
            import redis.asyncio

            client: Any = redis.asyncio.Redis.from_url(url)
        else:
            import redis

            client = redis.Redis.from_url(url)
        check_client(client, asyncio)
        return client, True
    check_client(target, asyncio)
    return target, False


def check_client(client: Any, asyncio: bool = False) -> None:
    """Refuses what the front end cannot drive: not a redis-py client, a client of the other
    kind (sync / asyncio; TypeError naming the right ``connect``), or a client that decodes
    replies to str (payloads are bytes)."""
    execute = getattr(client, "execute_command", None)
    if execute is None:
        entry = "ctxlink.aio.connect" if asyncio else "ctxlink.connect"
        hint = " (pass server.url or server.client())" if hasattr(client, "port") else ""
        raise TypeError(
            f"{entry}() needs a redis-py client (redis{'.asyncio' if asyncio else ''}.Redis or "
            f"RedisCluster) or a redis:// URL, not {type(client).__name__}{hint}"
        )
    if inspect.iscoroutinefunction(execute) != asyncio:
        if asyncio:
            raise TypeError(
                f"ctxlink.aio.connect() needs a redis.asyncio client, not {type(client).__name__}"
                ": for a synchronous redis-py client use ctxlink.connect()"
            )
        raise TypeError(
            f"ctxlink.connect() needs a synchronous redis-py client, not the asyncio "
            f"{type(client).__name__}: use `await ctxlink.aio.connect(client)`"
        )
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
    for opt in ("max_payload_bytes", "max_depth", "max_schema_bytes"):
        value = options.get(opt)
        if value is not None and (type(value) is not int or value < 1):
            raise ArgumentError(f"{opt} must be a positive int, not {value!r}")
    unknown = options.get("unknown_fields")
    if unknown is not None and unknown not in ("reject", "allow"):
        raise ArgumentError(f"unknown_fields must be 'reject' or 'allow', not {unknown!r}")
    st = State(engine=engine, cluster=cluster, **options)
    if engine == LUA:
        st.scripts = load_scripts()
    return st


def choose_engine(requested: str, has_module: Optional[bool]) -> str:
    if requested == MODULE:
        if has_module is False:
            raise EngineError(
                "engine='module' but the server does not know CTX.CAS: load the module "
                "(redis-server --loadmodule build/ctxlink.so) or use engine='lua' (or 'auto')"
            )
        return MODULE
    if requested == LUA:
        return LUA
    if requested != "auto":
        raise ArgumentError(f"engine must be 'auto', 'module' or 'lua', not {requested!r}")
    if has_module:
        return MODULE
    if find_lua_dir() is None:
        raise EngineError("the server has no ctxlink module and the Lua scripts are missing")
    return LUA
