"""``ctxlink watch --schema NAME``: a live tail of a schema's change feed (docs/PROTOCOL.md,
"Change feed"), through ``Store.changes(block_ms=...)``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import click

from ctxlink.cli._output import fail, when

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Change, Store

__all__ = ["watch_schema", "change_data"]

# how long one changes() call blocks while tailing (the loop checks --count between calls)
_BLOCK_MS = 1000


def change_data(c: "Change") -> dict[str, Any]:
    """A change as the JSON line ``watch --json`` prints."""
    return {
        "key": c.key,
        "kind": c.kind,
        "version": c.version,
        "incarnation": c.incarnation,
        "updated_ms": c.updated_ms,
        "updated_by": c.updated_by,
        "write_id": c.write_id,
        "fields": list(c.fields) if c.fields is not None else None,
    }


def _line(c: "Change") -> str:
    fields = f" [{', '.join(c.fields)}]" if c.fields else ""
    by = c.updated_by or "-"
    return f"{when(c.updated_ms)}  {c.kind:<6}  {c.key}  v{c.version}  by {by}{fields}"


def _end_cursor(store: "Store", schema: str) -> Optional[str]:
    """The cursor after the feed's newest change (None: an empty feed, read from its start)."""
    from ctxlink._feed import cursor_of

    client = store.client
    try:
        fields = client.xinfo_stream(f"__ctxf:{schema}")  # redis-py: a dict with str keys
    except Exception:  # no such key yet
        return None
    last = fields.get("last-generated-id")
    if last is None:
        return None
    added = fields.get("entries-added")
    return cursor_of(int(added) if added is not None else -1, last)


def watch_schema(store: "Store", schema: str, count: Optional[int], as_json: bool,
                 from_start: bool, cursor: Optional[str]) -> None:
    """Prints the changes of ``schema``'s feed as they come, ``count`` of them (None: until
    interrupted). Without a feed for the schema: one line on stderr naming the fix, exit 1."""
    from ctxlink._feed import FEED_CLUSTER_MSG

    if store._st.cluster:
        fail(FEED_CLUSTER_MSG)
    info = store.get_schema(schema)
    if info is None:
        fail(f"CTXSCHEMA unknown schema {schema!r}")
    if not info.feed:
        fail(f"schema {schema!r} has no change feed: turn it on with `ctxlink schema push ... "
             f"--name {schema} --feed N` or register_schema({schema!r}, ..., feed=N)")
    if cursor is None and not from_start:
        cursor = _end_cursor(store, schema)
    shown = 0
    while count is None or shown < count:
        batch = store.changes(schema, cursor, count=100 if count is None else
                              min(100, count - shown), block_ms=_BLOCK_MS)
        for c in batch.changes:
            click.echo(json.dumps(change_data(c), ensure_ascii=False) if as_json else _line(c))
            shown += 1
        cursor = batch.cursor
