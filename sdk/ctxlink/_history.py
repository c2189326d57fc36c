"""Per-context history (docs/PROTOCOL.md, "History"): :class:`Change`, the sans-I/O ``history``
operation, the schema settings' argument checks, and what the Lua engine's writes need to pass
the history stream as ``KEYS[2]``.

A schema registered with ``history=n`` keeps the last ``n`` changes of each of its contexts in a
Redis stream next to the context: ``__ctxh:<key>``, on a cluster ``__ctxh:{<slot tag>}:<key>``
(the tag of the key's own slot, so the stream always lives in the context's slot). Entry ids are
``<version>-0``; the fields are ``k`` kind, ``i`` incarnation, ``t`` updated_ms, ``b`` writer,
``w`` write id, ``f`` the field numbers a patch touched, ``p`` the payload (kept with
``history_payloads=True``, at most 64 KiB) or ``o`` the size of a payload left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Optional, Union

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from ctxlink._cluster import registry_key_for, registry_tag
from ctxlink._exceptions import ArgumentError, SchemaError, WrongTypeError
from ctxlink._instr import Cmd, Op
from ctxlink._protocol import _bytes, _text, wait_channel

if TYPE_CHECKING:
    from ctxlink._state import State

__all__ = [
    "Change",
    "HISTORY_MAX",
    "HISTORY_PAYLOAD_MAX",
    "check_history_args",
    "history_key",
    "history_keys",
    "lua_delete",
    "note_history",
    "op_history",
]


def _limits() -> tuple[int, int]:
    """The C core's limits (module/core/ctx_core.h), through the cffi extension."""
    try:
        from ctxlink._ctxcore import lib

        return int(lib.CTX_HISTORY_MAX), int(lib.CTX_HISTORY_PAYLOAD_MAX)
    except (ImportError, AttributeError):  # an extension built before history: the same values
        return 1000, 65536


HISTORY_MAX, HISTORY_PAYLOAD_MAX = _limits()


@dataclass(frozen=True)
class Change:
    """One change of a context, as its history keeps it (``store.history``).

    ``kind``: ``"create"``, ``"update"`` (a whole-context write, ``cas``/``update``) or
    ``"patch"`` (``update(reads=...)``), and in a schema's change feed (``store.changes``) also
    ``"delete"`` (the deleted version, no writer); ``fields`` the top-level field names a patch
    touched (``None`` for whole-context writes; a number the schema no longer names is given as its
    decimal text); ``write_id`` ``""`` when the write carried none; ``incarnation`` ``""`` until
    protocol 3; ``payload`` the payload after the change when the schema keeps payloads
    (``history_payloads=True``) and it was at most 64 KiB, else None (``payload_omitted`` True
    when it was left out for its size)."""

    key: str
    incarnation: str
    kind: str
    version: int
    updated_ms: int
    updated_by: str
    write_id: str
    fields: Optional[tuple[str, ...]]
    payload: Optional[bytes]
    payload_omitted: bool = False


def check_history_args(history: Any, history_payloads: Any) -> tuple[Optional[int], Optional[bool]]:
    """``register_schema(history=, history_payloads=)``: None (keep the entry's setting) or an
    int 0..HISTORY_MAX / a bool; ArgumentError otherwise, before anything is sent."""
    if history is not None and (type(history) is not int or not 0 <= history <= HISTORY_MAX):
        raise ArgumentError(
            f"history must be an int from 0 (off) to {HISTORY_MAX} (changes kept per context), "
            f"or None to keep the schema's setting; got {history!r}"
        )
    if history_payloads is not None and type(history_payloads) is not bool:
        raise ArgumentError(
            "history_payloads must be True, False or None (keep the schema's setting); got "
            f"{history_payloads!r}"
        )
    return history, history_payloads


def history_key(st: "State", key: Any) -> Union[str, bytes]:
    """The history stream of context ``key``."""
    tag = registry_tag(st, key)
    prefix = f"__ctxh:{{{tag}}}:" if tag else "__ctxh:"
    if isinstance(key, str):
        return prefix + key
    return prefix.encode() + bytes(key)


def note_history(st: "State", name: str, value: Any, feed: Any = None) -> None:
    """Remembers schema ``name``'s ``history`` (and ``feed``) setting as read from its registry
    entry (Lua engine: a write passes the stream as ``KEYS[2]`` while it is on, the feed last)."""
    try:
        n = int(_text(value)) if value is not None else 0
    except ValueError:
        n = 0
    st.history_by_schema[name] = n if 0 < n <= HISTORY_MAX else 0
    try:
        f = int(_text(feed)) if feed is not None else 0
    except ValueError:
        f = 0
    st.feed_by_schema[name] = f if f > 0 else 0


def history_keys(
    st: "State", name: Optional[str], key: Any, feed: bool = True
) -> tuple[Any, ...]:
    """The extra ``KEYS`` of a Lua-engine write to ``key`` (schema ``name``): the history stream
    while the schema keeps history, then (with ``feed``) the schema's change feed while it has
    one (last; ctxlink._feed), else none (an agent without a grant on ``__ctxh:*`` /
    ``__ctxf:*`` can write schemas without them)."""
    keys: tuple[Any, ...] = ()
    if name and st.history_by_schema.get(name, 0) > 0:
        keys = (history_key(st, key),)
    if feed and name and not st.cluster and st.feed_by_schema.get(name, 0) > 0:
        keys += ("__ctxf:" + name,)
    return keys


_STALE = "CTXSCHEMA stale "


