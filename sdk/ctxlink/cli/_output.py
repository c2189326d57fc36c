"""Output of the command line: JSON on stdout, rich tables and panels for people, and errors as one
line on stderr (``ctxlink: <CODE> <text>``), exit status 1; usage errors are click's (status 2).

rich is imported only when something is rendered for people (``--json`` never loads it).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, NoReturn, Optional

import click

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = ["CliError", "fail", "error_line", "print_json", "console", "when", "ERROR_PREFIX"]

ERROR_PREFIX = "ctxlink: "


class CliError(click.ClickException):
    """An error for people: one line on stderr, exit status 1 (no "Error:" banner, no usage)."""

    exit_code = 1

    def show(self, file: Optional[IO[Any]] = None) -> None:
        line = " ".join(self.format_message().split())  # one line, whatever the text held
        click.echo(ERROR_PREFIX + line, err=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


# redis-py drops these codes from the error text and raises its own class instead
_REDIS_CODES = {
    "NoPermissionError": "NOPERM",
    "ReadOnlyError": "READONLY",
    "NoScriptError": "NOSCRIPT",
    "BusyLoadingError": "LOADING",
    "ExecAbortError": "EXECABORT",
    "AuthenticationError": "WRONGPASS",
    "AuthenticationWrongNumberOfArgsError": "ERR",
    "ClusterDownError": "CLUSTERDOWN",
    "OutOfMemoryError": "OOM",
    "MovedError": "MOVED",
    "AskError": "ASK",
    "TryAgainError": "TRYAGAIN",
    "ClusterCrossSlotError": "CROSSSLOT",
}
_NOT_CLUSTER_AWARE = ("MOVED", "ASK", "CROSSSLOT")


def error_line(exc: BaseException, where: str = "") -> str:
    """One line naming what failed, code first: ``CTXSCHEMA ...`` for a ctxlink error reply,
    ``NOPERM ...``/``WRONGTYPE ...``/``ERR ...`` for other replies, the exception's class for the
    rest (``ConnectionError: ... (redis://127.0.0.1:6379/0)``)."""
    from redis import exceptions as rx

    from ctxlink import ServerError

    text = " ".join(str(exc).split())
    if isinstance(exc, ServerError):
        return text  # the server's text, code first
    name = type(exc).__name__
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError)) and not isinstance(
        exc, rx.AuthenticationError
    ):
        return f"{name}: {text}" + (f" ({where})" if where else "")
    if isinstance(exc, rx.ResponseError) or name in _REDIS_CODES:
        code = _REDIS_CODES.get(name)
        first = text.split(" ", 1)[0]
        if code is None:
            if first.isupper() and first.isalpha():
                code = first  # the code is still there (WRONGTYPE ...)
            else:
                code = "ERR"
        line = f"{code} {text}" if first != code else text
        if code in _NOT_CLUSTER_AWARE:
            line += " (the server is a Redis Cluster node: add -c/--cluster)"
        return line
    return f"{name}: {text}" if text else name


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def console() -> "Console":
    """A rich console on stdout (colours only on a terminal, as rich decides)."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "120"))
    # markup off: keys, schema names and messages are printed as they are
    return Console(width=width, highlight=False, soft_wrap=False, markup=False)


def when(ms: int) -> str:
    """A server timestamp (Unix ms) as UTC ISO 8601 with milliseconds; "-" for 0."""
    if not ms:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d} UTC"
