"""Connecting: opening or checking the redis-py client, telling a cluster, detecting the module
and its protocol, choosing the engine and building the Store's :class:`State`."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from ctxlink._exceptions import ArgumentError, EngineError
from ctxlink._instr import Cmd, Op
from ctxlink._lua import find_lua_dir, load_scripts
from ctxlink._protocol import LUA, MODULE, PROTOCOL, _text
from ctxlink._state import State


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


def op_check_protocol(cluster: bool) -> Op[None]:
    """Refuses a module older than :data:`PROTOCOL` (EngineError, before anything is written).

    ``CTX.TOUCH`` without arguments needs no ACL right to tell: protocol 3 answers "wrong number
    of arguments" (Redis 7: arity before ACL) or NOPERM naming the command (6.2: ACL first); a
    protocol 2 or 1 module "unknown command" (``CTX.PATCH`` then tells which, for the message).
    Anything else is let through: the writes will tell."""
    nodes = "random" if cluster else None
    try:
        yield Cmd(("CTX.TOUCH",), nodes=nodes)
        return
    except Exception as exc:  # the expected outcome: an error reply
        low = str(exc).lower()
        if not ("ctx.touch" in low and "unknown command" in low):
            return
    old = 2
    try:
        yield Cmd(("CTX.PATCH",), nodes=nodes)
    except Exception as exc:
        low = str(exc).lower()
        if "ctx.patch" in low and "unknown command" in low:
            old = 1
    raise EngineError(
        f"the server's ctxlink module speaks protocol {old}; this SDK ({PROTOCOL}) needs "
        f"protocol {PROTOCOL} (incarnations, field clocks, PX, CTX.TOUCH): upgrade the module "
        "first (build/ctxlink.so of this release, then restart or MODULE LOAD), then the SDKs "
        "(docs/PROTOCOL.md, \"Storage format\")"
    )


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
