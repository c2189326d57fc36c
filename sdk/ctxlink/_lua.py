"""Everything specific to the Lua engine (stock Redis, lua/*.lua) at run time: running the scripts
by SHA (reloading after ``NOSCRIPT``, the Redis 6.2 form), cas.lua's arguments and retries, and
the plan scripts (docs/PROTOCOL.md, "The validation plan").

A write runs ``cas`` with the validation plan of the context's schema: :mod:`ctxlink._scripts`
generates it through the C core from the registry entry, read here as data (``HMGET type fds
vfield digest``) the first time a schema name is written and again when cas.lua answers
``CTXSCHEMA stale <name>`` (the entry changed). Nothing executable is read from Redis. While the
plan is known, a ``cas`` is one ``EVALSHA``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

from redis.exceptions import NoScriptError, ResponseError

from ctxlink import _native
from ctxlink._cluster import registry_key_for, registry_tag
from ctxlink._exceptions import CtxError, SchemaError, WrongTypeError
from ctxlink._history import history_keys, note_history
from ctxlink._instr import Cmd, Instr, LoadScript, Op, Sleep, Write
from ctxlink._protocol import _bytes, _reply_text, new_incarnation, wait_channel
from ctxlink._scripts import (
    Script,
    entry_script,
    find_lua_dir,
    load_scripts,
    null_plan_script,
    plan_script,
)

if TYPE_CHECKING:
    from ctxlink._state import State

__all__ = [
    "check_plan",
    "find_lua_dir",
    "forget_plans",
    "load_scripts",
    "Script",
    "_evalsha",
    "_write_lua",
]

_KEY_MISMATCH = re.compile(r"^CTXSCHEMA schema key mismatch: the context uses '(.*)'$")

#: ``st.scripts`` keys of the plan scripts of schema ``<name>``: "cas:<name>", "patch:<name>".
_FLAVORS = ("cas", "patch")
#: Plan scripts one Store keeps (by schema name); past it they are dropped and re-read.
_MAX_PLANS = 256
#: Bytes of plan scripts one Store keeps (a huge schema's plan runs to megabytes).
_MAX_PLAN_BYTES = 32 << 20
#: ``CTXSCHEMA stale`` answers one write follows (each: read the entry, regenerate, re-send).
_STALE_RETRIES = 3


# ---------------------------------------------------------------------------------------------
# running scripts


def _for_server(st: State, script: Script) -> Script:
    """``script`` as this server takes it: without the ``#!lua`` line once Redis 6.2 refused
    it (the fixed scripts in ``st.scripts`` were converted then)."""
    get = st.scripts.get("get")
    if get is not None and not get.source.startswith(b"#!"):
        return script.without_shebang()
    return script


def _run(
    st: State, script: Script, keys: tuple[Any, ...], args: tuple[Any, ...], write: bool = False
) -> Op[Any]:
    """Runs ``script``; ``write``: as a :class:`Write` on ``keys[0]`` (sent once; NOSCRIPT means
    it did not run, so loading the script and sending it again is no re-send). A read-only
    script (``#!lua flags=no-writes``: get, schema_get, schema_list) goes as ``EVALSHA_RO`` on
    Redis 7 outside a cluster, so a user whose key patterns are read-only (``%R~``) may run it
    and a replica serves it; the server's "unknown command" (Redis 6.2) or a user without
    ``evalsha_ro`` turns the Store back to ``EVALSHA``."""

    def instr(sha: str, ro: bool) -> Instr:
        args_ = ("EVALSHA_RO" if ro else "EVALSHA", sha, len(keys), *keys, *args)
        return Write(keys[0], args_) if write else Cmd(args_)

    ro = (not write and st.eval_ro is not False and not st.cluster
          and script.source.startswith(_NO_WRITES))
    loaded = False
    while True:
        try:
            return (yield instr(script.sha, ro))
        except NoScriptError:  # the server lost its script cache (restart, SCRIPT FLUSH, ...)
            if loaded:
                raise
            script = yield from _load(st, script)
            loaded = True
            ro = ro and script.source.startswith(_NO_WRITES)  # Redis 6.2's form has no flags
        except ResponseError as exc:
            text = str(exc).lower()
            if not ro or not ("unknown command" in text or "evalsha_ro" in text):
                raise
            st.eval_ro = False
            ro = False


_NO_WRITES = b"#!lua flags=no-writes"


def _load(st: State, script: Script) -> Op[Script]:
    """``SCRIPT LOAD`` of ``script``; returns the script as loaded: Redis < 7 cannot compile the
    ``#!lua`` line, so there every script this Store holds turns into its 6.2 form."""
    try:
        yield LoadScript(script.source)
        return script
    except CtxError:
        raise
    except Exception as exc:
        if script.source == script.without_shebang().source or not _shebang_refused(exc):
            raise
    st.scripts = {n: s.without_shebang() for n, s in st.scripts.items()}
    script = script.without_shebang()
    yield LoadScript(script.source)
    return script


def _shebang_refused(exc: BaseException) -> bool:
    """True for Redis 6.2's answer to a ``#!lua`` line (a compile error at its ``#``), not for
    any other compile error (a plan Lua cannot load must not turn a 7.0 Store into 6.2 form)."""
    text = str(exc)
    return ":1:" in text and "near '#'" in text


_LUA_REASON = re.compile(r"(?:user_script|f_[0-9a-f]+):\d+: (.*)$", re.S)


def _load_plan(st: State, name: str, script: Script) -> Op[Script]:
    """:func:`_load` of a plan script; a plan Redis' Lua cannot compile (a schema past one of
    Lua 5.1's limits, docs/PROTOCOL.md "The validation plan") is ``CTXSCHEMA ... too large for
    the Lua engine``."""
    try:
        return (yield from _load(st, script))
    except ResponseError as exc:
        text = str(exc)
        if isinstance(exc, CtxError) or "Error compiling script" not in text:
            raise
        match = _LUA_REASON.search(text)
        why = (match.group(1) if match else text).strip()
        raise SchemaError(
            f"CTXSCHEMA schema '{name}' is too large for the Lua engine: its validation plan "
            f"does not load in Redis (Lua: {why})"
        ) from None


def check_plan(st: State, name: str, schema: Any, digest: str) -> Op[None]:
    """``register_schema`` on the Lua engine: loads the plan script of the compiled ``schema``
    (registry digest ``digest``), so a schema whose plan Redis' Lua cannot load is refused
    before it is stored (:func:`_load_plan`'s error)."""
    yield from _load_plan(st, name, _for_server(st, plan_script(schema, digest, "cas")))


def _evalsha(
    st: State, name: str, keys: tuple[Any, ...], args: tuple[Any, ...], write: bool = False
) -> Op[Any]:
    """Runs the fixed script ``name`` (lua/<name>.lua after the prelude)."""
    return (yield from _run(st, st.scripts[name], keys, args, write))


# ---------------------------------------------------------------------------------------------
# plan scripts


def _plan_script(
    st: State, name: str, key: Any, flavor: str, reread: bool = False
) -> Op[Script]:
    """cas.lua (``flavor`` "cas" or "patch") with the plan of schema ``name`` (the registry
    copy of ``key``'s slot): the one this Store made before, else (or with ``reread``) made
    from the entry read now and loaded (with ``reread`` the other flavor is dropped: it was
    made from the old entry)."""
    cached = st.scripts.get(f"{flavor}:{name}")
    if cached is not None and not reread:
        return cached
    try:
        _native.check_name(name)
    except SchemaError:  # cas.lua refuses the name before it reads the registry
        return _for_server(st, null_plan_script(flavor=flavor))
    try:
        entry = yield Cmd(("HMGET", registry_key_for(st, name, key), "type", "fds", "vfield",
                           "digest", "history", "feed"))
    except (WrongTypeError, ResponseError) as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        entry = [None] * 6  # not a hash: cas.lua answers "unknown schema", as the module does
    # KEYS[2] while the schema keeps history, the feed last while it has one (_history)
    note_history(st, name, entry[4], entry[5])
    type_name, fds, vfield, digest = (None if v is None else _bytes(v) for v in entry[:4])
    script = _for_server(st, entry_script(type_name, fds, vfield, digest, flavor))
    # a plan this Store has not sent yet: load it first, so the write itself is sent once
    # (no NOSCRIPT round trip on the way to a write)
    script = yield from _load_plan(st, name, script)
    plans = [n for n in st.scripts if n.split(":", 1)[0] in _FLAVORS]
    held = sum(len(st.scripts[n].source) for n in plans) + len(script.source)
    if len(plans) >= _MAX_PLANS or held > _MAX_PLAN_BYTES:
        for n in plans:
            st.scripts.pop(n, None)
    if reread:
        forget_plans(st, name)
    st.scripts[f"{flavor}:{name}"] = script
    return script


def forget_plans(st: State, name: str) -> None:
    """Drops this Store's plan scripts of schema ``name``: the next write makes them again from
    the entry (after a registration, which may repair an entry under the same digest)."""
    for flavor in _FLAVORS:
        st.scripts.pop(f"{flavor}:{name}", None)


# ---------------------------------------------------------------------------------------------
# writes


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
    inc: Optional[str] = None,
    px: Optional[int] = None,
    fresh: str = "",
    key: Any = None,
    apps: tuple[int, ...] = (),
) -> tuple[Any, ...]:
    """ARGV of lua/cas.lua (its header documents them): 1..19. ``inc``: ARGV[14] (INC),
    ``fresh``: ARGV[16], the incarnation a create without INC or an upgrade of a v1/v2 value
    gives the context; ARGV[17..18] ``key``'s wait channel (``store.wait``; "" without a key);
    ARGV[19] the write id's digest (:func:`write_digest`; "" without an id)."""
    argv: tuple[Any, ...] = (
        expected,
        payload,
        1 if given else 0,
        by if by is not None else "",
        st.max_payload_bytes,
        st.max_depth,
        st.unknown_fields,
        _bytes(name),  # its exact bytes (a name read back from a value need not be UTF-8)
        tag,
    )
    argv += (write_id if write_id is not None else "",)
    if fields is None:
        argv += ("cas", "", "")
    else:
        argv += ("patch", " ".join(map(str, fields)), " ".join(map(str, reads)))
    argv += (inc or "", px if px is not None else "", fresh)
    channel, shard = wait_channel(key) if key is not None else ("", False)
    argv += (channel, "1" if shard else "0", write_digest(write_id))
    return argv + (" ".join(map(str, apps)),) if apps else argv


