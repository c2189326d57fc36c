"""Engines the suite runs against. Tests only talk to a context store through a backend object:

- ``module``: a redis-server with build/ctxlink.so, the CTX.* commands;
- ``lua``: a stock redis-server (no module), the lua/ scripts by EVALSHA with the SDK's Python
  side (argument syntax, descriptor-set checks, validation plans).

A backend sends the raw commands and returns raw replies; redis-py exceptions pass through
unchanged (their full text, code included, is ``servers.error_text(exc)``).
"""

from __future__ import annotations

import hashlib
import re

import redis

from ctxlink._core import check_compatible, check_version_field, load_descriptor
from ctxlink._exceptions import SchemaError
from ctxlink._plan import PlanError, compile_plan, registry_digest
from ctxvalue import decode as decode_value
from ctxvalue import is_v2
from servers import REPO_ROOT, Server, ServerPool

ENGINES = ["module", "lua"]

_NAME_RE = re.compile(rb"^[A-Za-z0-9_.\-:]{1,128}$")


class ModuleBackend:
    """The native module: CTX.* commands."""

    engine = "module"
    max_version = 2**63 - 2

    def __init__(self, server: Server, client: redis.Redis | None = None):
        self.server = server
        self.r = client if client is not None else server.r

    def with_client(self, client: redis.Redis) -> "ModuleBackend":
        """Same engine and server, commands sent through ``client`` (another user ...)."""
        return type(self)(self.server, client)

    # ---- argument builders (usable in pipelines / MULTI)
    def get_args(self, key):
        return ["CTX.GET", key]

    def cas_args(self, key, expected, payload, schema=None, by=None, write_id=None):
        args = ["CTX.CAS", key, expected, payload]
        if schema is not None:
            args += ["SCHEMA", schema]
        if by is not None:
            args += ["BY", by]
        if write_id is not None:
            args += ["ID", write_id]
        return args

    def patch_args(self, key, base, payload, fields, reads=None, schema=None, by=None,
                   write_id=None):
        args = ["CTX.PATCH", key, base, payload, "FIELDS", len(fields), *fields]
        if reads is not None:
            args += ["READS", len(reads), *reads]
        if schema is not None:
            args += ["SCHEMA", schema]
        if by is not None:
            args += ["BY", by]
        if write_id is not None:
            args += ["ID", write_id]
        return args

    def del_args(self, key, expected, write_id=None):
        args = ["CTX.DEL", key, expected]
        if write_id is not None:
            args += ["ID", write_id]
        return args

    # ---- commands
    def command(self, *args):
        """Send a CTX.* command with arbitrary (possibly malformed) arguments."""
        return self.r.execute_command(*args)

    def get(self, key):
        return self.r.execute_command(*self.get_args(key))

    def cas(self, key, expected, payload, schema=None, by=None, write_id=None):
        return self.r.execute_command(*self.cas_args(key, expected, payload, schema, by,
                                                     write_id))

    def patch(self, key, base, payload, fields, reads=None, schema=None, by=None,
              write_id=None):
        return self.r.execute_command(*self.patch_args(key, base, payload, fields, reads,
                                                       schema, by, write_id))

    def delete(self, key, expected, write_id=None):
        return self.r.execute_command(*self.del_args(key, expected, write_id))

    def schema_set(self, name, type, fds, force=False, versionfield=None):
        args = ["CTX.SCHEMA.SET", name, type, fds]
        if force:
            args.append("FORCE")
        if versionfield is not None:
            args += ["VERSIONFIELD", versionfield]
        return self.r.execute_command(*args)

    def schema_get(self, name):
        return self.r.execute_command("CTX.SCHEMA.GET", name)

    def schema_list(self):
        return self.r.execute_command("CTX.SCHEMA.LIST")

    def schema_del(self, name):
        return self.r.execute_command("CTX.SCHEMA.DEL", name)


# --------------------------------------------------------------------------- the Lua engine

