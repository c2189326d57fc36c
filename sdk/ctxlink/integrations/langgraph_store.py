"""LangGraph's long-term memory store on ctxlink: ``CtxlinkStore`` (needs ``ctxlink[langgraph]``).

    from ctxlink.integrations.langgraph import CtxlinkStore
    store = CtxlinkStore.from_url("redis://localhost:6379")    # was RedisStore.from_conn_string
    graph = builder.compile(checkpointer=saver, store=store)

One context per item (schema ``lg_store_item``) at ``<prefix>:<namespace>:<key>`` (labels joined
with ``.``; ``%`` and ``:`` escaped). ``put`` is a read-modify-write with compare-and-set: a
concurrent put of the same item never tears it and keeps its ``created_at``; ``delete`` is a
compare-and-set delete. ``search`` (namespace prefix, ``filter`` with ``$eq``, ``$ne``, ``$gt``,
``$gte``, ``$lt``, ``$lte``, limit, offset) and ``list_namespaces`` scan the prefix's keys (SCAN,
so their cost grows with the keyspace; a Redis Cluster scans every primary through redis-py).
Vector search (``query=``) is not supported: it raises :class:`NotImplementedError`. TTLs:
``ttl={"default_ttl": minutes, "refresh_on_read": bool}`` as LangGraph's TTLConfig; an item
expires with its context.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, List, Optional

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchItem,
    SearchOp,
)

from ctxlink._sync import Store
from ctxlink.integrations._common import (
    SchemaSpec,
    check_prefix,
    ensure_schemas,
    messages,
    open_store,
    upsert,
)
from ctxlink.integrations.langgraph import ttl_config_seconds

__all__ = ["CtxlinkStore", "SCHEMA_STORE_ITEM"]

SCHEMA_STORE_ITEM = "lg_store_item"
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_Item: Any = messages("langgraph", "ctxlink.langgraph")["StoreItem"]


def _enc(label: str) -> str:
    return label.replace("%", "%25").replace(":", "%3A").replace(".", "%2E")


def _dec(text: str) -> str:
    return text.replace("%2E", ".").replace("%3A", ":").replace("%25", "%")


def _glob(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _check_labels(namespace: tuple[str, ...]) -> None:
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label or "\x00" in label:
            from langgraph.store.base import InvalidNamespaceError

            raise InvalidNamespaceError(
                f"invalid namespace label {label!r} in {namespace}: labels are non-empty str "
                "without '.' or NUL")


class CtxlinkStore(BaseStore):
    """A ``BaseStore`` (``batch``/``abatch``: get, put, delete, search, list_namespaces, TTL).

    Exactly one of ``redis_url=``, ``redis_client=`` or ``store=`` (a ctxlink Store);
    ``key_prefix`` (default ``store``); ``ttl``: LangGraph's TTLConfig (``default_ttl`` in
    minutes, ``refresh_on_read``). ``register=False`` skips schema registration.
    """

    supports_ttl = True

    def __init__(
        self,
        redis_url: Optional[str] = None,
        *,
        redis_client: Any = None,
        store: Optional[Store] = None,
        key_prefix: str = "store",
        ttl: Optional[dict[str, Any]] = None,
        register: bool = True,
    ) -> None:
        self._prefix = check_prefix(key_prefix)
        ttl_config_seconds(ttl)  # checked as the saver checks it
        self.ttl_config = ttl
        self.store, self._owns = open_store(redis_url, redis_client, store)
        self._registers = register
        if register:
            self.setup()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "CtxlinkStore":
        return cls(redis_url=url, **kwargs)

    def setup(self) -> int:
        """Registers the store's schema where the registry lacks it; returns how many."""
        return ensure_schemas(self.store, [SchemaSpec(SCHEMA_STORE_ITEM, _Item)], "CtxlinkStore")

    def _upsert(self, key: str, fn: Any, **kwargs: Any) -> Any:
        """One of its writes (:func:`~ctxlink.integrations._common.upsert`)."""
        return upsert(self.store, key, fn, adapter="CtxlinkStore", registers=self._registers,
                      **kwargs)

    def close(self) -> None:
        if self._owns:
            self.store.close()

    def __enter__(self) -> "CtxlinkStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- keys ---------------------------------------------------------------------------------
    def _key(self, namespace: tuple[str, ...], key: str) -> str:
        return f"{self._prefix}:{'.'.join(_enc(x) for x in namespace)}:{_enc(key)}"

    def _parse(self, redis_key: str) -> Optional[tuple[tuple[str, ...], str]]:
        rest = redis_key[len(self._prefix) + 1:]
        ns, sep, key = rest.rpartition(":")
        if not sep or not ns:
            return None
        return tuple(_dec(x) for x in ns.split(".")), _dec(key)

    def _scan(self, prefix: tuple[str, ...]) -> List[str]:
        head = f"{self._prefix}:"
        if prefix:
            pattern = _glob(head + ".".join(_enc(x) for x in prefix)) + "[.:]*"
        else:
            pattern = _glob(head) + "*"
        out = []
        for k in self.store.client.scan_iter(match=pattern, count=1000):
            out.append(k.decode() if isinstance(k, bytes) else k)
        return out

    # -- items --------------------------------------------------------------------------------
    def _to_item(self, msg: Any, search: bool = False) -> Any:
        kw = dict(value=json.loads(msg.value_json), key=msg.key,
                  namespace=tuple(msg.namespace),
                  created_at=datetime.fromtimestamp(msg.created_at_ms / 1000, tz=timezone.utc),
                  updated_at=datetime.fromtimestamp(msg.updated_at_ms / 1000, tz=timezone.utc))
        return SearchItem(**kw) if search else Item(**kw)

    def _refresh(self, refresh: Optional[bool]) -> bool:
        if refresh is not None:
            return refresh
        return bool((self.ttl_config or {}).get("refresh_on_read", True))

    def _read(self, rkey: str, refresh: Optional[bool]) -> Optional[Any]:
        snap = self.store.get(rkey)
        if snap is None:
            return None
        msg = snap.decode(_Item)
        if msg.ttl_minutes > 0 and self._refresh(refresh):
            self.store.touch(rkey, msg.ttl_minutes * 60.0)
        return msg

    def _get(self, op: GetOp) -> Optional[Item]:
        _check_labels(op.namespace)
        msg = self._read(self._key(op.namespace, op.key), getattr(op, "refresh_ttl", None))
        return None if msg is None else self._to_item(msg)

    def _put(self, op: PutOp) -> None:
        _check_labels(op.namespace)
        if not op.namespace:
            from langgraph.store.base import InvalidNamespaceError

            raise InvalidNamespaceError("Namespace cannot be empty.")
        rkey = self._key(op.namespace, op.key)
        if op.value is None:
            while True:
                snap = self.store.get(rkey)
                if snap is None or self.store.delete(rkey, snap.version).ok:
                    return
        if not isinstance(op.value, dict):
            raise TypeError(f"a store value is a dict, got {type(op.value).__name__}")
        value_json = json.dumps(op.value, separators=(",", ":"), ensure_ascii=False)
        ttl = getattr(op, "ttl", None)
        if ttl is not None and not isinstance(ttl, (int, float)):  # NOT_PROVIDED
            ttl = (self.ttl_config or {}).get("default_ttl")
        now = int(time.time() * 1000)

        def fill(msg: Any) -> None:
            if not msg.created_at_ms:
                msg.created_at_ms = now
                msg.namespace.extend(op.namespace)
                msg.key = op.key
            msg.value_json = value_json
            msg.updated_at_ms = max(now, msg.created_at_ms)
            msg.ttl_minutes = float(ttl) if ttl else 0.0

        self._upsert(rkey, fill, message_class=_Item, schema=SCHEMA_STORE_ITEM, default=_Item,
                     ttl=float(ttl) * 60.0 if ttl else None)

    def _search(self, op: SearchOp) -> List[SearchItem]:
        if op.query is not None:
            raise NotImplementedError(
                "CtxlinkStore has no vector index: search(query=...) is not supported; use "
                "filter= and the namespace prefix")
        _check_labels(op.namespace_prefix)
        for fkey in op.filter or {}:
            if not isinstance(fkey, str) or not _FILTER_KEY.match(fkey):
                raise ValueError(
                    f"Invalid filter key: {fkey!r}. Filter keys must contain only alphanumeric "
                    "characters, underscores, dots, and hyphens (as LangGraph's SQL stores).")
        found = []
        for rkey in self._scan(op.namespace_prefix):
            msg = self._read(rkey, False)
            if msg is None:
                continue
            value = json.loads(msg.value_json)
            if op.filter and not all(_matches(_lookup(value, k), v)
                                     for k, v in op.filter.items()):
                continue
            found.append((msg, rkey))
        found.sort(key=lambda m: (-m[0].updated_at_ms, m[0].key))
        page = found[op.offset: op.offset + op.limit]
        refresh = self._refresh(getattr(op, "refresh_ttl", None))
        out = []
        for msg, rkey in page:
            if refresh and msg.ttl_minutes > 0:
                self.store.touch(rkey, msg.ttl_minutes * 60.0)
            out.append(self._to_item(msg, search=True))
        return out

    def _list_namespaces(self, op: ListNamespacesOp) -> List[tuple[str, ...]]:
        seen: set[tuple[str, ...]] = set()
        for rkey in self._scan(()):
            parsed = self._parse(rkey)
            if parsed is None:
                continue
            ns = parsed[0]
            if op.match_conditions and not all(_ns_match(c, ns)
                                               for c in op.match_conditions):
                continue
            if op.max_depth is not None:
                ns = ns[: op.max_depth]
            seen.add(ns)
        names = sorted(seen)
        return names[op.offset: op.offset + op.limit]

    # -- BaseStore ------------------------------------------------------------------------------
    def batch(self, ops: Iterable[Any]) -> List[Any]:
        ops = list(ops)
        for op in ops:  # the whole batch is refused before anything is written
            _validate(op)
        results: List[Any] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise ValueError(f"unknown store operation {op!r}")
        return results

    async def abatch(self, ops: Iterable[Any]) -> List[Any]:
        ops = list(ops)
        return await asyncio.to_thread(self.batch, ops)