def write_digest(write_id: Any) -> bytes:
    """The 8 bytes a window record holds for ``write_id`` (str: its UTF-8, as redis-py sends
    it), from the C core (``ctx_WriteDigest``, the module's digest): cas.lua takes them as
    ARGV[19] instead of hashing the id itself; b"" for no id."""
    if write_id is None or write_id == "" or write_id == b"":
        return b""
    from ctxlink._native import ffi, lib

    raw = write_id.encode() if isinstance(write_id, str) else bytes(write_id)
    out = ffi.new("unsigned char[8]")
    lib.ctx_WriteDigest(raw, len(raw), out)
    return bytes(ffi.buffer(out, 8))


def _write_lua(
    st: State,
    key: Any,
    expected: int,
    raw: bytes,
    schema: Optional[str],
    by: Optional[str],
    write_id: Any = None,
    fields: Optional[tuple[int, ...]] = None,
    reads: tuple[int, ...] = (),
    inc: Optional[str] = None,
    px: Optional[int] = None,
    apps: tuple[int, ...] = (),
) -> Op[Any]:
    """The Lua engine's half of :func:`ctxlink._write._write_raw`: runs the schema's cas script
    once (as a :class:`Write`). On the way it reads the context's schema when it is unknown,
    makes the plan script when it has none, and sends the same write again (same id: safe, it
    was refused before anything was written) after ``stale`` (a new plan), a schema key mismatch
    (the context's own schema) or a slot migration (a pause)."""
    name = schema if schema is not None else st.key_schema.get(key)
    if name is None:
        stored = yield from _evalsha(st, "get", (key,), ())
        name = _reply_text(stored[2]) if stored else ""
    tag = registry_tag(st, key)
    flavor = "patch" if fields is not None else "cas"
    script = yield from _plan_script(st, name, key, flavor)
    relocated = False
    stale = moving = 0
    # a create's own incarnation, else one for the upgrade of a v1/v2 value (the script uses it
    # only then): one per write, the same in every send of it
    fresh = inc if inc and expected == 0 else new_incarnation()
    while True:
        argv = _lua_argv(st, expected, raw, schema is not None, by, name, tag, write_id, fields,
                         reads, inc, px, fresh, key, apps)
        try:
            # KEYS = the context key (+ its history stream); the registry entry is read
            # undeclared (lua/cas.lua)
            reply = yield from _run(st, script, (key, *history_keys(st, name, key)), argv,
                                    write=True)
            break
        except SchemaError as exc:
            text = str(exc)
            if text == f"CTXSCHEMA stale {name}" and stale < _STALE_RETRIES:
                # the entry is not the one the plan was made from: read it, make its plan
                stale += 1
                script = yield from _plan_script(st, name, key, flavor, reread=True)
                continue
            if st.cluster and text.startswith("CTXSCHEMA unknown schema ") and moving < len(
                _MOVING_DELAYS
            ):
                # the context reached this node before the registry copy of its slot did
                # (resharding in progress): the copy follows within milliseconds
                yield Sleep(_MOVING_DELAYS[moving])
                moving += 1
                continue
            match = _KEY_MISMATCH.match(text)
            if match and not relocated and schema is None:
                # our cached schema for the key was stale: use the one the context has
                relocated = True
                name = match.group(1)
                st.key_schema.put(key, name)
                script = yield from _plan_script(st, name, key, flavor)
                continue
            if match:
                st.key_schema.pop(key)
            raise
        except ResponseError as exc:
            if not _slot_moving(st, exc) or moving >= len(_MOVING_DELAYS):
                raise
            yield Sleep(_MOVING_DELAYS[moving])
            moving += 1
    if isinstance(reply, (list, tuple)) and len(reply) >= 6:  # a conflict: the context's own
        st.key_schema.put(key, _reply_text(reply[2]))
    elif reply is None:
        st.key_schema.pop(key)
    elif name:
        st.key_schema.put(key, name)
    return reply


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
