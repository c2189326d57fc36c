"""``ctxlink schema push | ls | show | check``: the schema registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import click

from ctxlink._history import HISTORY_MAX
from ctxlink._window import WINDOW_DEFAULT, WINDOW_MAX
from ctxlink.cli._conn import connection_options, open_store
from ctxlink.cli._output import fail, print_json

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Store

__all__ = ["schema"]

_COMPAT = click.Choice(["WIRE_JSON", "WIRE"], case_sensitive=False)


@click.group()
@connection_options
def schema() -> None:
    """The schema registry: register, list, show, check a change."""


def _source(args: Sequence[str], descriptor_set: Optional[str],
            includes: Sequence[str]) -> tuple[str, bytes]:
    """(message type, descriptor set) from ``FILE.proto MESSAGE`` or ``--descriptor-set FILE
    MESSAGE``."""
    from ctxlink.cli._proto import compile_proto, read_descriptor_set

    if descriptor_set is not None:
        if len(args) != 1:
            raise click.UsageError("with --descriptor-set give MESSAGE only (the full name, "
                                   "e.g. pkg.Order)")
        return args[0], read_descriptor_set(descriptor_set)
    if len(args) != 2:
        raise click.UsageError("give FILE.proto MESSAGE (the full name, e.g. pkg.Order), or "
                               "--descriptor-set FILE MESSAGE")
    file, message = args
    if not file.endswith(".proto") and message.endswith(".proto"):
        file, message = message, file
    import os

    if not os.path.isfile(file):
        raise click.BadParameter(f"{file!r} is not a file", param_hint="FILE.proto")
    return message, compile_proto(file, includes)


def _source_options(f: Any) -> Any:
    f = click.option("--descriptor-set", "descriptor_set", metavar="FILE",
                     type=click.Path(exists=True, dir_okay=False),
                     help="a compiled FileDescriptorSet (protoc --include_imports "
                     "--descriptor_set_out) instead of FILE.proto")(f)
    f = click.option("-I", "--proto-path", "includes", multiple=True, metavar="DIR",
                     type=click.Path(exists=True, file_okay=False),
                     help="import path for protoc (repeatable; default: the file's directory)")(f)
    f = click.option("--version-field", metavar="FIELD",
                     help="the field that holds the context version (default: version)")(f)
    f = click.option("--name", metavar="NAME", help="schema name (default: MESSAGE)")(f)
    return click.argument("args", nargs=-1, required=True, metavar="FILE.proto MESSAGE")(f)


@schema.command("push")
@_source_options
@click.option("--force", is_flag=True, help="accept a change that breaks the compatibility rules "
              "(contexts then need `migrate`)")
@click.option("--compat", type=_COMPAT, help="compatibility category (default: the entry's, "
              "WIRE_JSON for a new name)")
@click.option("--history", type=click.IntRange(0, HISTORY_MAX), metavar="N",
              help=f"keep each context's last N changes (0 to {HISTORY_MAX}, 0 = off; default: "
              "the entry's, off for a new name): `ctxlink history KEY`")
@click.option("--history-payloads/--no-history-payloads", "history_payloads", default=None,
              help="history entries keep the payload after each change, up to 64 KiB "
              "(default: the entry's, off for a new name)")
@click.option("--feed", type=click.IntRange(min=0), metavar="N", help="keep the schema's last N "
              "changes in its change feed (0: off; default: the entry's; `ctxlink watch --schema`)")
@click.option("--window", type=click.IntRange(1, WINDOW_MAX), metavar="N",
              help=f"write records each context keeps (1 to {WINDOW_MAX}; default: the entry's, "
              f"{WINDOW_DEFAULT} for a new name): a lost reply is settled while fewer writes "
              "happened since")
@connection_options
@click.pass_context
def push(ctx: click.Context, args: tuple[str, ...], name: Optional[str],
         version_field: Optional[str], includes: tuple[str, ...], descriptor_set: Optional[str],
         force: bool, compat: Optional[str], history: Optional[int],
         history_payloads: Optional[bool], feed: Optional[int], window: Optional[int]) -> None:
    """Register (or re-register) the message MESSAGE of FILE.proto as a schema. Other settings
    (--compat, --history, --history-payloads, --feed, --window) for the same definition are a
    new revision."""
    message, fds = _source(args, descriptor_set, includes)
    name = name or message
    with open_store(ctx) as store:
        revision = store.register_schema(name, fds, message_type=message, force=force,
                                         version_field=version_field,
                                         compat=compat.upper() if compat else None,
                                         history=history, history_payloads=history_payloads,
                                         feed=feed, window=window)
        info = store.get_schema(name)
    settings = ""
    if info is not None and info.history:
        settings = f", history {info.history}" + (" with payloads" if info.history_payloads
                                                  else "")
    if info is not None and info.feed:
        settings += f", feed {info.feed}"
    if info is not None and info.window != WINDOW_DEFAULT:
        settings += f", window {info.window}"
    click.echo(f"{name}: {message}, revision {revision}{settings}")


def _entry_fields(store: "Store", name: str) -> list[Any]:
    """The registry entry's fields (type, fds, vfield, revision, digest, compat), from the copy
    the SDK reads first (one per slot on a cluster: the first slot's)."""
    from ctxlink._cluster import registry_copies
    from ctxlink._schema_rules import _PREV_FIELDS

    entry = registry_copies(store._st, name)[0][0]
    return list(store.client.hmget(entry, list(_PREV_FIELDS)))


def _text(value: Any) -> Optional[str]:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@schema.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
@click.pass_context
def ls_schemas(ctx: click.Context, as_json: bool) -> None:
    """List the registered schemas."""
    rows: list[dict[str, Any]] = []
    with open_store(ctx) as store:
        for name in store.schemas():
            info = store.get_schema(name)
            if info is not None:
                rows.append({"name": name, "message_type": info.message_type,
                             "revision": info.revision})
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    from ctxlink.cli._output import console

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("name")
    table.add_column("message type")
    table.add_column("revision", justify="right")
    for row in rows:
        table.add_row(row["name"], row["message_type"], str(row["revision"]))
    console().print(table)


@schema.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@connection_options
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a registered schema: message type, revision, settings and top-level fields."""
    from ctxlink.cli._proto import field_rows

    with open_store(ctx) as store:
        info = store.get_schema(name)
        if info is None:
            fail(f"CTXSCHEMA unknown schema {name!r}")
        fields = _entry_fields(store, name)
    data: dict[str, Any] = {
        "name": name,
        "message_type": info.message_type,
        "revision": info.revision,
        "version_field": _text(fields[2]) or "version",
        "compat": info.compat,
        "history": info.history,
        "history_payloads": info.history_payloads,
        "window": info.window,
        "digest": _text(fields[4]) or "",
        "descriptor_set_bytes": len(info.descriptor_set),
        "fields": field_rows(info.descriptor_set, info.message_type),
    }
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    from ctxlink.cli._output import console

    out = console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    history = (f"the last {info.history} changes of each context"
               + (", with payloads" if info.history_payloads else ", without payloads")
               if info.history else "off")
    for label, value in (("name", name), ("message type", info.message_type),
                         ("revision", str(info.revision)),
                         ("version field", data["version_field"]), ("compat", info.compat),
                         ("history", history),
                         ("window", f"the last {info.window} write ids of each context"),
                         ("digest", data["digest"]),
                         ("descriptor set", f"{len(info.descriptor_set)} bytes")):
        head.add_row(label, value)
    out.print(head)
    table = Table(header_style="bold", box=None, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("field")
    table.add_column("type")
    for row in data["fields"]:
        kind = ("repeated " if row["repeated"] else "") + row["type"]
        vf = " (context version)" if row["name"] == data["version_field"] else ""
        table.add_row(str(row["number"]), row["name"] + vf, kind)
    out.print(table)


@schema.command("check")
@_source_options
@click.option("--compat", type=_COMPAT, help="judge under this category (default: the entry's)")
@click.option("--json", "as_json", is_flag=True, help="print JSON: accepted, reason")
@connection_options
@click.pass_context
def check(ctx: click.Context, args: tuple[str, ...], name: Optional[str],
          version_field: Optional[str], includes: tuple[str, ...], descriptor_set: Optional[str],
          compat: Optional[str], as_json: bool) -> None:
    """Would `schema push` of this definition be accepted (without --force)? Exit status 0 when
    it would, 1 (with the reason) when it would be refused. Nothing is written."""
    from ctxlink import SchemaError, _native
    from ctxlink._schema_rules import _previous, _revision, _stored_compat

    message, fds = _source(args, descriptor_set, includes)
    name = name or message
    vfield = version_field or "version"
    result: dict[str, Any] = {"name": name, "message_type": message, "accepted": False,
                              "reason": "", "compat": None, "revision": None}
    with open_store(ctx) as store:
        try:
            _native.check_name(name)
            nxt = _native.compile_schema(fds, message, vfield)
            if store.engine == "lua":  # as register_schema: a plan Lua cannot load is refused
                from ctxlink._lua import check_plan
                from ctxlink._sync import _run

                _run(store.client, check_plan(store._st, name, nxt,
                                              _native.digest(message, vfield, fds)))
            fields = _entry_fields(store, name)
            exists = any(v is not None for v in fields)
            mode = compat.upper() if compat else (
                _stored_compat(fields[5]) if exists else _native.DEFAULT_COMPAT)
            result["compat"] = mode
            if not exists:
                result.update(accepted=True, revision=1, reason="a new schema")
            else:
                digest = _native.digest(message, vfield, fds)
                current = _revision(fields[3])
                if _text(fields[4]) == digest and _stored_compat(fields[5]) == mode:
                    result.update(accepted=True, revision=current,
                                  reason="the same definition: nothing changes")
                else:
                    _native.check_change(_previous(fields), nxt, mode, False)
                    result.update(accepted=True, revision=current + 1,
                                  reason=f"compatible with revision {current} under {mode}")
        except SchemaError as exc:
            result["reason"] = str(exc)
    if as_json:
        print_json(result)
    elif result["accepted"]:
        click.echo(f"accepted: {name} would be revision {result['revision']} "
                   f"({result['reason']})")
    else:
        click.echo(f"refused: {result['reason']}")
    ctx.exit(0 if result["accepted"] else 1)
