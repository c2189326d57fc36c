"""Commands on contexts: ``get``, ``ls``, ``touch``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

import click

from ctxlink.cli._conn import connection_options, open_store
from ctxlink.cli._output import console, fail, print_json, when

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Snapshot, Store

__all__ = ["get", "ls", "touch", "scan_contexts", "scan_keys", "primaries"]

# registry (and, later, history/feed) keys: never contexts
RESERVED_PREFIX = b"__ctx:"


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)


def primaries(store: "Store") -> list[tuple[str, Any]]:
    """(address, client) of every primary: one on a standalone server."""
    from ctxlink._client import is_cluster

    client = store.client
    if not is_cluster(client):
        kw = client.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"
        return [(str(where), client)]
    return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]


def scan_keys(store: "Store", pattern: str) -> Iterator[bytes]:
    """Every key matching ``pattern`` (SCAN on every primary), reserved ``__ctx:`` keys left out."""
    for _, client in primaries(store):
        for key in client.scan_iter(match=pattern, count=1000):
            if not bytes(key).startswith(RESERVED_PREFIX):
                yield bytes(key)


def scan_contexts(
    store: "Store", pattern: str = "*", schema: Optional[str] = None
) -> Iterator[tuple[bytes, "Snapshot"]]:
    """(key, Snapshot) of every context matching ``pattern``, read through the SDK (a key that
    is not a context is skipped), of schema ``schema`` when given."""
    from ctxlink import WrongTypeError

    for key in sorted(set(scan_keys(store, pattern))):
        try:
            snap = store.get(key)
        except WrongTypeError:
            continue
        if snap is None or (schema is not None and snap.schema != schema):
            continue
        yield key, snap


def snapshot_data(key: str, snap: "Snapshot") -> dict[str, Any]:
    return {
        "key": key,
        "version": snap.version,
        # incarnations come with the next value format; "" until the SDK has them
        "incarnation": str(getattr(snap, "incarnation", "") or ""),
        "schema": snap.schema,
        "updated_ms": snap.updated_ms,
        "updated_by": snap.updated_by,
    }


@click.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="print JSON: the context's metadata and "
              "its message in protobuf's JSON mapping (field names as in the .proto)")
@connection_options
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool) -> None:
    """Print the context at KEY, decoded with its registered schema."""
    from ctxlink.cli._proto import decode, to_json

    with open_store(ctx) as store:
        snap = store.get(key)
        if snap is None:
            fail(f"no context at {key!r}")
        info = store.get_schema(snap.schema)
    if info is None:
        fail(f"CTXSCHEMA unknown schema {snap.schema!r}: the context at {key!r} (version "
             f"{snap.version}) cannot be decoded until the schema is registered again")
    data = snapshot_data(key, snap)
    message = decode(info.descriptor_set, info.message_type, snap.raw)
    data["message"] = to_json(message)
    if as_json:
        print_json(data)
        return
    import json

    from rich.json import JSON
    from rich.panel import Panel
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("key", key)
    head.add_row("version", str(snap.version))
    if data["incarnation"]:
        head.add_row("incarnation", data["incarnation"])
    head.add_row("schema", f"{snap.schema} ({info.message_type}, revision {info.revision})")
    head.add_row("updated", f"{when(snap.updated_ms)} ({snap.updated_ms})")
    head.add_row("updated by", snap.updated_by or "-")
    out = console()
    out.print(head)
    out.print(Panel(JSON(json.dumps(data["message"], ensure_ascii=False)),
                    title=info.message_type, title_align="left", expand=False))


@click.command()
@click.argument("pattern", default="*")
@click.option("--schema", "schema", metavar="NAME", help="only contexts of this schema")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
@click.pass_context
def ls(ctx: click.Context, pattern: str, schema: Optional[str], as_json: bool) -> None:
    """List the contexts whose keys match PATTERN (SCAN syntax, default *), on every primary of
    a cluster."""
    with open_store(ctx) as store:
        rows = [snapshot_data(_key_text(key), snap)
                for key, snap in scan_contexts(store, pattern, schema)]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("key", "schema", "version", "updated", "updated by"):
        table.add_column(name, justify="right" if name == "version" else "left")
    for row in rows:
        table.add_row(row["key"], row["schema"], str(row["version"]), when(row["updated_ms"]),
                      row["updated_by"] or "-")
    out = console()
    out.print(table)
    out.print(f"{len(rows)} context{'s' if len(rows) != 1 else ''}")


@click.command()
@click.argument("key")
@click.argument("seconds", type=click.FloatRange(min=0, min_open=True))
@connection_options
@click.pass_context
def touch(ctx: click.Context, key: str, seconds: float) -> None:
    """Set the expiry of the context at KEY to SECONDS from now (and of its history)."""
    with open_store(ctx) as store:
        set_ttl = getattr(store, "touch", None)
        if set_ttl is None:
            fail("touch needs Store.touch, which this version of the SDK does not have yet")
        if not set_ttl(key, seconds):
            fail(f"no context at {key!r}")
    click.echo(f"{key}: expires in {seconds:g} s")
