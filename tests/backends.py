"""Engines the suite runs against. Tests only talk to a context store through a backend object:

- ``module``: a redis-server with build/ctxlink.so; the backend sends the raw CTX.* commands and
  returns the raw replies;
- ``lua``: a stock redis-server (no module) driven by the shipped SDK,
  ``ctxlink.connect(client, engine="lua")``, which loads the real lua/ scripts; the backend maps
  the SDK's results to the module's reply shapes and re-implements no protocol rule.

Error replies are exceptions whose full text, code included, is ``servers.error_text(exc)``
(the SDK's ``ServerError`` is a ``redis.ResponseError`` carrying the server's text).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import redis

import ctxlink
from ctxlink import CasResult, Snapshot
from servers import REPO_ROOT, Server, ServerPool

ENGINES = ["module", "lua"]


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

    def cas_args(self, key, expected, payload, schema=None, by=None, write_id=None, inc=None,
                 px=None):
        args = ["CTX.CAS", key, expected, payload]
        if schema is not None:
            args += ["SCHEMA", schema]
        if by is not None:
            args += ["BY", by]
        if write_id is not None:
            args += ["ID", write_id]
        if inc is not None:
            args += ["INC", inc]
        if px is not None:
            args += ["PX", px]
        return args

    def patch_args(self, key, base, payload, fields, reads=None, schema=None, by=None,
                   write_id=None, inc=None, px=None):
        args = ["CTX.PATCH", key, base, payload, "FIELDS", len(fields), *fields]
        if reads is not None:
            args += ["READS", len(reads), *reads]
        if schema is not None:
            args += ["SCHEMA", schema]
        if by is not None:
            args += ["BY", by]
        if write_id is not None:
            args += ["ID", write_id]
        if inc is not None:
            args += ["INC", inc]
        if px is not None:
            args += ["PX", px]
        return args

    def del_args(self, key, expected, write_id=None, inc=None):
        args = ["CTX.DEL", key, expected]
        if write_id is not None:
            args += ["ID", write_id]
        if inc is not None:
            args += ["INC", inc]
        return args

    # ---- commands
    def command(self, *args):
        """Send a CTX.* command with arbitrary (possibly malformed) arguments."""
        return self.r.execute_command(*args)

    def get(self, key):
        return self.r.execute_command(*self.get_args(key))

    def cas(self, key, expected, payload, schema=None, by=None, write_id=None, inc=None,
            px=None):
        return self.r.execute_command(*self.cas_args(key, expected, payload, schema, by,
                                                     write_id, inc, px))

    def patch(self, key, base, payload, fields, reads=None, schema=None, by=None,
              write_id=None, inc=None, px=None):
        return self.r.execute_command(*self.patch_args(key, base, payload, fields, reads,
                                                       schema, by, write_id, inc, px))

    def delete(self, key, expected, write_id=None, inc=None):
        return self.r.execute_command(*self.del_args(key, expected, write_id, inc))

    def touch(self, key, ms):
        return self.r.execute_command("CTX.TOUCH", key, ms)

    def schema_set(self, name, type, fds, force=False, versionfield=None, compat=None):
        args = ["CTX.SCHEMA.SET", name, type, fds]
        if force:
            args.append("FORCE")
        if versionfield is not None:
            args += ["VERSIONFIELD", versionfield]
        if compat is not None:
            args += ["COMPAT", compat]
        return self.r.execute_command(*args)

    def schema_get(self, name):  # the definition: [type, fds, revision] (settings follow)
        reply = self.r.execute_command("CTX.SCHEMA.GET", name)
        return None if reply is None else list(reply[:3])

    def schema_list(self):
        return self.r.execute_command("CTX.SCHEMA.LIST")

    def schema_del(self, name):
        return self.r.execute_command("CTX.SCHEMA.DEL", name)


# --------------------------------------------------------------------------- the Lua engine

LUA_DIR = REPO_ROOT / "lua"
# Lua numbers are doubles: the SDK and the scripts take expected versions up to 2^53 - 2 (a
# documented Lua-only limit: PROTOCOL.md, "Lua engine").
LUA_MAX_VERSION = 2**53 - 2
_LIMIT_KWARGS = {"max-payload-bytes": "max_payload_bytes", "max-depth": "max_depth",
                 "unknown-fields": "unknown_fields", "max-schema-bytes": "max_schema_bytes"}


def _text(value: Any) -> str:
    """A name as the SDK takes it (str); bytes decoded as the SDK decodes replies."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _b(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def state_reply(snap: Optional[Snapshot]) -> Optional[list[Any]]:
    """A Snapshot (or None) in the shape of ``CTX.GET``'s reply (the incarnation last)."""
    if snap is None:
        return None
    return [snap.version, snap.raw, _b(snap.schema), snap.updated_ms, _b(snap.updated_by),
            _b(snap.incarnation)]


def write_reply(result: CasResult) -> Any:
    """A CasResult in the shape of ``CTX.CAS``'s reply: the new version, ``["replayed",
    version]``, or the conflict state (nil without a context). The SDK surfaces the state of a
    conflict (with its incarnation), not the window's ``oldest_known`` nor CAS's empty
    ``changed``: compare conflicts with :func:`helpers.conflict_state`."""
    if result.ok:
        return [b"replayed", result.version] if result.replayed else result.version
    return state_reply(result.current)


