"""Commands on the deployment: ``stats`` and ``doctor``."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

import click

from ctxlink.cli._conn import connection_options, open_store
from ctxlink.cli._output import console, print_json
from ctxlink.cli.contexts import primaries, scan_contexts

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink import Store

__all__ = ["stats", "doctor"]

# INFO ctx fields that are settings or the protocol, not counters: never summed over nodes
_NOT_SUMMED = ("ctx_protocol", "ctx_max_", "ctx_unknown_fields", "_limit")


def _summable(name: str) -> bool:
    return not any(part in name for part in _NOT_SUMMED)


def _info_ctx(client: Any) -> dict[str, Any]:
    return {str(k): v for k, v in client.info("ctx").items()}


def _merged(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One INFO ctx for a cluster: counters summed over the primaries, the rest the first's."""
    out: dict[str, Any] = dict(infos[0]) if infos else {}
    for info in infos[1:]:
        for name, value in info.items():
            first = out.get(name)
            if (_summable(name) and type(value) is int and type(first) is int):
                out[name] = first + value
            else:
                out.setdefault(name, value)
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@connection_options
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Server statistics: INFO ctx on the module engine (summed over the primaries of a
    cluster); on the Lua engine, which keeps no counters, the schemas and contexts, counted with
    SCAN."""
    with open_store(ctx) as store:
        data: dict[str, Any] = {"engine": store.engine}
        if store.engine == "module":
            nodes = {name: _info_ctx(client) for name, client in primaries(store)}
            data["info"] = _merged(list(nodes.values()))
            if len(nodes) > 1:
                data["nodes"] = nodes
        else:
            by_schema = Counter(snap.schema for _, snap in scan_contexts(store))
            data["schemas"] = len(store.schemas())
            data["contexts"] = sum(by_schema.values())
            data["contexts_by_schema"] = dict(sorted(by_schema.items()))
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("engine: " + data["engine"])
    table.add_column("", justify="right")
    if "info" in data:
        for name, value in data["info"].items():
            table.add_row(name, str(value))
    else:
        table.add_row("schemas", str(data["schemas"]))
        table.add_row("contexts", str(data["contexts"]))
        for name, count in data["contexts_by_schema"].items():
            table.add_row(f"  of schema {name}", str(count))
    console().print(table)


class _Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, str]] = []

    def add(self, status: str, check: str, detail: str) -> None:
        self.checks.append({"check": check, "status": status, "detail": detail})

    @property
    def ok(self) -> bool:
        return all(c["status"] != "fail" for c in self.checks)


def _text(value: Any) -> Optional[str]:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_engine(store: "Store", report: _Report) -> None:
    from ctxlink._protocol import PROTOCOL

    if store.engine != "module":
        report.add("ok", "engine", f"lua: the scripts of this SDK (protocol {PROTOCOL})")
        return
    for name, client in primaries(store):
        try:
            proto = _info_ctx(client).get("ctx_protocol")
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report.add("fail", "engine", f"{name}: INFO ctx failed ({exc})")
            continue
        if proto is None:
            report.add("fail", "engine", f"{name}: the ctxlink module is not loaded")
        elif int(proto) < PROTOCOL:
            report.add("fail", "protocol", f"{name}: the module speaks protocol {proto}, this "
                       f"SDK {PROTOCOL}: upgrade the module")
        elif int(proto) > PROTOCOL:
            report.add("warn", "protocol", f"{name}: the module speaks protocol {proto}, this "
                       f"SDK {PROTOCOL}: upgrade the SDK")
        else:
            report.add("ok", "engine", f"{name}: module, protocol {proto}")


def _entry_problem(fields: list[Any]) -> Optional[str]:
    """Why a registry entry (type, fds, vfield, digest) is unusable, or None."""
    from ctxlink import SchemaError, _native

    type_name, fds, vfield, digest = fields
    if type_name is None or fds is None or vfield is None or digest is None:
        return "the entry is missing or lacks a field"
    tn, vf, raw = _text(type_name) or "", _text(vfield) or "", bytes(fds)
    if _native.digest(tn, vf, raw) != _text(digest):
        return "its digest does not match its content (edited by hand?)"
    try:
        _native.compile_schema(raw, tn, vf)
    except (SchemaError, MemoryError) as exc:
        return f"it does not compile ({exc})"
    return None


_BATCH = 2000


def _slot_owners(store: "Store") -> dict[str, list[int]]:
    """Node name -> the slots it serves as primary (cluster only)."""
    owners: dict[str, list[int]] = {}
    cache = store.client.nodes_manager.slots_cache
    for slot in range(16384):
        nodes = cache.get(slot)
        if nodes:
            owners.setdefault(nodes[0].name, []).append(slot)
    return owners


def _check_registry_standalone(store: "Store", report: _Report) -> None:
    client = store.client
    names = sorted(_text(n) or "" for n in client.smembers("__ctx:schemas"))
    entries = sorted(_text(k)[len("__ctx:schema:"):]  # type: ignore[index]
                     for k in client.scan_iter(match="__ctx:schema:*", count=1000))
    if not names and not entries:
        report.add("warn", "registry", "no schema is registered")
        return
    for orphan in sorted(set(entries) - set(names)):
        report.add("fail", "registry", f"schema {orphan!r} has an entry but is not in "
                   "__ctx:schemas (register it again)")
    bad = 0
    for name in names:
        fields = client.hmget(f"__ctx:schema:{name}", ["type", "fds", "vfield", "digest"])
        problem = _entry_problem(list(fields))
        if problem:
            bad += 1
            report.add("fail", "registry", f"schema {name!r}: {problem} (register it again)")
    if not bad:
        report.add("ok", "registry", f"{len(names)} schema(s), every entry intact: "
                   + ", ".join(names))


def _check_registry_cluster(store: "Store", report: _Report) -> None:
    from ctxlink._cluster import _slot_tag

    owners = _slot_owners(store)
    clients = dict(primaries(store))
    # pass 1: the index of every slot copy
    indexes: dict[int, set[str]] = {}
    for node, slots in owners.items():
        client = clients[node]
        for start in range(0, len(slots), _BATCH):
            chunk = slots[start:start + _BATCH]
            pipe = client.pipeline(transaction=False)
            for slot in chunk:
                pipe.smembers(f"__ctx:{{{_slot_tag(slot)}}}:schemas")
            for slot, members in zip(chunk, pipe.execute(), strict=True):
                indexes[slot] = {_text(m) or "" for m in members}
    names = sorted(set().union(*indexes.values())) if indexes else []
    if not names:
        report.add("warn", "registry", "no schema is registered")
        return
    served = sum(len(s) for s in owners.values())
    if served < 16384:
        report.add("fail", "registry", f"only {served} of 16384 slots are served by a primary")
    all_ok = True
    for name in names:
        # pass 2: every copy's (type, vfield, digest, compat); one copy per node checked whole
        seen: dict[int, tuple[Optional[str], ...]] = {}
        for node, slots in owners.items():
            client = clients[node]
            for start in range(0, len(slots), _BATCH):
                chunk = slots[start:start + _BATCH]
                pipe = client.pipeline(transaction=False)
                for slot in chunk:
                    pipe.hmget(f"__ctx:{{{_slot_tag(slot)}}}:schema:{name}",
                               ["type", "vfield", "digest", "compat"])
                for slot, got in zip(chunk, pipe.execute(), strict=True):
                    t, v, d, c = (_text(x) for x in got)
                    seen[slot] = (t, v, d, c or "WIRE_JSON") if d is not None else (None,)
            sample = f"__ctx:{{{_slot_tag(slots[0])}}}:schema:{name}" if slots else None
            if sample is not None:
                fields = client.hmget(sample, ["type", "fds", "vfield", "digest"])
                problem = _entry_problem(list(fields))
                if problem:
                    all_ok = False
                    report.add("fail", "registry", f"schema {name!r} on {node}: {problem}")
        versions = Counter(seen.values())
        reference, _ = versions.most_common(1)[0]
        missing = [slot for slot, fields in seen.items() if fields == (None,)]
        differ = [slot for slot, fields in seen.items()
                  if fields != (None,) and fields != reference]
        unindexed = [slot for slot, members in indexes.items()
                     if name not in members and seen.get(slot) != (None,)]
        for what, slots in (("missing", missing), ("different from the others", differ),
                            ("not in its slot's index", unindexed)):
            if slots:
                all_ok = False
                nodes = sorted({node for node, owned in owners.items() if set(owned) & set(slots)})
                report.add("fail", "registry", f"schema {name!r}: {len(slots)} of 16384 slot "
                           f"copies {what} (on {', '.join(nodes)}; e.g. slot {slots[0]}): "
                           "register it again (schema push) to repair them")
    if all_ok:
        report.add("ok", "registry", f"{len(names)} schema(s), identical in all 16384 slot "
                   f"copies on {len(owners)} primaries: " + ", ".join(names))


def _check_eviction(store: "Store", report: _Report) -> None:
    for name, client in primaries(store):
        try:
            config = client.config_get("maxmemory*")
        except Exception as exc:  # noqa: BLE001 - NOPERM and the like: reported
            report.add("warn", "eviction", f"{name}: cannot read maxmemory-policy ({exc})")
            continue
        policy = _text(config.get("maxmemory-policy")) or "?"
        maxmemory = int(_text(config.get("maxmemory")) or 0)
        if not policy.startswith("allkeys-"):
            report.add("ok", "eviction", f"{name}: maxmemory-policy {policy}")
            continue
        risk = (f"{name}: maxmemory-policy {policy} can evict contexts, their history "
                "streams and the schema registry (then every write of that schema fails with "
                "CTXSCHEMA unknown schema, and a history loses its entries or outlives its "
                "context); use noeviction or a volatile-* policy")
        if maxmemory:
            report.add("fail", "eviction", f"{risk} (maxmemory {maxmemory})")
        else:
            report.add("warn", "eviction", f"{risk} before setting maxmemory (now 0: no limit)")


# doctor looks at no more than this many history streams per primary, found with no more than
# HISTORY_SCANS calls of SCAN ... COUNT 1000 (a bounded sample, in SCAN's order)
HISTORY_SAMPLE = 1000
HISTORY_SCANS = 100


def _stream_context(stream: bytes, cluster: bool) -> bytes:
    """The context key of history stream ``__ctxh:<key>`` (``__ctxh:{<slot tag>}:<key>`` on a
    cluster: the tag is a decimal number)."""
    rest = stream[len(b"__ctxh:"):]
    if cluster and rest.startswith(b"{"):
        end = rest.find(b"}:")
        if end > 1 and rest[1:end].isdigit():
            return rest[end + 2:]
    return rest


def _check_history(store: "Store", report: _Report, cluster: bool) -> None:
    """History streams whose context is gone (a raw DEL or PEXPIRE of the context alone, or an
    eviction): a bounded sample, at most HISTORY_SAMPLE streams per primary found by at most
    HISTORY_SCANS calls of SCAN."""
    sampled = orphans = 0
    examples: list[str] = []
    bounded = False
    for _, client in primaries(store):
        streams: list[bytes] = []
        cursor, calls = 0, 0
        while True:
            cursor, found = client.scan(cursor, match="__ctxh:*", count=1000)
            calls += 1
            streams.extend(bytes(k) for k in found)
            if not cursor:
                break
            if len(streams) >= HISTORY_SAMPLE or calls == HISTORY_SCANS:
                bounded = True
                break
        if len(streams) > HISTORY_SAMPLE:
            streams, bounded = streams[:HISTORY_SAMPLE], True
        for start in range(0, len(streams), _BATCH):
            chunk = streams[start:start + _BATCH]
            pipe = client.pipeline(transaction=False)
            for stream in chunk:  # the context lives in its stream's slot: on this node
                pipe.exists(_stream_context(stream, cluster))
            for stream, found in zip(chunk, pipe.execute(), strict=True):
                if not found:
                    orphans += 1
                    if len(examples) < 3:
                        examples.append(stream.decode("utf-8", "backslashreplace"))
        sampled += len(streams)
    if not sampled:
        report.add("ok", "history", "no history stream")
        return
    how = (f"a sample of {sampled} (SCAN: at most {HISTORY_SAMPLE} streams and "
           f"{HISTORY_SCANS} calls per primary)" if bounded else f"all {sampled}")
    if not orphans:
        report.add("ok", "history", f"{how} history stream(s) checked: each has its context")
        return
    report.add("warn", "history", f"{orphans} of {how} history stream(s) checked have no context "
               f"(e.g. {', '.join(examples)}): a raw DEL, PEXPIRE or eviction of the context "
               "alone left them (store.touch and CTX.DEL keep both in step); DEL them, or let "
               "the next create of the context replace them")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@connection_options
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the deployment: engine and protocol, the schema registry on every primary and slot
    copy, history streams whose context is gone (a sample of at most 1000 per primary), and an
    eviction policy that could remove contexts, history or the registry. Exit status 1 when a
    check fails."""
    from ctxlink._client import is_cluster

    report = _Report()
    with open_store(ctx) as store:
        cluster = is_cluster(store.client)
        versions = []
        for name, client in primaries(store):
            info = client.info("server")
            versions.append(f"{name} redis {info.get('redis_version', '?')}")
        report.add("ok", "server", ("cluster: " if cluster else "") + ", ".join(versions))
        _check_engine(store, report)
        if cluster:
            _check_registry_cluster(store, report)
        else:
            _check_registry_standalone(store, report)
        try:
            _check_history(store, report, cluster)
        except Exception as exc:  # noqa: BLE001 - NOPERM (no grant on __ctxh:*) and the like
            report.add("warn", "history", f"cannot check the history streams ({exc})")
        _check_eviction(store, report)
    if as_json:
        print_json({"ok": report.ok, "checks": report.checks})
    else:
        from rich.table import Table
        from rich.text import Text

        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        table = Table(box=None, header_style="bold", pad_edge=False, show_header=False)
        table.add_column()
        table.add_column()
        table.add_column(overflow="fold")
        for c in report.checks:
            table.add_row(Text(c["status"], style=style[c["status"]]), c["check"], c["detail"])
        out = console()
        out.print(table)
        out.print("no problem found" if report.ok else "problems found")
    ctx.exit(0 if report.ok else 1)
