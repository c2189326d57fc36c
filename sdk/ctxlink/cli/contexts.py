"""Commands on contexts: ``get``, ``ls``, ``history``, ``touch`` (``watch``: ctxlink.cli.watch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

import click

from ctxlink.cli._conn import connection_options, open_store
from ctxlink.cli._output import console, fail, print_json, when

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Change, SchemaInfo, Snapshot, Store

__all__ = ["get", "ls", "history", "touch", "scan_contexts", "scan_keys", "primaries",
           "context_json", "schema_of", "RESERVED_PREFIXES"]

# never contexts: the registry (__ctx:), history streams (__ctxh:) and change feeds (__ctxf:)
RESERVED_PREFIXES = (b"__ctx:", b"__ctxh:", b"__ctxf:")


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
    """Every key matching ``pattern`` (SCAN on every primary), the reserved keys (registry
    ``__ctx:``, history ``__ctxh:``, feed ``__ctxf:``) left out."""
    for _, client in primaries(store):
        for key in client.scan_iter(match=pattern, count=1000):
            if not bytes(key).startswith(RESERVED_PREFIXES):
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
        "incarnation": snap.incarnation,
        "schema": snap.schema,
        "updated_ms": snap.updated_ms,
        "updated_by": snap.updated_by,
    }


def schema_of(store: "Store", key: str, snap: "Snapshot") -> "SchemaInfo":
    """The registry entry of the context's schema; one line and exit 1 when it is gone."""
    info = store.get_schema(snap.schema)
    if info is None:
        fail(f"CTXSCHEMA unknown schema {snap.schema!r}: the context at {key!r} (version "
             f"{snap.version}) cannot be decoded until the schema is registered again")
    return info


def context_json(key: str, snap: "Snapshot", info: "SchemaInfo") -> dict[str, Any]:
    """``get --json``'s object: the metadata and the message in protobuf's JSON mapping."""
    from ctxlink.cli._proto import decode, to_json

    data = snapshot_data(key, snap)
    data["message"] = to_json(decode(info.descriptor_set, info.message_type, snap.raw))
    return data


@click.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="print JSON: the context's metadata and "
              "its message in protobuf's JSON mapping (field names as in the .proto)")
@connection_options
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool) -> None:
    """Print the context at KEY, decoded with its registered schema."""
    with open_store(ctx) as store:
        snap = store.get(key)
        if snap is None:
            fail(f"no context at {key!r}")
        info = schema_of(store, key, snap)
    data = context_json(key, snap, info)
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
        if not store.touch(key, seconds):
            fail(f"no context at {key!r}")
    click.echo(f"{key}: expires in {seconds:g} s")


def change_data(change: "Change", info: Optional["SchemaInfo"]) -> dict[str, Any]:
    """One ``history --json`` line: the Change's fields (``fields`` a list, or null for a
    whole-context write); ``message`` when the schema keeps payloads (decoded with the
    registered schema; null when that revision cannot parse it), ``payload_omitted`` true when
    the payload was too large to keep."""
    data: dict[str, Any] = {
        "key": change.key,
        "incarnation": change.incarnation,
        "kind": change.kind,
        "version": change.version,
        "updated_ms": change.updated_ms,
        "updated_by": change.updated_by,
        "write_id": change.write_id,
        "fields": list(change.fields) if change.fields is not None else None,
    }
    if change.payload is not None and info is not None:
        from google.protobuf.message import DecodeError

        from ctxlink.cli._proto import decode, to_json

        try:
            data["message"] = to_json(decode(info.descriptor_set, info.message_type,
                                             change.payload))
        except DecodeError:  # written before a forced, incompatible schema change
            data["message"] = None
    if change.payload_omitted:
        data["payload_omitted"] = True
    return data


@click.command(short_help="Print the changes the history of the context at KEY keeps.")
@click.argument("key")
@click.option("--since", "since", type=click.IntRange(min=0), metavar="V",
              help="only the changes after version V")
@click.option("--limit", "limit", type=click.IntRange(min=0), metavar="N",
              help="only the newest N changes")
@click.option("--json", "as_json", is_flag=True, help="print JSON lines, one change a line")
@connection_options
@click.pass_context
def history(ctx: click.Context, key: str, since: Optional[int], limit: Optional[int],
            as_json: bool) -> None:
    """The changes kept for the context at KEY, oldest first: kind, version, time, writer,
    write id and the fields a patch touched. Its schema must keep history (schema push
    --history N)."""
    with open_store(ctx) as store:
        snap = store.get(key)
        if snap is None:
            fail(f"no context at {key!r}")
        info = store.get_schema(snap.schema)
        if info is not None and info.history == 0:
            fail(f"schema {snap.schema!r} keeps no history: register it with one, e.g. "
                 f"ctxlink schema push FILE.proto {info.message_type} --name {snap.schema} "
                 "--history 100 (changes made before are not kept)")
        changes = store.history(key, since_version=since, limit=limit)
    rows = [change_data(c, info) for c in changes]
    if as_json:
        import json

        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("version", "kind", "updated", "updated by", "write id", "fields"):
        table.add_column(name, justify="right" if name == "version" else "left")
    for row in rows:
        fields = "(whole)" if row["fields"] is None else ", ".join(row["fields"]) or "-"
        table.add_row(str(row["version"]), row["kind"], when(row["updated_ms"]),
                      row["updated_by"] or "-", row["write_id"] or "-", fields)
    out = console()
    out.print(table)
    kept = f"{len(rows)} change{'s' if len(rows) != 1 else ''}"
    if info is not None:
        kept += f" (the schema keeps the last {info.history})"
    out.print(kept)
