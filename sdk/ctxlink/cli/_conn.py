"""Connection options, in the redis-cli style, accepted by the group and by every subcommand
(``ctxlink -p 6380 get k`` and ``ctxlink get k -p 6380`` are the same; a subcommand's value wins).

Which server: ``--url``, else ``--host``/``--port``, else ``$REDIS_URL``, else
``redis://127.0.0.1:6379/0``. ``--password``, ``--user``, ``--db``, ``--tls`` and ``--cacert``
then apply on top of whichever URL was chosen. ``-h`` is ``--host`` as in redis-cli: help is
``--help`` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import click

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Store

__all__ = ["Conn", "connection_options", "conn_of", "open_store", "DEFAULT_URL"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Conn:
    """The connection options given so far (the group's, then the subcommand's)."""

    url: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    password: Optional[str] = None
    user: Optional[str] = None
    db: Optional[int] = None
    tls: bool = False
    cacert: Optional[str] = None
    cluster: bool = False
    engine: Optional[str] = None

    def explicit_server(self) -> bool:
        """True when a connection option was given (``$REDIS_URL`` alone is not one)."""
        return bool(self.url or self.host or self.port is not None or self.cluster or self.tls
                    or self.db is not None or self.user is not None
                    or self.password is not None)

    def base_url(self) -> str:
        """The URL chosen by precedence, before the other options apply."""
        if self.url:
            return self.url
        if self.host or self.port is not None:
            host = self.host or "127.0.0.1"
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"  # an IPv6 address
            return f"redis://{host}:{self.port if self.port is not None else 6379}"
        return os.environ.get("REDIS_URL") or DEFAULT_URL

    def resolved_url(self) -> str:
        """The URL the client connects to: the chosen one with ``--tls`` (``redis://`` becomes
        ``rediss://``), ``--user``, ``--password`` and ``--db`` written into it (redis-py lets
        a URL's parts beat keyword arguments, so they go into the URL)."""
        parts = urlsplit(self.base_url())
        if (self.tls or self.cacert is not None) and parts.scheme == "redis":
            parts = parts._replace(scheme="rediss")
        if parts.scheme in ("redis", "rediss"):
            if self.user is not None or self.password is not None:
                user = self.user if self.user is not None else unquote(parts.username or "")
                password = self.password if self.password is not None else (
                    unquote(parts.password) if parts.password is not None else None)
                auth = quote(user, safe="")
                if password is not None:
                    auth += ":" + quote(password, safe="")
                host = parts.netloc.rsplit("@", 1)[-1]
                parts = parts._replace(netloc=f"{auth}@{host}" if auth else host)
            if self.db is not None and not self.cluster:
                parts = parts._replace(path=f"/{self.db}")
        elif parts.scheme == "unix":
            query = [q for q in parts.query.split("&") if q and not q.startswith(
                ("db=", "username=", "password="))]
            if self.db is not None:
                query.append(f"db={self.db}")
            if self.user is not None:
                query.append(f"username={quote(self.user, safe='')}")
            if self.password is not None:
                query.append(f"password={quote(self.password, safe='')}")
            parts = parts._replace(query="&".join(query))
        return urlunsplit(parts)

    def shown(self) -> str:
        """The URL without its password, for messages."""
        parts = urlsplit(self.resolved_url())
        if parts.password is None:
            return urlunsplit(parts)
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.cacert is not None:
            kw["ssl_ca_certs"] = self.cacert
        return kw

    def client(self) -> Any:
        """A redis-py client (``RedisCluster`` with ``--cluster``), bytes replies."""
        url = self.resolved_url()
        kw = self.client_kwargs()
        if self.cluster:
            if self.db:
                raise click.UsageError("--db: a Redis Cluster has database 0 only")
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(url, **kw)
        import redis

        return redis.Redis.from_url(url, **kw)


def conn_of(ctx: click.Context) -> Conn:
    """The options of this invocation (stored on the root context)."""
    return ctx.find_root().ensure_object(Conn)


def _setter(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return  # not given here: keep what the group (or a default) said
        setattr(conn_of(ctx), attr, value)

    return store


def _options() -> list[Callable[[F], F]]:
    def opt(*decls: str, attr: str, **kw: Any) -> Callable[[F], F]:
        return click.option(*decls, expose_value=False, callback=_setter(attr),
                            is_eager=False, **kw)

    return [
        opt("-u", "--url", attr="url", metavar="URL",
            help="redis://[user:password@]host:port/db, rediss://... or unix://... "
            "(beats --host/--port; default: $REDIS_URL, else redis://127.0.0.1:6379/0)"),
        opt("-h", "--host", attr="host", metavar="HOST", help="server host (default 127.0.0.1)"),
        opt("-p", "--port", attr="port", type=click.IntRange(1, 65535), metavar="PORT",
            help="server port (default 6379)"),
        opt("-a", "--password", attr="password", metavar="PASSWORD", help="password (AUTH)"),
        opt("--user", attr="user", metavar="USER", help="ACL user name"),
        opt("-n", "--db", attr="db", type=click.IntRange(0), metavar="DB",
            help="database number"),
        opt("--tls", attr="tls", is_flag=True, default=None, help="connect with TLS"),
        opt("--cacert", attr="cacert", type=click.Path(dir_okay=False), metavar="FILE",
            help="CA certificate file (implies --tls)"),
        opt("-c", "--cluster", attr="cluster", is_flag=True, default=None,
            help="the server is a node of a Redis Cluster"),
        opt("--engine", attr="engine", type=click.Choice(["auto", "module", "lua"]),
            help="module, lua, or auto (default: the module when it is loaded)"),
    ]


def connection_options(f: F) -> F:
    """Adds the connection options to a command (the group's and every subcommand's)."""
    for decorate in reversed(_options()):
        f = decorate(f)
    return f


def open_store(ctx: click.Context) -> "Store":
    """A Store on the chosen server (it owns its client: use it in ``with``)."""
    import ctxlink

    conn = conn_of(ctx)
    client = conn.client()
    engine: Any = conn.engine or "auto"
    try:
        store = ctxlink.connect(client, engine=engine)
    except BaseException:
        client.close()
        raise
    store._owns = True  # the Store closes the client we built for it
    return store
