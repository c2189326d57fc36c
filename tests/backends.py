"""Engines the suite runs against. Tests only talk to a context store through a backend object,
so the Lua engine can be added to ENGINES later without touching the tests.

A backend sends the raw commands and returns raw replies; redis-py exceptions pass through
unchanged (their full text, code included, is ``servers.error_text(exc)``).
"""

from __future__ import annotations

import redis

from servers import Server, ServerPool

ENGINES = ["module"]


class ModuleBackend:
    """The native module: CTX.* commands."""

    engine = "module"

    def __init__(self, server: Server, client: redis.Redis | None = None):
        self.server = server
        self.r = client if client is not None else server.r

    def with_client(self, client: redis.Redis) -> "ModuleBackend":
        """Same engine and server, commands sent through ``client`` (another user ...)."""
        return type(self)(self.server, client)

    # ---- argument builders (usable in pipelines / MULTI)
    def get_args(self, key):
        return ["CTX.GET", key]

    def cas_args(self, key, expected, payload, schema=None, by=None):
        args = ["CTX.CAS", key, expected, payload]
        if schema is not None:
            args += ["SCHEMA", schema]
        if by is not None:
            args += ["BY", by]
        return args

    def del_args(self, key, expected):
        return ["CTX.DEL", key, expected]

    # ---- commands
    def command(self, *args):
        """Send a CTX.* command with arbitrary (possibly malformed) arguments."""
        return self.r.execute_command(*args)

    def get(self, key):
        return self.r.execute_command(*self.get_args(key))

    def cas(self, key, expected, payload, schema=None, by=None):
        return self.r.execute_command(*self.cas_args(key, expected, payload, schema, by))

    def delete(self, key, expected):
        return self.r.execute_command(*self.del_args(key, expected))

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


BACKENDS = {"module": ModuleBackend}


def limits_to_module_args(limits: dict) -> list[str]:
    args = []
    for name, value in limits.items():
        args += [name.replace("_", "-"), str(value)]
    return args


def start_engine_server(pool: ServerPool, engine: str, limits: dict | None = None, **kw) -> Server:
    """A dedicated server for ``engine`` with the given limits (module arguments, e.g.
    ``{"max-payload-bytes": 256}``)."""
    limits = limits or {}
    if engine == "module":
        return pool.start(module=True, module_args=limits_to_module_args(limits), **kw)
    raise ValueError(f"unknown engine {engine!r}")


def make_backend(engine: str, server: Server):
    return BACKENDS[engine](server)
