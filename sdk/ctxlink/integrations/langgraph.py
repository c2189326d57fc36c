"""LangGraph checkpointer on ctxlink: ``CtxlinkSaver`` (needs ``ctxlink[langgraph]``).

    from ctxlink.integrations.langgraph import CtxlinkSaver
    saver = CtxlinkSaver.from_url("redis://localhost:6379")   # was RedisSaver.from_conn_string
    graph = builder.compile(checkpointer=saver)

Layout (key prefix ``checkpoint`` by default, like langgraph-checkpoint-redis):

- ``<prefix>:thread:<thread_id>``: the thread's index (schema ``lg_thread``): per namespace its
  checkpoint ids in put order and its head (the newest put). Every put changes it with
  compare-and-set, so concurrent puts never lose one another. It grows by 38 bytes per
  checkpoint: under the default max-payload-bytes (1 MiB) about 27,000 checkpoints per thread,
  after which put raises PayloadTooLarge (delete_for_runs or delete_thread make room).
- ``<prefix>:cp:<thread_id>:<ns>:<checkpoint_id>`` (``%`` and ``:`` escaped in each part): one
  checkpoint, its metadata and its pending writes (schema ``lg_checkpoint``). ``put_writes`` is
  a read-modify-write of that context keyed by (task id, write index): a write re-sent (by
  LangGraph or by the SDK after a lost reply) is kept once.

``strict=True``: a put whose parent is no longer its namespace's head raises
:class:`ctxlink.ConflictError` (two workers on one thread: exactly one wins) instead of forking
silently; time travel and ``update_state`` from an older checkpoint then raise too, so leave it
off for those.

Values are serialized with LangGraph's ``JsonPlusSerializer(pickle_fallback=False)``: data read
from a shared Redis is never unpickled (a stored "pickle" value raises ``ValueError``).
The async methods run the synchronous ones in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, List, Optional

from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ctxlink._exceptions import ConflictError, NotFoundError
from ctxlink._sync import Store
from ctxlink.integrations._common import (
    SchemaSpec,
    check_prefix,
    ensure_schemas,
    messages,
    open_store,
    upsert,
)

__all__ = ["CtxlinkSaver", "SCHEMA_CHECKPOINT", "SCHEMA_THREAD"]

SCHEMA_CHECKPOINT = "lg_checkpoint"
SCHEMA_THREAD = "lg_thread"
_ADAPTER = "CtxlinkSaver"

_M = messages("langgraph", "ctxlink.langgraph")
_Checkpoint: Any = _M["Checkpoint"]
_Thread: Any = _M["Thread"]

RunnableConfig = dict[str, Any]


def _specs() -> list[SchemaSpec]:
    return [SchemaSpec(SCHEMA_CHECKPOINT, _Checkpoint), SchemaSpec(SCHEMA_THREAD, _Thread)]


class CtxlinkSaver(BaseCheckpointSaver[str]):
    """A ``BaseCheckpointSaver`` whose puts are compare-and-set on ctxlink contexts.

    Exactly one of ``redis_url=``, ``redis_client=`` (a redis-py client) or ``store=`` (a ctxlink
    :class:`~ctxlink.Store`). ``key_prefix`` prefixes every key; ``ttl`` (``{"default_ttl":
    minutes}`` as langgraph-checkpoint-redis takes it, or None) sets the contexts' expiry, renewed
    by every write (and by reads with ``"refresh_on_read": True``). ``strict``: see the module's
    doc. ``register=False`` skips schema registration (an administrator ran :meth:`setup` or
    ``ctxlink schema push``).
    """

    def __init__(
        self,
        redis_url: Optional[str] = None,
        *,
        redis_client: Any = None,
        store: Optional[Store] = None,
        key_prefix: str = "checkpoint",
        ttl: Optional[dict[str, Any]] = None,
        strict: bool = False,
        register: bool = True,
        serde: Optional[SerializerProtocol] = None,
    ) -> None:
        super().__init__(serde=serde or JsonPlusSerializer(pickle_fallback=False))
        self._prefix = check_prefix(key_prefix)
        self._ttl = ttl_config_seconds(ttl)
        self._refresh_on_read = bool(ttl and ttl.get("refresh_on_read")) and self._ttl is not None
        self.strict = bool(strict)
        self.store, self._owns = open_store(redis_url, redis_client, store)
        self._registers = register
        if register:
            self.setup()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "CtxlinkSaver":
        """A ready saver on ``url`` (it owns the connection: :meth:`close`)."""
        return cls(redis_url=url, **kwargs)

    @classmethod
    @contextmanager
    def from_conn_string(
        cls, redis_url: Optional[str] = None, **kwargs: Any
    ) -> Iterator["CtxlinkSaver"]:
        """``with CtxlinkSaver.from_conn_string(url) as saver:``, as RedisSaver's."""
        saver = cls(redis_url=redis_url, **kwargs)
        try:
            yield saver
        finally:
            saver.close()

    def setup(self) -> int:
        """Registers the saver's schemas where the registry lacks them; returns how many."""
        return ensure_schemas(self.store, _specs(), _ADAPTER)

    def _upsert(self, key: str, fn: Any, **kwargs: Any) -> Any:
        """One of its writes (:func:`~ctxlink.integrations._common.upsert`)."""
        return upsert(self.store, key, fn, adapter=_ADAPTER, registers=self._registers,
                      **kwargs)

    def close(self) -> None:
        if self._owns:
            self.store.close()

    def __enter__(self) -> "CtxlinkSaver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- keys ---------------------------------------------------------------------------------
    # thread ids and namespaces are escaped (``%`` and ``:``) so that no two map to one key
    def _thread_key(self, thread_id: str) -> str:
        return f"{self._prefix}:thread:{_esc(thread_id)}"

    def _cp_key(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        return f"{self._prefix}:cp:{_esc(thread_id)}:{_esc(ns)}:{_esc(checkpoint_id)}"

    # -- serialization -----------------------------------------------------------------------
    def _dump(self, typed: Any, value: Any) -> None:
        t, data = self.serde.dumps_typed(value)
        if t == "pickle":
            raise ValueError("CtxlinkSaver never stores pickled values")
        typed.type = t
        typed.data = data

    def _load(self, typed: Any) -> Any:
        if typed.type == "pickle":
            raise ValueError("refusing to unpickle a value read from Redis")
        return self.serde.loads_typed((typed.type, typed.data))

    def _read_cp(self, thread_id: str, ns: str, checkpoint_id: str) -> Optional[Any]:
        snap = self.store.get(self._cp_key(thread_id, ns, checkpoint_id))
        if snap is None:
            return None
        msg = snap.decode(_Checkpoint)
        return msg if msg.HasField("checkpoint") else None

    def _read_thread(self, thread_id: str) -> Optional[Any]:
        snap = self.store.get(self._thread_key(thread_id))
        return None if snap is None else snap.decode(_Thread)

    def _tuple(self, msg: Any) -> CheckpointTuple:
        cfg = {"configurable": {"thread_id": msg.thread_id, "checkpoint_ns": msg.checkpoint_ns,
                                "checkpoint_id": msg.checkpoint_id}}
        parent = None
        if msg.parent_checkpoint_id:
            parent = {"configurable": {"thread_id": msg.thread_id,
                                       "checkpoint_ns": msg.checkpoint_ns,
                                       "checkpoint_id": msg.parent_checkpoint_id}}
        # LangGraph's writes_sort_key order (task path, task id, index): the order a super-step
        # applies its tasks' writes, which get_delta_channel_history replays
        ordered = sorted(msg.writes, key=lambda w: (w.task_path, w.task_id, w.idx))
        writes = [(w.task_id, w.channel, self._load(w.value)) for w in ordered]
        return CheckpointTuple(config=cfg, checkpoint=self._load(msg.checkpoint),
                               metadata=self._load(msg.metadata), parent_config=parent,
                               pending_writes=writes)

    # -- BaseCheckpointSaver -------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            thread = self._read_thread(thread_id)
            if thread is None:
                return None
            ids = [i for n in thread.namespaces if n.checkpoint_ns == ns
                   for i in n.checkpoint_ids]
            if not ids:
                return None
            checkpoint_id = max(ids)
        msg = self._read_cp(thread_id, ns, checkpoint_id)
        if msg is None:
            return None
        if self._refresh_on_read and self._ttl is not None:
            self.store.touch(self._cp_key(thread_id, ns, checkpoint_id), self._ttl)
            self.store.touch(self._thread_key(thread_id), self._ttl)
        return self._tuple(msg)

    def list(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> Iterator[CheckpointTuple]:
        if config is not None:
            threads = [str(config["configurable"]["thread_id"])]
            ns_filter = config["configurable"].get("checkpoint_ns")
            want_id = get_checkpoint_id(config)
        else:
            threads = self._all_threads()
            ns_filter, want_id = None, None
        before_id = get_checkpoint_id(before) if before else None
        found: List[tuple[str, str, str]] = []
        for tid in threads:
            thread = self._read_thread(tid)
            if thread is None:
                continue
            for n in thread.namespaces:
                if ns_filter is not None and n.checkpoint_ns != ns_filter:
                    continue
                for cid in n.checkpoint_ids:
                    if want_id and cid != want_id:
                        continue
                    if before_id and cid >= before_id:
                        continue
                    found.append((cid, tid, n.checkpoint_ns))
        found.sort(reverse=True)
        count = 0
        for cid, tid, ns in found:
            if limit is not None and count >= limit:
                return
            msg = self._read_cp(tid, ns, cid)
            if msg is None:
                continue
            tup = self._tuple(msg)
            if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                continue
            count += 1
            yield tup

    def _all_threads(self) -> List[str]:
        out: List[str] = []
        head = f"{self._prefix}:thread:"
        client = self.store.client
        for key in client.scan_iter(match=_glob_escape(head) + "*", count=500):
            k = key.decode() if isinstance(key, bytes) else key
            out.append(_unesc(k[len(head):]))
        return out

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "")
        parent_id = conf.get("checkpoint_id") or ""
        cid = checkpoint["id"]
        key = self._cp_key(thread_id, ns, cid)

        def fill(msg: Any) -> None:
            msg.thread_id, msg.checkpoint_ns, msg.checkpoint_id = thread_id, ns, cid
            msg.parent_checkpoint_id = parent_id
            self._dump(msg.checkpoint, checkpoint)
            self._dump(msg.metadata, get_checkpoint_metadata(config, metadata))

        self._upsert(key, fill, message_class=_Checkpoint, schema=SCHEMA_CHECKPOINT,
                     default=_Checkpoint, ttl=self._ttl)

        listed = [False]  # the checkpoint was in the index already (a put of it again)

        def link(thread: Any) -> None:
            thread.thread_id = thread_id
            entry = next((n for n in thread.namespaces if n.checkpoint_ns == ns), None)
            if entry is None:
                entry = thread.namespaces.add(checkpoint_ns=ns)
            listed[0] = cid in entry.checkpoint_ids
            if self.strict and entry.head and entry.head != parent_id and entry.head != cid:
                raise ConflictError(
                    f"thread {thread_id!r} namespace {ns!r}: checkpoint {cid} is based on "
                    f"{parent_id or 'nothing'} but the thread's head is now {entry.head}",
                    None, ("namespaces",), 0, self._thread_key(thread_id))
            entry.head = cid
            if cid not in entry.checkpoint_ids:
                entry.checkpoint_ids.append(cid)

        try:
            self._upsert(self._thread_key(thread_id), link, message_class=_Thread,
                         schema=SCHEMA_THREAD, default=_Thread, ttl=self._ttl)
        except ConflictError:
            snap = None if listed[0] else self.store.get(key)
            if snap is not None:  # the refused (new) checkpoint is not left behind
                self.store.delete(key, snap.version)
            raise
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": cid}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "")
        cid = conf["checkpoint_id"]
        staged = []
        for idx, (channel, value) in enumerate(writes):
            w = _M["PendingWrite"](task_id=task_id, idx=WRITES_IDX_MAP.get(channel, idx),
                                  channel=channel, task_path=task_path)
            self._dump(w.value, value)
            staged.append(w)

        def add(msg: Any) -> None:
            if not msg.checkpoint_id:
                msg.thread_id, msg.checkpoint_ns, msg.checkpoint_id = thread_id, ns, cid
            pos = {(w.task_id, w.idx): i for i, w in enumerate(msg.writes)}
            for w in staged:
                at = pos.get((w.task_id, w.idx))
                if at is None:
                    msg.writes.append(w)
                    pos[(w.task_id, w.idx)] = len(msg.writes) - 1
                elif w.idx < 0:  # special channels: the newest write replaces the older one
                    msg.writes[at].CopyFrom(w)

        self._upsert(self._cp_key(thread_id, ns, cid), add, message_class=_Checkpoint,
                     schema=SCHEMA_CHECKPOINT, default=_Checkpoint, ttl=self._ttl)

    def delete_thread(self, thread_id: str) -> None:
        thread_id = str(thread_id)
        while True:
            snap = self.store.get(self._thread_key(thread_id))
            if snap is None:
                return
            thread = snap.decode(_Thread)
            for n in thread.namespaces:
                for cid in n.checkpoint_ids:
                    self._delete_key(self._cp_key(thread_id, n.checkpoint_ns, cid))
            if self.store.delete(self._thread_key(thread_id), snap.version).ok:
                return  # else a put landed meanwhile: delete what it added too

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint (with its pending writes) of one thread to another; the
        target's index is merged with compare-and-set (checkpoints it already has are kept)."""
        src, dst = str(source_thread_id), str(target_thread_id)
        thread = self._read_thread(src)
        if thread is None:
            return
        for n in thread.namespaces:
            for cid in n.checkpoint_ids:
                snap = self.store.get(self._cp_key(src, n.checkpoint_ns, cid))
                if snap is None:
                    continue
                copy = snap.decode(_Checkpoint)
                copy.thread_id = dst

                def put_copy(msg: Any, copy: Any = copy) -> Any:
                    return copy

                self._upsert(self._cp_key(dst, n.checkpoint_ns, cid), put_copy,
                             message_class=_Checkpoint, schema=SCHEMA_CHECKPOINT,
                             default=_Checkpoint, ttl=self._ttl)

        def merge(target: Any) -> None:
            target.thread_id = dst
            for n in thread.namespaces:
                entry = next((e for e in target.namespaces if e.checkpoint_ns == n.checkpoint_ns),
                             None)
                if entry is None:
                    entry = target.namespaces.add(checkpoint_ns=n.checkpoint_ns)
                have = set(entry.checkpoint_ids)
                entry.checkpoint_ids.extend(c for c in n.checkpoint_ids if c not in have)
                if not entry.head or (n.head and n.head > entry.head):
                    entry.head = n.head

        self._upsert(self._thread_key(dst), merge, message_class=_Thread,
                     schema=SCHEMA_THREAD, default=_Thread, ttl=self._ttl)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes every checkpoint whose metadata's ``run_id`` is one of ``run_ids`` (with its
        pending writes), in every thread; each thread's index drops them with compare-and-set."""
        runs = {str(r) for r in run_ids}
        if not runs:
            return
        for tid in self._all_threads():
            thread = self._read_thread(tid)
            if thread is None:
                continue
            doomed: set[tuple[str, str]] = set()
            for n in thread.namespaces:
                for cid in n.checkpoint_ids:
                    msg = self._read_cp(tid, n.checkpoint_ns, cid)
                    if msg is None:
                        continue
                    meta = self._load(msg.metadata)
                    if isinstance(meta, dict) and str(meta.get("run_id")) in runs:
                        doomed.add((n.checkpoint_ns, cid))
            if not doomed:
                continue

            self._drop(tid, doomed)

    def _drop(self, thread_id: str, doomed: set[tuple[str, str]]) -> None:
        """Removes (namespace, checkpoint id) pairs from the thread's index (compare-and-set:
        a put landing meanwhile is kept), then deletes their contexts."""

        def drop(t: Any) -> None:
            for n in t.namespaces:
                keep = [c for c in n.checkpoint_ids if (n.checkpoint_ns, c) not in doomed]
                del n.checkpoint_ids[:]
                n.checkpoint_ids.extend(keep)
                if (n.checkpoint_ns, n.head) in doomed:
                    n.head = max(keep) if keep else ""

        try:
            self._upsert(self._thread_key(thread_id), drop, message_class=_Thread,
                         schema=SCHEMA_THREAD)
        except NotFoundError:
            pass  # the thread was deleted meanwhile
        for ns, cid in doomed:
            self._delete_key(self._cp_key(thread_id, ns, cid))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"delete"``: every checkpoint of the threads. ``"keep_latest"``: per namespace the
        newest checkpoint and, DeltaChannel-safe, every ancestor up to the nearest one that holds
        a value (a snapshot) for each DeltaChannel the newest has no value for (those its
        metadata's ``counters_since_delta_snapshot`` names): the checkpoints
        get_delta_channel_history walks. The rest is deleted with its writes."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: 'keep_latest' or 'delete'")
        for tid in (str(t) for t in thread_ids):
            if strategy == "delete":
                self.delete_thread(tid)
                continue
            thread = self._read_thread(tid)
            if thread is None:
                continue
            keep: set[tuple[str, str]] = set()
            every: set[tuple[str, str]] = set()
            for n in thread.namespaces:
                ns = n.checkpoint_ns
                every.update((ns, c) for c in n.checkpoint_ids)
                if not n.checkpoint_ids:
                    continue
                latest = max(n.checkpoint_ids)
                keep.add((ns, latest))
                msg = self._read_cp(tid, ns, latest)
                if msg is None:
                    continue
                cp = self._load(msg.checkpoint)
                values = cp.get("channel_values") or {}
                meta = self._load(msg.metadata)
                # the DeltaChannel-backed channels LangGraph counts in the metadata; those whose
                # value is not in this checkpoint are rebuilt from ancestors' writes
                counted = (meta.get("counters_since_delta_snapshot") or {}
                           if isinstance(meta, dict) else {})
                missing = {ch for ch in counted if ch not in values}
                parent = msg.parent_checkpoint_id
                while missing and parent:
                    keep.add((ns, parent))
                    pmsg = self._read_cp(tid, ns, parent)
                    if pmsg is None:
                        break
                    missing -= set(self._load(pmsg.checkpoint).get("channel_values") or {})
                    parent = pmsg.parent_checkpoint_id
            doomed = every - keep
            if doomed:
                self._drop(tid, doomed)

    def _delete_key(self, key: str) -> None:
        while True:
            snap = self.store.get(key)
            if snap is None or self.store.delete(key, snap.version).ok:
                return

    def get_next_version(self, current: Optional[str], channel: None) -> str:
        if current is None:
            n = 0
        elif isinstance(current, int):
            n = current
        else:
            n = int(str(current).split(".")[0])
        return f"{n + 1:032}.{random.random():016}"

    # -- async twins ----------------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> Optional[CheckpointTuple]:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: Optional[RunnableConfig],
        *,
        filter: Optional[dict[str, Any]] = None,
        before: Optional[RunnableConfig] = None,
        limit: Optional[int] = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


def ttl_config_seconds(ttl: Optional[dict[str, Any]]) -> Optional[float]:
    """LangGraph's TTL config (``{"default_ttl": minutes, ...}`` or None), checked, as seconds
    (None: no expiry); ValueError for anything else. The saver's and the store's rule."""
    if ttl is None:
        return None
    if not isinstance(ttl, dict):
        raise ValueError("ttl must be a dict like {'default_ttl': minutes} or None")
    minutes = ttl.get("default_ttl")
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ValueError(f"ttl['default_ttl'] must be minutes > 0, got {minutes!r}")
    return float(minutes) * 60.0


def _esc(s: str) -> str:
    return s.replace("%", "%25").replace(":", "%3A")


def _unesc(s: str) -> str:
    return s.replace("%3A", ":").replace("%25", "%")


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)




def __getattr__(name: str) -> Any:  # CtxlinkStore lives in langgraph_store (loaded on use)
    if name == "CtxlinkStore":
        from ctxlink.integrations.langgraph_store import CtxlinkStore

        return CtxlinkStore
    raise AttributeError(name)
