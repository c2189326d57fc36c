"""``ctxlink mcp``: the MCP server on stdio (ctxlink.mcp; the ``ctxlink[mcp]`` extra)."""

from __future__ import annotations

from typing import Any, Optional

import click

from ctxlink.cli._conn import conn_of, connection_options
from ctxlink.cli._output import fail

__all__ = ["mcp"]


@click.command(short_help="Serve contexts to LLM agents over MCP (stdio).")
@click.option("--prefix", "prefixes", multiple=True, metavar="P",
              help="allow only keys starting with P (repeatable; default: every key)")
@click.option("--read-only", is_flag=True, help="no write tools (write_context, update_fields, "
              "append_items)")
@click.option("--max-reply-bytes", type=click.IntRange(min=1024), default=262144,
              show_default=True, metavar="N", help="the largest tool reply (JSON bytes); a "
              "larger one is refused with REPLY_TOO_LARGE (a history loses its oldest changes)")
@click.option("--by", "by", default="mcp", show_default=True, metavar="NAME",
              help="the writer name recorded with each write (updated_by)")
@connection_options
@click.pass_context
def mcp(ctx: click.Context, prefixes: tuple[str, ...], read_only: bool, max_reply_bytes: int,
        by: str) -> None:
    """Run an MCP server on stdin/stdout whose tools read, write, patch, wait on and describe
    contexts (get_context, write_context, update_fields, append_items, context_history,
    wait_for_change, describe_schema); every context is also the resource ctxlink://KEY.
    Started by an MCP client (see README, "MCP server"), not by hand."""
    try:
        from ctxlink.mcp.server import run_stdio
    except ImportError as exc:
        from ctxlink.mcp import MCP_EXTRA

        fail(f"ctxlink mcp needs the mcp package: {MCP_EXTRA} ({exc})")
    from ctxlink.mcp.tools import Policy

    if any(not p for p in prefixes):
        raise click.BadParameter("an empty prefix would allow every key", param_hint="--prefix")
    conn = conn_of(ctx)
    if conn.cluster and conn.db:
        raise click.UsageError("--db: a Redis Cluster has database 0 only")
    url, kw, cluster = conn.resolved_url(), conn.client_kwargs(), conn.cluster
    engine: Any = conn.engine or "auto"

    async def connect() -> Any:
        import ctxlink.aio

        client: Optional[Any] = None
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(url, **kw)
        else:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(url, **kw)
        try:
            store = await ctxlink.aio.connect(client, engine=engine)
        except BaseException:
            await client.aclose()
            raise
        store._owns = True  # the Store closes the client we built for it
        return store

    try:
        run_stdio(connect, Policy(prefixes=prefixes, read_only=read_only,
                                  max_reply_bytes=max_reply_bytes, by=by))
    except Exception as exc:
        # anyio's task groups wrap what failed (a server that cannot be reached, say) in
        # exception groups: report the first error itself, in the command line's one line
        leaf: BaseException = exc
        while getattr(leaf, "exceptions", None):
            leaf = leaf.exceptions[0]  # type: ignore[attr-defined]
        if leaf is exc:
            raise
        raise leaf from None
