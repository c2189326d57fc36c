"""Everything specific to the Lua engine (stock Redis, lua/*.lua): finding and loading the
scripts, running them by SHA (reloading after ``NOSCRIPT``), cas.lua's arguments and retries, its
validation plans, and the Lua half of registering a schema."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from redis.exceptions import NoScriptError, ResponseError

from ctxlink._cluster import registry_copies, registry_key_for, registry_tag
from ctxlink._exceptions import CtxError, EngineError, SchemaError
from ctxlink._instr import Cmd, Instr, LoadScript, Op, Sleep, Write
from ctxlink._protocol import _bytes, _reply_text, _text

if TYPE_CHECKING:
    from ctxlink._state import State

_KEY_MISMATCH = re.compile(r"^CTXSCHEMA schema key mismatch: the context uses '(.*)'$")
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
) -> Op[Any]:
    """The Lua engine's half of :func:`ctxlink._write._write_raw`: runs cas.lua once (as a
    :class:`Write`), compiling a missing plan, following the context's own schema and waiting
    out a slot migration on the way."""
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