def _validate(op: Any) -> None:
    if isinstance(op, (GetOp, PutOp)):
        _check_labels(op.namespace)
        if isinstance(op, PutOp) and not op.namespace:
            from langgraph.store.base import InvalidNamespaceError

            raise InvalidNamespaceError("Namespace cannot be empty.")
    elif isinstance(op, SearchOp):
        _check_labels(op.namespace_prefix)
    elif isinstance(op, ListNamespacesOp):
        for cond in op.match_conditions or ():
            _check_labels(tuple(x for x in cond.path if x != "*"))


def _ns_match(cond: MatchCondition, ns: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    if cond.match_type not in ("prefix", "suffix"):
        raise ValueError(f"unsupported match type {cond.match_type!r}")
    if cond.match_type == "prefix":
        pairs = zip(ns, path, strict=False)
    else:
        pairs = zip(reversed(ns), reversed(path), strict=False)
    return all(p == "*" or a == p for a, p in pairs)


def _lookup(value: Any, path: str) -> Any:
    """``value[path]``, else the dotted path ``a.b.c`` walked through nested objects."""
    if isinstance(value, dict) and path in value:
        return value[path]
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(value: Any, want: Any) -> bool:
    if isinstance(want, dict):
        if any(k.startswith("$") for k in want):
            return all(_op(value, k, v) for k, v in want.items())
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in want.items())
    if isinstance(want, (list, tuple)):
        return (isinstance(value, (list, tuple)) and len(value) == len(want)
                and all(_matches(a, b) for a, b in zip(value, want, strict=False)))
    return bool(value == want)


def _op(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if value is None:
        return False
    try:
        a, b = float(value), float(arg)
    except (TypeError, ValueError):
        return False
    if op == "$gt":
        return a > b
    if op == "$gte":
        return a >= b
    if op == "$lt":
        return a < b
    if op == "$lte":
        return a <= b
    raise ValueError(f"unsupported filter operator {op!r}")