def lua_delete(st: "State", key: Any, expected: int, wid: Any, inc: str = "") -> Op[Any]:
    """del.lua: the history stream goes with the context (:func:`_with_history`)."""
    tag = registry_tag(st, key)
    channel, shard = wait_channel(key)
    return (yield from _with_history(
        st, "del", key, lambda: (expected, wid, inc, tag, channel, "1" if shard else "0")))


def lua_touch(st: "State", key: Any, ms: int) -> Op[Any]:
    """touch.lua: the history stream gets the context's new expiry (:func:`_with_history`)."""
    tag = registry_tag(st, key)
    return (yield from _with_history(st, "touch", key, lambda: (ms, tag), feed=False))


def _with_history(st: "State", script: str, key: Any, argv: Any, feed: bool = True) -> Op[Any]:
    """``script`` once (as a :class:`Write`), with the history stream as ``KEYS[2]`` when the
    context's schema keeps history (and its change feed last, with ``feed``); a ``stale``
    answer (the script found one on: nothing was written) is re-sent once with them, as the
    registry entry now says (both, when it cannot be read)."""
    from ctxlink._lua import _evalsha

    name = st.key_schema.get(key)
    for attempt in range(2):
        keys = (key, *history_keys(st, name, key, feed))
        try:
            return (yield from _evalsha(st, script, keys, argv(), write=True))
        except SchemaError as exc:
            text = str(exc)
            if attempt or not text.startswith(_STALE):
                raise
            name = text[len(_STALE):]
            try:
                got = yield Cmd(("HMGET", registry_key_for(st, name, key), "history", "feed"))
                note_history(st, name, got[0], got[1])
            except Exception:  # no read grant on __ctx:*: pass both
                st.history_by_schema[name] = max(1, st.history_by_schema.get(name, 0))
                st.feed_by_schema[name] = max(1, st.feed_by_schema.get(name, 0))
    raise AssertionError("unreachable")


def _check_bound(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ArgumentError(f"{what} must be None or an int >= 0, not {value!r}")
    return value


@lru_cache(maxsize=32)
def _field_names(type_name: str, fds: bytes) -> dict[int, str]:
    """Top-level field number -> name of message ``type_name`` in descriptor set ``fds``."""
    try:
        parsed = descriptor_pb2.FileDescriptorSet.FromString(fds)
    except DecodeError:
        return {}
    for f in parsed.file:
        prefix = f.package + "." if f.package else ""
        stack = [(prefix + m.name, m) for m in f.message_type]
        while stack:
            full, msg = stack.pop()
            if full == type_name:
                return {fld.number: fld.name for fld in msg.field}
            stack.extend((full + "." + n.name, n) for n in msg.nested_type)
    return {}


def _names_for(st: "State", key: Any) -> Op[dict[int, str]]:
    """The field names of ``key``'s schema (its registry entry, read as data); {} when unknown."""
    from ctxlink._write import op_get

    name = st.key_schema.get(key)
    if name is None:
        snap = yield from op_get(st, key)
        name = snap.schema if snap is not None else None
    if not name:
        return {}
    try:
        got = yield Cmd(("HMGET", registry_key_for(st, name, key), "type", "fds"))
    except Exception:  # no read grant on __ctx:*, WRONGTYPE ...: numbers it is
        return {}
    if not got or got[0] is None or got[1] is None:
        return {}
    return _field_names(_text(got[0]), _bytes(got[1]))


def _entry_fields(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw or [])
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _parse(key_text: str, entry: Any, names: dict[int, str]) -> Change:
    eid, raw = entry[0], entry[1]
    fields = _entry_fields(raw)
    # a change feed entry (ctxlink._feed) carries its version and key; a history entry's id is
    # `<version>-0`
    v = fields.get("v")
    version = int(_text(v)) if v is not None else int(_text(eid).split("-", 1)[0])
    if "key" in fields:
        key_text = _text(fields["key"])
    f = fields.get("f")
    touched: Optional[tuple[str, ...]] = None
    if f is not None:
        numbers = sorted(int(n) for n in _text(f).split())
        touched = tuple(names.get(n, str(n)) for n in numbers)
    payload = fields.get("p")
    return Change(
        key=key_text,
        incarnation=_text(fields.get("i", b"")),
        kind=_text(fields.get("k", b"")),
        version=version,
        updated_ms=int(_text(fields.get("t", b"0")) or 0),
        updated_by=_text(fields.get("b", b"")),
        write_id=_text(fields.get("w", b"")),
        fields=touched,
        payload=None if payload is None else _bytes(payload),
        payload_omitted="o" in fields,
    )


def op_history(
    st: "State", key: Any, since_version: Any = None, limit: Any = None
) -> Op[list[Change]]:
    """``store.history``: the changes kept for ``key``, oldest first; ``since_version``
    exclusive; ``limit`` keeps the newest. Empty when the schema keeps no history (or the
    context has none)."""
    from ctxlink._write import check_key

    check_key(key)
    since = _check_bound(since_version, "since_version")
    count = _check_bound(limit, "limit")
    if count == 0:
        return []
    hkey = history_key(st, key)
    low = "-" if since is None else f"({since}-0"
    try:
        if count is None:
            entries = yield Cmd(("XRANGE", hkey, low, "+"))
        else:
            entries = yield Cmd(("XREVRANGE", hkey, "+", low, "COUNT", count))
            entries = list(reversed(entries or []))
    except WrongTypeError:
        raise WrongTypeError(
            "WRONGTYPE the history key of this context holds another type (not a stream)"
        ) from None
    entries = list(entries or [])
    names: dict[int, str] = {}
    if any("f" in _entry_fields(e[1]) for e in entries):
        names = yield from _names_for(st, key)
    key_text = key if isinstance(key, str) else _text(bytes(key))
    return [_parse(key_text, e, names) for e in entries]