LUA_DIR = REPO_ROOT / "lua"
LUA_SCRIPTS = ("get", "cas", "del", "schema_set", "schema_plan", "schema_get", "schema_list",
               "schema_del")
SCHEMA_PREFIX = "__ctx:schema:"
SCHEMAS_KEY = "__ctx:schemas"
# Lua numbers are doubles: the scripts accept expected versions up to 2^53 - 2 (PROTOCOL.md,
# "Lua engine"; the headers of cas.lua and del.lua).
LUA_MAX_VERSION = 2**53 - 2
DEFAULT_LIMITS = {"max-payload-bytes": 1048576, "max-depth": 32, "unknown-fields": "reject",
                  "max-schema-bytes": 4194304}
_KEY_MISMATCH = re.compile(rb"^CTXSCHEMA schema key mismatch: the context uses '(.*)'$", re.S)


def _b(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def reply_error(text: str | bytes) -> redis.ResponseError:
    """An error reply made on the client side (argument parsing, descriptor checks): the same
    exception type and ``raw_error`` as an error the server sent."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    exc = redis.ResponseError(text)
    exc.raw_error = text
    return exc


def _arity(cmd: str) -> redis.ResponseError:
    return reply_error(f"ERR wrong number of arguments for '{cmd.lower()}' command")


def _syntax() -> redis.ResponseError:
    return reply_error("ERR syntax error")


_CAS_OPTIONS = {b"SCHEMA": "schema", b"BY": "by", b"ID": "write_id"}
_PATCH_OPTIONS = {**_CAS_OPTIONS, b"FIELDS": "fields", b"READS": "reads"}
_INT_RE = re.compile(rb"^(0|-?[1-9][0-9]*)$")


def _field_list(words: list, what: str) -> list:
    """FIELDS / READS numbers checked as the module checks them: every number in range, then
    the first repeat in argument order."""
    nums = []
    for w in words:
        w = _b(w)
        if not _INT_RE.match(w) or not 1 <= int(w) <= 536870911:
            raise reply_error("ERR field numbers must be integers from 1 to 536870911")
        nums.append(int(w))
    seen: set[int] = set()
    for n in nums:
        if n in seen:
            raise reply_error(f"ERR field {n} is listed twice in {what}")
        seen.add(n)
    return [_b(w) for w in words]


def _options(opt, known: dict) -> dict:
    """Options parsed as the module parses them, left to right, each error replied where the
    module finds it: keywords in any order, each at most once; ID 1..64 bytes, BY at most
    65535; FIELDS / READS take a count (FIELDS 1.., READS 0.., at most the arguments left)
    then that many field numbers."""
    opts: dict[str, object] = {}
    opt = list(opt)
    i = 0
    while i < len(opt):
        slot = known.get(_b(opt[i]).upper())
        if slot is None or slot in opts or i + 1 >= len(opt):
            raise _syntax()
        if slot in ("fields", "reads"):
            what = "FIELDS" if slot == "fields" else "READS"
            count = _b(opt[i + 1])
            left = len(opt) - i - 2
            low = 1 if slot == "fields" else 0
            if not _INT_RE.match(count) or not low <= int(count) <= left:
                raise reply_error(f"ERR {what} needs a count from {low} to the field numbers "
                                  "that follow")
            k = int(count)
            opts[slot] = _field_list(opt[i + 2: i + 2 + k], what)
            i += 2 + k
            continue
        value = _b(opt[i + 1])
        if slot == "write_id" and not 1 <= len(value) <= 64:
            raise reply_error("ERR write id must be 1 to 64 bytes")
        if slot == "by" and len(value) > 65535:
            raise reply_error("ERR writer id is longer than 65535 bytes")
        opts[slot] = opt[i + 1]
        i += 2
    return opts


def _check_version_arg(value, what: str) -> None:
    """A version argument as the script checks it (the module's rule, Lua's 2^53 - 2 limit),
    before the options, as the module parses it."""
    v = _b(value)
    if not _INT_RE.match(v) or len(v) > 20 or not 0 <= int(v) <= LUA_MAX_VERSION:
        raise reply_error(f"ERR {what} must be an integer from 0 to {LUA_MAX_VERSION}")


def _numbers(fields) -> bytes:
    """A FIELDS / READS list as cas.lua takes it: decimal numbers separated by one space."""
    words = [_b(f) for f in fields]
    if any(not w or b" " in w for w in words):
        raise reply_error("ERR field numbers must be integers from 1 to 536870911")
    return b" ".join(words)


class _LuaScripts:
    """The lua/ sources and their SHA-1s, read once."""

    _cache: dict[str, tuple[bytes, str]] | None = None

    @classmethod
    def get(cls) -> dict[str, tuple[bytes, str]]:
        if cls._cache is None:
            out = {}
            for name in LUA_SCRIPTS:
                src = (LUA_DIR / f"{name}.lua").read_bytes()
                out[name] = (src, hashlib.sha1(src).hexdigest())
            cls._cache = out
        return cls._cache


class LuaBackend:
    """The Lua engine on a stock redis-server: the lua/ scripts by EVALSHA, with what the SDK
    does around them in Python (argument syntax, descriptor checks, the validation plan).

    Replies and error codes are the module's; error texts may differ (PROTOCOL.md, "Lua engine").
    Limits are the server's (``server.ctx_limits``, set by :func:`start_engine_server`)."""

    engine = "lua"
    max_version = LUA_MAX_VERSION

    def __init__(self, server: Server, client: redis.Redis | None = None,
                 _shared: dict | None = None):
        self.server = server
        self.r = client if client is not None else server.r
        limits = dict(DEFAULT_LIMITS)
        for k, v in (getattr(server, "ctx_limits", None) or {}).items():
            limits[k.replace("_", "-")] = v
        self.limits = limits
        # state shared with with_client() copies: scripts known to be loaded, key -> schema
        self._shared = _shared if _shared is not None else {"loaded": set(), "key_schema": {}}

    def with_client(self, client: redis.Redis) -> "LuaBackend":
        return type(self)(self.server, client, self._shared)

    # ---- scripts
    def _load(self, name: str) -> str:
        src, sha = _LuaScripts.get()[name]
        got = self.r.execute_command("SCRIPT", "LOAD", src)
        got = got.decode() if isinstance(got, bytes) else got
        assert got == sha, (name, got, sha)
        self._shared["loaded"].add(name)
        return sha

    def _sha(self, name: str) -> str:
        """The script's SHA-1, SCRIPT LOADed first unless this backend already did."""
        if name not in self._shared["loaded"]:
            return self._load(name)
        return _LuaScripts.get()[name][1]

    def _evalsha(self, name: str, keys: list, argv: list):
        sha = _LuaScripts.get()[name][1]
        try:
            return self.r.execute_command("EVALSHA", sha, len(keys), *keys, *argv)
        except redis.exceptions.NoScriptError:
            self._load(name)
            return self.r.execute_command("EVALSHA", sha, len(keys), *keys, *argv)

    # ---- argument builders (usable in pipelines / MULTI)
    def get_args(self, key):
        return ["EVALSHA", self._sha("get"), 1, key]

    def _cas_schema_name(self, key, schema) -> bytes:
        """ARGV[8] of cas.lua: SCHEMA when given, else the context's schema (remembered from
        earlier calls like the SDK's cache, else read from the stored value)."""
        if schema is not None:
            return _b(schema)
        cached = self._shared["key_schema"].get(_b(key))
        if cached is not None:
            return cached
        return self._stored_schema(key) or b""

    def _stored_schema(self, key) -> bytes | None:
        """The schema a stored context names: a v2 string's header, a v1 hash's field."""
        try:
            raw = self.r.get(key)
        except redis.ResponseError:  # not a string: a v1 hash, or cas.lua replies WRONGTYPE
            try:
                return self.r.hget(key, "schema")
            except redis.ResponseError:
                return None
        if raw is None or not is_v2(raw):
            return None
        try:
            return decode_value(raw).schema
        except ValueError:
            return None

    def cas_args(self, key, expected, payload, schema=None, by=None, write_id=None):
        name = self._cas_schema_name(key, schema)
        if schema is not None:
            self._shared["key_schema"][_b(key)] = name
        return ["EVALSHA", self._sha("cas"), 1, key,
                *self._cas_argv(expected, payload, name, schema is not None, by,
                                write_id=write_id)]

    def patch_args(self, key, base, payload, fields, reads=None, schema=None, by=None,
                   write_id=None):
        name = self._cas_schema_name(key, schema)
        if schema is not None:
            self._shared["key_schema"][_b(key)] = name
        return ["EVALSHA", self._sha("cas"), 1, key,
                *self._cas_argv(base, payload, name, schema is not None, by, fields=fields,
                                reads=reads, write_id=write_id)]

    def _cas_argv(self, expected, payload, name: bytes, given: bool, by, fields=None,
                  reads=None, write_id=None) -> list:
        """ARGV of cas.lua (its header): KEYS = the context key only; the registry entry is
        read undeclared (ARGV[8] names it, ARGV[9] is the slot tag on a cluster)."""
        lim = self.limits
        argv = [expected, payload, 1 if given else 0, by if by is not None else "",
                lim["max-payload-bytes"], lim["max-depth"], lim["unknown-fields"], name, ""]
        if fields is not None:
            argv += ["patch", _numbers(fields), _numbers(reads or ())]
        elif write_id is not None:
            argv += ["cas", "", ""]
        if write_id is not None:
            argv.append(write_id)
        return argv

    def del_args(self, key, expected, write_id=None):
        return ["EVALSHA", self._sha("del"), 1, key, expected,
                *(() if write_id is None else (write_id,))]

    # ---- commands
    def command(self, *args):
        """A CTX.* command with arbitrary arguments, parsed as the module parses it."""
        if not args:
            raise reply_error("ERR wrong number of arguments")
        cmd = _b(args[0]).decode("utf-8", "replace").upper()
        rest = args[1:]
        if cmd == "CTX.GET":
            if len(rest) != 1:
                raise _arity(cmd)
            return self.get(rest[0])
        if cmd == "CTX.CAS":
            if len(rest) < 3:
                raise _arity(cmd)
            key, expected, payload = rest[:3]
            _check_version_arg(expected, "expected_version")
            return self.cas(key, expected, payload, **_options(rest[3:], _CAS_OPTIONS))
        if cmd == "CTX.PATCH":
            if len(rest) < 3:
                raise _arity(cmd)
            key, base, payload = rest[:3]
            _check_version_arg(base, "base_version")
            opts = _options(rest[3:], _PATCH_OPTIONS)
            if "fields" not in opts:
                raise reply_error("ERR FIELDS is required")
            return self.patch(key, base, payload, **opts)
        if cmd == "CTX.DEL":
            if len(rest) < 2:
                raise _arity(cmd)
            if len(rest) != 2 and len(rest) != 4:
                raise _syntax()
            _check_version_arg(rest[1], "expected_version")
            return self.delete(rest[0], rest[1], **_options(rest[2:], {b"ID": "write_id"}))
        if cmd == "CTX.SCHEMA.SET":
            if len(rest) < 3:
                raise _arity(cmd)
            force, vfield = False, None
            opt = list(rest[3:])
            i = 0
            while i < len(opt):
                word = _b(opt[i]).upper()
                if word == b"FORCE" and not force:
                    force = True
                elif word == b"VERSIONFIELD" and vfield is None and i + 1 < len(opt):
                    i += 1
                    vfield = opt[i]
                else:
                    raise _syntax()
                i += 1
            return self.schema_set(rest[0], rest[1], rest[2], force=force, versionfield=vfield)
        if cmd == "CTX.SCHEMA.GET":
            if len(rest) != 1:
                raise _arity(cmd)
            return self.schema_get(rest[0])
        if cmd == "CTX.SCHEMA.LIST":
            if rest:
                raise _arity(cmd)
            return self.schema_list()
        if cmd == "CTX.SCHEMA.DEL":
            if len(rest) != 1:
                raise _arity(cmd)
            return self.schema_del(rest[0])
        raise reply_error(f"ERR unknown command '{cmd}'")

    def get(self, key):
        reply = self._evalsha("get", [key], [])
        self._remember(key, reply)
        return reply

    def _remember(self, key, state):
        if isinstance(state, list):
            self._shared["key_schema"][_b(key)] = _b(state[2])
        elif state is None:
            self._shared["key_schema"].pop(_b(key), None)

    def cas(self, key, expected, payload, schema=None, by=None, write_id=None):
        return self._write(key, schema, lambda name: self._cas_argv(
            expected, payload, name, schema is not None, by, write_id=write_id))

    def patch(self, key, base, payload, fields, reads=None, schema=None, by=None,
              write_id=None):
        """CTX.PATCH through cas.lua's patch mode: reply [version, merged payload], a conflict
        state, nil or ["replayed", version]."""
        return self._write(key, schema, lambda name: self._cas_argv(
            base, payload, name, schema is not None, by, fields=fields, reads=reads,
            write_id=write_id))

    def _write(self, key, schema, argv_for):
        """cas.lua with the SDK's retries: a missing plan is compiled and stored, a stale
        remembered schema is replaced by the context's."""
        given = schema is not None
        name = self._cas_schema_name(key, schema)
        planned = relocated = False
        while True:
            try:
                reply = self._evalsha("cas", [key], argv_for(name))
                break
            except redis.ResponseError as exc:
                text = _b(getattr(exc, "raw_error", None) or str(exc))
                if text.startswith(b"CTXSCHEMA noplan ") and not planned:
                    planned = True  # compile the entry's plan, store it, retry once
                    self._install_plan(name)
                    continue
                m = _KEY_MISMATCH.match(text)
                if m and not given and not relocated:
                    relocated = True  # stale remembered schema: use the context's
                    name = m.group(1)
                    continue
                if m:
                    self._shared["key_schema"].pop(_b(key), None)
                raise
        if isinstance(reply, int) or (isinstance(reply, list) and len(reply) == 2):
            self._shared["key_schema"][_b(key)] = name  # written (or replayed)
        else:
            self._remember(key, reply)
        return reply

    def _install_plan(self, name: bytes) -> None:
        """What the SDK does after "CTXSCHEMA noplan": compile the entry's plan and attach it
        (schema_plan.lua writes it only if the entry still has the digest it was made for)."""
        rk = SCHEMA_PREFIX.encode() + name
        type_, fds, vfield, digest = self.r.hmget(rk, "type", "fds", "vfield", "digest")
        if type_ is None or fds is None or vfield is None or digest is None:
            return
        try:
            plan = compile_plan(fds, type_.decode("utf-8", "surrogateescape"),
                                vfield.decode("utf-8", "surrogateescape"), digest.decode())
        except PlanError as e:
            raise reply_error(f"CTXSCHEMA registry entry for schema "
                              f"'{name[:120].decode('utf-8', 'replace')}' does not compile: {e}")
        self._evalsha("schema_plan", [rk], [digest, plan])

    def delete(self, key, expected, write_id=None):
        reply = self._evalsha("del", [key], [expected] + ([] if write_id is None else [write_id]))
        if reply == 1:
            self._shared["key_schema"].pop(_b(key), None)
        else:
            self._remember(key, reply)
        return reply

    def schema_set(self, name, type, fds, force=False, versionfield=None):
        """CTX.SCHEMA.SET the way the SDK's Lua engine does it: the descriptor set, the message
        type, the version field and the compatibility are checked in Python (the SDK's own
        checks), the plan is compiled, then schema_set.lua writes if the revision is unchanged."""
        name_b, type_b, fds = _b(name), _b(type), _b(fds)
        vfield_b = _b(versionfield) if versionfield is not None else b"version"
        if not _NAME_RE.match(name_b):
            raise reply_error("CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :")
        type_s = type_b.decode("utf-8", "surrogateescape")
        vfield_s = vfield_b.decode("utf-8", "surrogateescape")
        try:
            desc = load_descriptor(fds, type_s, int(self.limits["max-schema-bytes"]))
            check_version_field(desc, vfield_s)
        except SchemaError as e:
            raise reply_error(str(e)) from None
        rk = SCHEMA_PREFIX.encode() + name_b
        digest = registry_digest(type_b, vfield_b, fds)
        kind = self.r.type(rk)
        prev_rev = 0
        if kind == b"hash":
            p_type, p_fds, p_rev, p_vfield, p_digest = self.r.hmget(
                rk, "type", "fds", "revision", "vfield", "digest")
            try:
                prev_rev = int(p_rev) if p_rev is not None else 0
            except ValueError:
                prev_rev = 0
            same = p_digest is not None and p_digest.decode("latin-1") == digest
            if not same and not force:
                # as the module: the registered revision must be readable (its digest matching
                # its content) and the new one wire-compatible with it
                readable = (p_type is not None and p_fds is not None and p_vfield is not None
                            and p_digest is not None
                            and p_digest.decode("latin-1") == registry_digest(p_type, p_vfield,
                                                                               p_fds))
                old = None
                if readable:
                    try:
                        old = load_descriptor(p_fds, p_type.decode("utf-8", "surrogateescape"),
                                              1 << 62)
                        check_version_field(old, p_vfield.decode("utf-8", "surrogateescape"))
                    except SchemaError:
                        old = None
                if old is None:
                    raise reply_error("CTXSCHEMA the registered revision cannot be read; "
                                      "use FORCE to replace it")
                try:
                    check_compatible(old, desc)
                except SchemaError as e:
                    raise reply_error(str(e)) from None
        try:
            plan = compile_plan(fds, type_s, vfield_s, digest)
        except PlanError as e:
            raise reply_error(f"CTXSCHEMA {e}") from None
        return self._evalsha("schema_set", [rk, SCHEMAS_KEY],
                             [name_b, type_b, fds, vfield_b, plan, prev_rev])

    def schema_get(self, name):
        return self._evalsha("schema_get", [SCHEMA_PREFIX.encode() + _b(name)], [])

    def schema_list(self):
        return self._evalsha("schema_list", [SCHEMAS_KEY], [])

    def schema_del(self, name):
        return self._evalsha("schema_del", [SCHEMA_PREFIX.encode() + _b(name), SCHEMAS_KEY],
                             [name])


BACKENDS = {"module": ModuleBackend, "lua": LuaBackend}


def limits_to_module_args(limits: dict) -> list[str]:
    args = []
    for name, value in limits.items():
        args += [name.replace("_", "-"), str(value)]
    return args


def start_engine_server(pool: ServerPool, engine: str, limits: dict | None = None, **kw) -> Server:
    """A dedicated server for ``engine`` with the given limits (module arguments, e.g.
    ``{"max-payload-bytes": 256}``)."""
    limits = dict(limits or {})
    if engine == "module":
        server = pool.start(module=True, module_args=limits_to_module_args(limits), **kw)
    elif engine == "lua":
        # a stock server: the limits the module would take as arguments go to cas.lua's ARGV
        # (and max-schema-bytes to the Python checks before schema_set.lua)
        server = pool.start(module=False, **kw)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    server.ctx_limits = limits
    return server


def make_backend(engine: str, server: Server):
    return BACKENDS[engine](server)