def _sdk_internals() -> tuple[Callable[..., Any], ...]:
    """The sync driver, the write path ``Store.update(reads=...)`` sends its ``CTX.PATCH``
    through (the SDK has no public call taking field numbers), and the SDK's write-id helpers."""
    from ctxlink._sync import _run
    from ctxlink._write import _write_raw, check_write_id, new_write_id

    return _run, _write_raw, check_write_id, new_write_id


class LuaBackend:
    """The Lua engine as an application runs it: ``ctxlink.connect(client, engine="lua")`` and
    the lua/ scripts that Store loads. A thin adapter, no protocol rule of its own:

    - ``get``, ``cas``, ``delete`` and the ``schema_*`` calls go through the Store's public API
      (``get``, ``cas(..., schema=, by=, write_id=)``, ``delete``, ``register_schema(force=,
      version_field=, message_type=)``, ``get_schema``, ``schemas``, ``drop_schema``);
    - ``patch`` (field numbers) goes through the SDK's internal write path, the function
      ``Store.update(reads=...)`` sends its patches with (``_write_raw``), since the public API
      names fields only through ``update``; its reply is the script's, unchanged;
    - results are written in the shape of the module's replies (:func:`state_reply`,
      :func:`write_reply`) so one assertion holds on both engines; errors are the SDK's: a
      server error is a ``ServerError`` (a ``redis.ResponseError`` whose text is the server's),
      an argument the SDK refuses before sending is its ``ArgumentError``/``TypeError``.

    There is no command line: ``CTX.*`` syntax tests are module-only, and so are raw commands
    queued in pipelines or MULTI (``*_args``). Limits are the server's (``server.ctx_limits``, set
    by :func:`start_engine_server`), given to ``connect`` as the Lua engine takes them."""

    engine = "lua"
    max_version = LUA_MAX_VERSION

    def __init__(self, server: Server, client: Optional[redis.Redis] = None) -> None:
        self.server = server
        self.r = client if client is not None else server.r
        limits: dict[str, Any] = {}
        for k, v in (getattr(server, "ctx_limits", None) or {}).items():
            limits[_LIMIT_KWARGS[k.replace("_", "-")]] = v
        self.store = ctxlink.connect(self.r, engine="lua", **limits)

    def with_client(self, client: redis.Redis) -> "LuaBackend":
        """Same engine and server, a Store on ``client`` (another user ...)."""
        return type(self)(self.server, client)

    # ---- contexts
    def get(self, key: Any) -> Optional[list[Any]]:
        return state_reply(self.store.get(key))

    def cas(self, key: Any, expected: int, payload: bytes, schema: Any = None, by: Any = None,
            write_id: Any = None, inc: Any = None, px: Any = None) -> Any:
        """``inc``: ``incarnation=`` (INC; a create's own incarnation), ``px``: ``ttl=`` in
        seconds (px / 1000: the SDK sends the same milliseconds)."""
        return write_reply(self.store.cas(
            key, expected, payload, schema=None if schema is None else _text(schema), by=by,
            write_id=write_id, incarnation=None if inc is None else _text(inc),
            ttl=None if px is None else px / 1000))

    def patch(self, key: Any, base: int, payload: bytes, fields: list[Any],
              reads: Optional[list[Any]] = None, schema: Any = None, by: Any = None,
              write_id: Any = None, inc: Any = None, px: Any = None) -> Any:
        """``CTX.PATCH`` through cas.lua's patch mode, sent as ``Store.update(reads=...)`` sends
        it: with a write id (the one given, checked as ``cas`` checks it, else a fresh one like
        each of update's attempts). The raw reply: ``[version, merged payload]``, the
        seven-element conflict state, nil or ``["replayed", version]``."""
        run, write_raw, check_write_id, new_write_id = _sdk_internals()
        wid = new_write_id() if write_id is None else check_write_id(write_id)
        return run(self.store.client, write_raw(
            self.store._st, key, base, payload, None if schema is None else _text(schema), by,
            wid, tuple(int(f) for f in fields), tuple(int(f) for f in reads or ()),
            None if inc is None else _text(inc).lower(), None if px is None else int(px)))

    def delete(self, key: Any, expected: int, write_id: Any = None, inc: Any = None) -> Any:
        """1 when deleted (also a re-sent delete that found nothing), else the conflict."""
        result = self.store.delete(key, expected, write_id=write_id,
                                   incarnation=None if inc is None else _text(inc))
        return 1 if result.ok else state_reply(result.current)

    def touch(self, key: Any, ms: int) -> int:
        return 1 if self.store.touch(key, ms / 1000) else 0

    # ---- schema registry
    def schema_set(self, name: Any, type: Any, fds: bytes, force: bool = False,
                   versionfield: Any = None, compat: Optional[str] = None) -> int:
        return self.store.register_schema(
            _text(name), _b(fds), force=force, message_type=_text(type),
            version_field=None if versionfield is None else _text(versionfield), compat=compat)

    def schema_get(self, name: Any) -> Optional[list[Any]]:
        info = self.store.get_schema(_text(name))
        if info is None:
            return None
        return [_b(info.message_type), info.descriptor_set, info.revision]

    def schema_list(self) -> list[bytes]:
        return [_b(n) for n in self.store.schemas()]

    def schema_del(self, name: Any) -> int:
        return 1 if self.store.drop_schema(_text(name)) else 0


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
        # a stock server: the limits the module takes as arguments go to ctxlink.connect
        server = pool.start(module=False, **kw)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    server.ctx_limits = limits
    return server


def make_backend(engine: str, server: Server):
    return BACKENDS[engine](server)
