"""What the MCP tools do, on an asyncio Store, as plain JSON-ready results (nothing of the
``mcp`` SDK here: ctxlink.mcp.server wires these into tools and resources).

Every result is an object with ``ok``. A refusal is ``{"ok": false, "error": {"code", "message",
"field"?}}``, with these codes:

- ``CONFLICT``: another writer got there first; ``current`` holds the state now (``version``,
  ``incarnation``, ``message`` ...; ``null`` when there is no context) and ``changed`` the fields
  another writer changed (a field patch): re-read, re-decide, retry with ``current.version``;
- ``INVALID_MESSAGE``: the JSON does not parse, or the schema refuses a value (``field`` names
  it); ``CTXINVALID``, ``CTXFIELD``, ``CTXSCHEMA``, ``CTXTOOBIG``, ``CTXGONE``: the server's
  verdicts (``field`` when the text names one);
- ``KEY_REFUSED`` (outside ``--prefix``), ``READ_ONLY``, ``NOT_FOUND``, ``BAD_ARGUMENT``,
  ``NOT_AVAILABLE``, ``OUTCOME_UNKNOWN`` (the write may have landed: read before retrying),
  ``REPLY_TOO_LARGE``; and from the server wiring (ctxlink.mcp.server): ``BAD_ARGUMENT`` for an
  argument outside a tool's input schema, ``READ_ONLY`` for a write tool a read-only server does
  not offer, ``SERVER_ERROR`` for anything unexpected (a lost connection to Redis, say).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from google.protobuf.message import DecodeError

from ctxlink._exceptions import (
    ContextReplacedError,
    CtxError,
    FieldError,
    NotFoundError,
    OutcomeUnknownError,
    ServerError,
)
from ctxlink._fields import FieldNameError
from ctxlink._registry import SchemaInfo
from ctxlink._types import CasResult, Snapshot
from ctxlink.mcp._json import (
    MessageInputError,
    class_of,
    describe,
    is_list,
    message_json,
    parse_message,
    top_level_names,
)
from ctxlink.mcp._ops import append_items, op_patch

__all__ = ["Tools", "Policy", "WAIT_MAX_S", "DEFAULT_MAX_REPLY_BYTES", "RESERVED_PREFIXES"]

WAIT_MAX_S = 60.0
DEFAULT_MAX_REPLY_BYTES = 262144
#: the most contexts the resource list names
LIST_MAX = 100
#: never contexts: the registry, history streams and change feeds
RESERVED_PREFIXES = ("__ctx:", "__ctxh:", "__ctxf:")

Result = dict[str, Any]


@dataclass
class Policy:
    """What the server lets a model do: keys under ``prefixes`` (all keys when empty), writes
    unless ``read_only``, replies of at most ``max_reply_bytes`` (JSON, UTF-8)."""

    prefixes: Sequence[str] = field(default_factory=tuple)
    read_only: bool = False
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    by: Optional[str] = "mcp"


def error(code: str, message: str, field: str = "", **extra: Any) -> Result:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"ok": False, "error": err, **extra}


_FIELD_IN_TEXT = re.compile(r"field '([^']+)'")


def server_error(exc: ServerError) -> Result:
    text = " ".join(str(exc).split())
    code = exc.code or text.split(" ", 1)[0]
    m = _FIELD_IN_TEXT.search(text)
    return error(code, text, m.group(1) if m else "")


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def dumps(result: Result) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


class Tools:
    """The tools on one asyncio Store (``ctxlink.aio``)."""

    def __init__(self, store: Any, policy: Policy) -> None:
        self.store = store
        self.policy = policy

    # -- guards and helpers ----------------------------------------------------------------
    def refused(self, key: Any, write: bool = False) -> Optional[Result]:
        if not isinstance(key, str) or not key:
            return error("BAD_ARGUMENT", "key must be a non-empty string", "key")
        if key.startswith(RESERVED_PREFIXES):
            return error("KEY_REFUSED", f"{key!r} is a ctxlink internal key, not a context",
                         "key")
        prefixes = self.policy.prefixes
        if prefixes and not any(key.startswith(p) for p in prefixes):
            return error("KEY_REFUSED", f"key {key!r} is outside the keys this server allows "
                         f"(prefixes: {', '.join(prefixes)})", "key",
                         allowed_prefixes=list(prefixes))
        if write and self.policy.read_only:
            return error("READ_ONLY", "this server is read-only: it does not write contexts")
        return None

    async def _info(self, schema: str) -> Optional[SchemaInfo]:
        info: Optional[SchemaInfo] = await self.store.get_schema(schema)
        return info

    async def _state(self, key: str, snap: Optional[Snapshot]) -> Optional[Result]:
        if snap is None:
            return None
        info = await self._info(snap.schema)
        out: Result = {
            "version": snap.version, "incarnation": snap.incarnation, "schema": snap.schema,
            "updated_by": snap.updated_by, "updated_ms": snap.updated_ms,
        }
        try:
            out["message"] = message_json(info, snap.raw)
        except DecodeError:  # written before a forced, incompatible schema change
            out["message"] = None
        if info is None:
            out["note"] = f"schema {snap.schema!r} is not registered: the message is not decoded"
        return out

    async def _conflict(self, key: str, current: Optional[Snapshot],
                        changed: Sequence[str] = (), why: str = "") -> Result:
        state = await self._state(key, current)
        now = current.version if current is not None else 0
        if why:
            text = why
        elif changed:
            text = (f"conflict: another writer changed {', '.join(changed)} of {key!r} since "
                    f"the version this write was based on (now at version {now}); read "
                    "current, decide again, and retry with current.version")
        else:
            text = (f"conflict: the context at {key!r} is at version {now}, not the one this "
                    "write was based on; read current, decide again, and retry with "
                    "current.version")
        out = error("CONFLICT", text, current=state, changed=list(changed))
        return out

    async def _vfield(self, schema: str, info: SchemaInfo) -> str:
        from ctxlink._write import _vfield
        from ctxlink.aio import _run

        desc = class_of(info).DESCRIPTOR
        name: str = await _run(self.store.client, _vfield(self.store._st, schema, desc))
        return name

    # -- tools -----------------------------------------------------------------------------
    async def get_context(self, key: str) -> Result:
        bad = self.refused(key)
        if bad:
            return bad
        try:
            snap = await self.store.get(key)
        except ServerError as exc:
            return server_error(exc)
        state = await self._state(key, snap)
        if state is None:
            return {"ok": True, "key": key, "exists": False, "version": 0,
                    "hint": "no context here: write_context with expected_version 0 and a "
                    "schema creates it"}
        return {"ok": True, "key": key, "exists": True, **state}

    async def write_context(self, key: str, expected_version: int, message: Any,
                            schema: Optional[str] = None,
                            incarnation: Optional[str] = None) -> Result:
        bad = self.refused(key, write=True)
        if bad:
            return bad
        try:
            name = schema
            if name is None:
                if expected_version == 0:
                    return error("BAD_ARGUMENT", "creating a context (expected_version 0) "
                                 "needs schema: describe_schema lists the registered ones",
                                 "schema")
                snap = await self.store.get(key)
                if snap is None:
                    return await self._conflict(key, None)
                name = snap.schema
            info = await self._info(name)
            if info is None:
                return error("CTXSCHEMA", f"unknown schema {name!r}: describe_schema lists the "
                             "registered ones", "schema")
            msg = parse_message(info, message)
            # encoded here (partially: a missing proto2 required field is the server's verdict,
            # CTXINVALID naming it), with the version field the schema names set to the next
            # version, so that the server is the one judge of the payload
            vfield = await self._vfield(name, info)
            if isinstance(expected_version, int) and expected_version >= 0:
                setattr(msg, vfield, expected_version + 1)
            result: CasResult = await self.store.cas(
                key, expected_version, msg.SerializePartialToString(), schema=schema,
                by=self.policy.by, incarnation=incarnation or None)
        except MessageInputError as exc:
            return error("INVALID_MESSAGE", str(exc), exc.field)
        except ContextReplacedError as exc:
            return await self._conflict(key, await self.store.get(key), why=str(exc))
        except OutcomeUnknownError as exc:
            return error("OUTCOME_UNKNOWN", str(exc))
        except ServerError as exc:
            return server_error(exc)
        except CtxError as exc:
            return error("BAD_ARGUMENT", str(exc))
        if not result.ok:
            return await self._conflict(key, result.current)
        return {"ok": True, "key": key, "version": result.version, "replayed": result.replayed}

    async def update_fields(self, key: str, base_version: int, fields: Any,
                            reads: Sequence[str] = (),
                            incarnation: Optional[str] = None) -> Result:
        bad = self.refused(key, write=True)
        if bad:
            return bad
        from ctxlink.aio import _run

        try:
            found = await self._existing(key)
            if isinstance(found, dict):
                return found
            snap, info = found
            msg = parse_message(info, fields, "fields")
            if isinstance(fields, str):
                fields = json.loads(fields)
            names = top_level_names(info, fields)
            if not names:
                return error("BAD_ARGUMENT", "fields is empty: name at least one field",
                             "fields")
            vfield = await self._vfield(snap.schema, info)
            if vfield in names:
                return error("INVALID_MESSAGE", f"{vfield!r} is the context version: the "
                             "server sets it, leave it out of fields", vfield)
            inc = incarnation or (snap.incarnation if base_version == snap.version else "")
            outcome = await _run(self.store.client, op_patch(
                self.store._st, key, base_version, msg, names, list(reads), vfield, None,
                self.policy.by, inc or None))
        except MessageInputError as exc:
            return error("INVALID_MESSAGE", str(exc), exc.field)
        except FieldNameError as exc:
            m = re.search(r"'([^']+)'", str(exc))
            return error("CTXFIELD", str(exc), m.group(1) if m else "reads")
        except ContextReplacedError as exc:
            return await self._conflict(key, await self.store.get(key), why=str(exc))
        except OutcomeUnknownError as exc:
            return error("OUTCOME_UNKNOWN", str(exc))
        except FieldError as exc:
            return server_error(exc)
        except ServerError as exc:
            return server_error(exc)
        except CtxError as exc:
            return error("BAD_ARGUMENT", str(exc))
        res = outcome.result
        if not res.ok:
            return await self._conflict(key, res.current, res.changed)
        return {"ok": True, "key": key, "version": res.version, "replayed": res.replayed,
                "fields": names}

    async def _existing(self, key: str) -> Union[Result, tuple[Any, SchemaInfo]]:
        """The context at ``key`` and its schema's entry, or the refusal a tool answers (no
        context, or an unregistered schema)."""
        snap = await self.store.get(key)
        if snap is None:
            return error("NOT_FOUND", f"no context at {key!r}: create it with write_context "
                         "(expected_version 0)", "key")
        info = await self._info(snap.schema)
        if info is None:
            return error("CTXSCHEMA", f"schema {snap.schema!r} is not registered", "schema")
        return snap, info

    async def append_items(self, key: str, field: str, items: Any,
                           reads: Sequence[str] = (),
                           base_version: Optional[int] = None) -> Result:
        bad = self.refused(key, write=True)
        if bad:
            return bad
        if not isinstance(items, list) or not items:
            return error("BAD_ARGUMENT", "items must be a non-empty list", "items")
        try:
            found = await self._existing(key)
            if isinstance(found, dict):
                return found
            snap, info = found
            desc = class_of(info).DESCRIPTOR
            f = desc.fields_by_name.get(field)
            if f is None or not is_list(f):
                names = ", ".join(x.name for x in desc.fields if is_list(x))
                return error("CTXFIELD", f"{desc.full_name} has no repeated top-level field "
                             f"{field!r} (repeated fields: {names or 'none'})", "field")
            # the elements, parsed as the field's element type (a message holding only them)
            try:
                elements = parse_message(info, {field: items}, "items")
            except MessageInputError as exc:
                where = exc.field
                if where == field or where.startswith(field + "."):
                    where = "items" + where[len(field):]
                return error("INVALID_MESSAGE", str(exc), where or "items")
            result = await append_items(self.store, key, elements, field, list(reads),
                                        base_version, self.policy.by)
        except FieldNameError as exc:
            m = re.search(r"'([^']+)'", str(exc))
            return error("CTXFIELD", str(exc), m.group(1) if m else "reads")
        except OutcomeUnknownError as exc:
            return error("OUTCOME_UNKNOWN", str(exc))
        except ServerError as exc:
            return server_error(exc)
        except CtxError as exc:
            return error("BAD_ARGUMENT", str(exc))
        if not result.ok:
            # field numbers (as the SDK may report them) -> names
            by_number = {str(x.number): x.name for x in desc.fields}
            changed = [by_number.get(str(n), str(n)) for n in result.changed]
            return await self._conflict(key, result.current, changed)
        return {"ok": True, "key": key, "version": result.version, "replayed": result.replayed,
                "appended": len(items)}

    async def context_history(self, key: str, since_version: Optional[int] = None,
                              limit: Optional[int] = None) -> Result:
        bad = self.refused(key)
        if bad:
            return bad
        try:
            snap = await self.store.get(key)
            if snap is None:
                return error("NOT_FOUND", f"no context at {key!r}", "key")
            info = await self._info(snap.schema)
            if info is not None and info.history == 0:
                return error("NOT_AVAILABLE", f"schema {snap.schema!r} keeps no history (an "
                             "administrator registers it with history=N)")
            changes = await self.store.history(key, since_version=since_version, limit=limit)
        except ServerError as exc:
            return server_error(exc)
        except CtxError as exc:
            return error("BAD_ARGUMENT", str(exc))
        rows = []
        for c in changes:
            row: Result = {"version": c.version, "kind": c.kind, "updated_ms": c.updated_ms,
                           "updated_by": c.updated_by, "write_id": c.write_id,
                           "fields": list(c.fields) if c.fields is not None else None}
            if c.payload is not None:
                try:
                    row["message"] = message_json(info, c.payload)
                except DecodeError:  # before a forced, incompatible schema change
                    row["message"] = None
            if c.payload_omitted:
                row["payload_omitted"] = True
            rows.append(row)
        return {"ok": True, "key": key, "version": snap.version, "changes": rows}

    async def wait_for_change(self, key: str, after_version: int, timeout_s: float) -> Result:
        bad = self.refused(key)
        if bad:
            return bad
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= WAIT_MAX_S:
            return error("BAD_ARGUMENT", f"timeout_s must be above 0 and at most "
                         f"{WAIT_MAX_S:g} seconds", "timeout_s")
        try:
            snap = await self.store.wait(key, after_version, float(timeout_s))
        except NotFoundError as exc:
            return error("NOT_FOUND", str(exc), "key")
        except ServerError as exc:
            return server_error(exc)
        except CtxError as exc:
            return error("BAD_ARGUMENT", str(exc))
        if snap is None:
            return {"ok": True, "key": key, "changed": False, "version": after_version,
                    "hint": f"no change after version {after_version} within {timeout_s:g} s"}
        state = await self._state(key, snap)
        return {"ok": True, "key": key, "changed": True, **(state or {})}

    async def describe_schema(self, schema: Optional[str] = None,
                              key: Optional[str] = None) -> Result:
        try:
            if key is not None:
                bad = self.refused(key)
                if bad:
                    return bad
                snap = await self.store.get(key)
                if snap is None:
                    return error("NOT_FOUND", f"no context at {key!r}", "key")
                schema = snap.schema
            if schema is None:
                names = await self.store.schemas()
                rows = []
                for name in names:
                    info = await self._info(name)
                    if info is not None:
                        rows.append({"schema": name, "message_type": info.message_type,
                                     "revision": info.revision})
                return {"ok": True, "schemas": rows,
                        "hint": "describe_schema(schema=NAME) gives a schema's fields"}
            info = await self._info(schema)
            if info is None:
                return error("CTXSCHEMA", f"unknown schema {schema!r}", "schema")
            vfield = await self._vfield(schema, info)
        except ServerError as exc:
            return server_error(exc)
        return {"ok": True, **describe(info, vfield)}

    async def context_keys(self, limit: int = LIST_MAX) -> list[str]:
        """Up to ``limit`` keys of contexts this server allows (``SCAN`` under each prefix,
        every primary of a cluster), sorted: for the resource list. Keys that are not contexts
        (another type) and the reserved keys are left out."""
        client = self.store.client
        patterns = [_glob_escape(p) + "*" for p in self.policy.prefixes] or ["*"]
        found: set[str] = set()
        for pattern in patterns:
            async for raw in client.scan_iter(match=pattern, count=1000):
                key = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
                if key.startswith(RESERVED_PREFIXES) or self.refused(key) is not None:
                    continue
                found.add(key)
                if len(found) >= limit * 2:
                    break
        keys = sorted(found)
        kinds = [await client.type(k) for k in keys[: limit * 2]]
        out = [k for k, t in zip(keys, kinds, strict=False)
               if (t.decode() if isinstance(t, bytes) else t) in ("string", "hash")]
        return out[:limit]

    # -- the reply cap ---------------------------------------------------------------------
    def capped(self, result: Result) -> tuple[Result, str]:
        """(result, its JSON) within ``max_reply_bytes``: a history loses its oldest changes
        (``truncated``), anything else becomes REPLY_TOO_LARGE."""
        text = dumps(result)
        cap = self.policy.max_reply_bytes
        if len(text.encode()) <= cap:
            return result, text
        changes = result.get("changes")
        if isinstance(changes, list):
            kept = list(changes)
            while kept:
                kept.pop(0)
                trial = {**result, "changes": kept, "truncated": True,
                         "hint": "older changes left out for the reply cap: ask with "
                         "since_version or a smaller limit"}
                text = dumps(trial)
                if len(text.encode()) <= cap:
                    return trial, text
        size = len(dumps(result).encode())
        small = error("REPLY_TOO_LARGE", f"the reply would be {size} bytes, over this server's "
                      f"cap of {cap} bytes (--max-reply-bytes)", size=size, cap=cap)
        return small, dumps(small)
