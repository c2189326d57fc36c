"""``ctxlink watch KEY``: a live tail of one context through ``store.wait`` (no polling: the
module blocks in ``CTX.WAIT``; the Lua engine's waiter subscribes to the key's wait channel).

Each wake-up prints the context as it is then: one line (version, time, writer), or with
``--json`` one line holding the same object as ``get --json``. Changes that land while the
previous one is being printed are seen together, as the newest of them (the line says how many
it covers); a schema with history keeps each of them for ``ctxlink history``. ``--count N`` ends
after N changes (versions), exit status 0; a deletion (or a deletion and re-creation) ends it with
one line on stderr, exit status 1.
"""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Optional

import click

from ctxlink.cli._conn import connection_options, open_store
from ctxlink.cli._output import fail, when
from ctxlink.cli.contexts import context_json, schema_of

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import SchemaInfo, Snapshot, Store

__all__ = ["watch", "watch_key"]

# an idle watch re-reads the context this often (seconds): it notices a deletion followed by a
# re-creation at a lower version, which CTX.WAIT (waiting for a higher version) would not report
_SLICE = 10.0


def _gone(key: str, snap: "Optional[Snapshot]", incarnation: str, version: int) -> str:
    """Why the watched context no longer is the one the watch started on, or ""."""
    if snap is None:
        return f"the context at {key!r} was deleted"
    if (incarnation and snap.incarnation and snap.incarnation != incarnation) \
            or snap.version < version:
        return f"the context at {key!r} was deleted and created again (version {snap.version})"
    return ""


def watch_key(store: "Store", key: str, count: Optional[int], after: Optional[int],
              as_json: bool) -> None:
    """Prints the changes of the context at ``key`` until ``count`` changes (None: forever);
    ``after``: start after this version instead of the current one."""
    from ctxlink import NotFoundError

    snap = store.get(key)
    incarnation = snap.incarnation if snap is not None else ""
    current = snap.version if snap is not None else 0
    if after and snap is None:
        fail(f"no context at {key!r}")
    if after is not None and snap is not None and after > snap.version:
        fail(f"--after {after}: the context at {key!r} is at version {snap.version}")
    last = current if after is None else after
    start = last
    if not as_json:
        what = (f"from version {last}" if snap is not None
                else "until it is created (no context there yet)")
        click.echo(f"watching {key} {what}; Ctrl-C stops")
    infos: dict[str, "SchemaInfo"] = {}
    while count is None or last - start < count:
        try:
            got = store.wait(key, last, _SLICE)
        except NotFoundError:
            fail(f"the context at {key!r} was deleted")
        if got is None:  # an idle slice: is it still the same context?
            if snap is not None or last > 0:
                why = _gone(key, store.get(key), incarnation, last)
                if why:
                    fail(why)
            continue
        if incarnation and got.incarnation and got.incarnation != incarnation:
            fail(f"the context at {key!r} was deleted and created again (version "
                 f"{got.version})")
        incarnation = incarnation or got.incarnation
        seen = got.version - last
        last = got.version
        if as_json:
            info = infos.get(got.schema)
            if info is None:
                info = infos[got.schema] = schema_of(store, key, got)
            click.echo(json.dumps(context_json(key, got, info), ensure_ascii=False))
        else:
            more = f"  ({seen} changes)" if seen > 1 else ""
            click.echo(f"version {got.version}  {when(got.updated_ms)}  by "
                       f"{got.updated_by or '-'}{more}")


@click.command(short_help="Follow the context at KEY, or a schema's change feed.")
@click.argument("key", required=False)
@click.option("--schema", "schema", metavar="NAME",
              help="follow the change feed of schema NAME instead of one context (registered "
              "with --feed N)")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="stop after N changes (versions); default: run until Ctrl-C")
@click.option("--after", type=click.IntRange(min=0), metavar="V",
              help="KEY: start after version V instead of the current version (a change made "
              "between reading V and starting the watch is then printed too)")
@click.option("--from-start", is_flag=True,
              help="--schema: begin with the oldest change the feed retains (default: new ones)")
@click.option("--cursor", metavar="CURSOR",
              help="--schema: resume after a cursor store.changes returned")
@click.option("--json", "as_json", is_flag=True,
              help="print JSON lines (KEY: each the object `get --json` prints)")
@connection_options
@click.pass_context
def watch(ctx: click.Context, key: Optional[str], schema: Optional[str], count: Optional[int],
          after: Optional[int], from_start: bool, cursor: Optional[str], as_json: bool) -> None:
    """A live tail of the context at KEY: a line for each new version (version, time, writer),
    without polling (store.wait). Changes that land together are printed as the newest of them.
    Waits for the context's creation when there is none yet. Exit status 0 after --count
    changes; 1, with one line on stderr, when the context is deleted.

    With --schema NAME instead of KEY: every create, update, patch and delete of the schema's
    contexts, from its change feed (store.changes)."""
    if (key is None) == (schema is None):
        raise click.UsageError("give KEY or --schema NAME (one of them)")
    if schema is not None and after is not None:
        raise click.UsageError("--after goes with KEY; with --schema use --cursor")
    if key is not None and (from_start or cursor is not None):
        raise click.UsageError("--from-start and --cursor go with --schema")
    stopped = False

    def on_sigint(signum: int, frame: Optional[FrameType]) -> None:
        nonlocal stopped
        stopped = True
        raise KeyboardInterrupt  # redis-py may turn it into another error: ``stopped`` tells

    main = threading.current_thread() is threading.main_thread()  # signals: the main only
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        with open_store(ctx) as store:
            if schema is not None:
                from ctxlink.cli.feed import watch_schema

                watch_schema(store, schema, count, as_json, from_start, cursor)
            else:
                assert key is not None
                watch_key(store, key, count, after, as_json)
    except BaseException:
        if not stopped:
            raise
        ctx.exit(130)  # Ctrl-C: quietly, with the status of a SIGINT
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
