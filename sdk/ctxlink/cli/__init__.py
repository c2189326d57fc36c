"""The ``ctxlink`` command line (click and rich; ``import ctxlink`` imports neither).

    ctxlink [connection options] COMMAND [ARGS] [connection options]

Commands: ``get``, ``ls``, ``history``, ``touch`` (ctxlink.cli.contexts), ``watch``
(ctxlink.cli.watch), ``schema push|ls|show|check``
(ctxlink.cli.schemas), ``stats``, ``doctor`` (ctxlink.cli.server), ``demo``
(ctxlink.cli.demo_cmd). The connection options (ctxlink.cli._conn) are accepted before and after
the command. Errors: one line on stderr, ``ctxlink: <CODE> <text>``, exit status 1; usage
errors exit 2 (click's). ``CTXLINK_DEBUG=1`` shows the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

import click

from ctxlink import __version__
from ctxlink.cli._conn import conn_of, connection_options
from ctxlink.cli._output import CliError, error_line
from ctxlink.cli.contexts import get, history, ls, touch
from ctxlink.cli.demo_cmd import demo
from ctxlink.cli.mcp_cmd import mcp
from ctxlink.cli.schemas import schema
from ctxlink.cli.server import doctor, stats
from ctxlink.cli.watch import watch

__all__ = ["cli", "main"]


class _Group(click.Group):
    """The root group: every error of a command becomes one line on stderr (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:
            raise  # stdout closed (| head): click exits quietly
        except Exception as exc:  # noqa: BLE001 - every error is reported, in one line
            if os.environ.get("CTXLINK_DEBUG"):
                raise
            raise CliError(error_line(exc, conn_of(ctx).shown())) from None


@click.group(cls=_Group, context_settings={"max_content_width": 100})
@click.version_option(__version__, prog_name="ctxlink", message="%(prog)s %(version)s")
@connection_options
def cli() -> None:
    """ctxlink: versioned, schema-validated shared context for agents, on Redis.

    Connection options (redis-cli style) go before or after the command: -u/--url, -h/--host,
    -p/--port, -a/--password, --user, -n/--db, --tls, --cacert, -c/--cluster, --engine. The
    server: --url, else --host/--port, else $REDIS_URL, else redis://127.0.0.1:6379/0.
    -h is --host, as in redis-cli: help is --help.
    """


for command in (get, ls, history, watch, touch, schema, stats, doctor, demo, mcp):
    cli.add_command(command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status (the console script exits with it)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ctxlink",
                 standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0
