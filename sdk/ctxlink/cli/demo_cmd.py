"""``ctxlink demo``: the reference scenario (ctxlink.demo), on a throwaway redis-server or, given
a connection option, on that server (its data stays there, for ``ctxlink get``/``ls``)."""

from __future__ import annotations

from typing import Optional

import click

from ctxlink.cli._conn import conn_of, connection_options

__all__ = ["demo"]


@click.command(short_help="three agents on shared order contexts: naive HGET/HSET vs ctxlink")
@click.option("--orders", type=click.IntRange(min=1), default=2000, show_default=True,
              help="number of orders")
@click.option("--module", "module", metavar="PATH", default=None,
              help="the module to load (default: $CTXLINK_MODULE, else build/ctxlink.so)")
@click.option("--lanes", type=click.IntRange(min=1), default=4, show_default=True,
              help="orders worked on at once; 3 agent threads per lane")
@click.option("--think-ms", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="each agent thinks up to this long between read and write")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the think times")
@connection_options
@click.pass_context
def demo(ctx: click.Context, orders: int, module: Optional[str], lanes: int, think_ms: float,
         seed: int) -> None:
    """Runs the reference scenario (Router, Fulfillment Checker, Pricing Agent, concurrently)
    three times: last-write-wins HGET/HSET, ctxlink writing whole contexts, and ctxlink with
    declared read sets (field patches); prints what each run measured.

    By default on a throwaway redis-server: with the module (--engine module, the default) or
    stock with the Lua scripts (--engine lua). Given a connection option (-u, -h, -p, -n, -a,
    --user), it runs on that server instead ($REDIS_URL alone does not count) and leaves its
    contexts (order:<n>, declared:order:<n>) and the schema "order" behind: use an empty
    database (-n DB)."""
    from ctxlink.demo import run_demo

    conn = conn_of(ctx)
    url = None
    if conn.explicit_server():
        if conn.cluster or conn.tls:
            raise click.UsageError("the demo runs on a standalone server without TLS")
        url = conn.resolved_url()  # -a, --user and -n written into it
        if not url.startswith("redis://"):
            raise click.UsageError(f"the demo runs on a redis:// server, not {conn.shown()}")
    engine = conn.engine or ("auto" if url else "module")
    ctx.exit(run_demo(engine=engine, orders=orders, module=module, lanes=lanes,
                      think_ms=think_ms, seed=seed, url=url))

