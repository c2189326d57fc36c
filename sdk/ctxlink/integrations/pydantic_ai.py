"""pydantic-ai's ``ConversationStore`` on ctxlink (``pip install 'ctxlink[pydantic-ai]'``).

:class:`CtxlinkConversationStore` implements the storage primitives of
``pydantic_ai.conversation_store.ConversationStore`` (pydantic-ai-slim 2.78): ``read_record``,
``read_records``, ``write_record``, ``write_details``, ``delete_record`` and ``read_entry``. The
framework does the rest (which messages are new, branches, forks, titles).

Layout: a conversation's record is one ctxlink context, ``{key_prefix}conversation:{id}``; each
entry (one model message) is a context of its own, ``{key_prefix}entry:{entry_id}``, written once
and never changed, so a fork shares the entries of the conversation it came from. Both hold the
framework's own JSON form (pydantic's ``TypeAdapter`` of ``ConversationRecord`` and
``ConversationEntry``, the same as ``ModelMessagesTypeAdapter`` for the message): nothing is
unpickled. An entry also lists the ids of its nearest ``ANCESTORS`` (16) ancestors, so
``read_history`` (every ``load``) reads a history of n messages in about n/17 rounds of parallel
reads instead of n reads one after the other.

Revisions: the record's ``revision`` is the framework's opaque token (a new one on every save, a
new one for a conversation deleted and created again). ``write_record`` maps ``expected_revision``
onto the context: it reads the record, refuses with ``ConversationConflict`` when the stored
revision is not the expected one, and writes with compare-and-swap on the context's version *and
incarnation* of that read. So the check and the write are one atomic step: a save, a delete, or a
delete and re-create in between makes the CAS fail. A CAS lost only to a title/metadata update
(which keeps the revision, as the contract says) is retried from the state the conflict reply
carried. ``expected_revision=None`` is a create (CAS from version 0): of two creators exactly one
wins.

What it does not do: ``delete_record`` deletes the record only; entries stay (another
conversation's fork may point into them) until their TTL, if any, expires. The entries of a save are
written before its record: a save that then conflicts leaves them unreferenced. ``ttl``: the
record expires ``ttl`` seconds after its last write, its entries twice ``ttl`` after theirs, and a
save extends the expiry of every entry of the history (and of the branches it left) to twice
``ttl`` again once ``ttl/2`` has passed since the last such extension: the messages always outlive
the record that points at them. ``list_conversations`` scans ``{key_prefix}conversation:*``.
One message (or a record) larger than the server's ``max-payload-bytes`` (1 MiB by default)
raises :class:`ctxlink.PayloadTooLarge`; a history has no such limit, one context per message.
A lost reply is re-sent and applied once; where that cannot be settled,
:class:`ctxlink.OutcomeUnknownError` (load the conversation to see whether the save landed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal, Optional

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from pydantic import TypeAdapter
from pydantic_ai.conversation_store import (
    ConversationConflict,
    ConversationDetails,
    ConversationEntry,
    ConversationRecord,
    ConversationStore,
)

import ctxlink.aio
from ctxlink import CasResult, ContextReplacedError, Snapshot
from ctxlink.integrations._aio_adapter import AsyncAdapter, check_ttl
from ctxlink.integrations._common import SchemaSpec, check_prefix

__all__ = ["CtxlinkConversationStore", "RECORD_SCHEMA", "ENTRY_SCHEMA"]

#: the schema names the adapter registers (when the registry lacks this exact definition)
RECORD_SCHEMA = "pydantic_ai.conversation"
ENTRY_SCHEMA = "pydantic_ai.entry"

_PACKAGE = "ctxlink.integrations.pydantic_ai"
_RECORD_ADAPTER: TypeAdapter[ConversationRecord] = TypeAdapter(ConversationRecord)
_ENTRY_ADAPTER: TypeAdapter[ConversationEntry] = TypeAdapter(ConversationEntry)


def _message_classes() -> tuple[type[Message], type[Message]]:
    """Two messages, ``{int64 version = 1; bytes data = 2;}`` (the record's also
    ``int64 refreshed_ms = 3``, the entry's ``repeated string ancestors = 3``), in a pool of
    their own."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="ctxlink/integrations/pydantic_ai.proto", package=_PACKAGE, syntax="proto3")
    for name in ("Conversation", "Entry"):
        msg = fdp.message_type.add(name=name)
        msg.field.add(name="version", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        msg.field.add(name="data", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        if name == "Conversation":  # when the entries' expiry was last extended (ms, ttl only)
            msg.field.add(name="refreshed_ms", number=3,
                          type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        if name == "Entry":  # the ids of the entry's nearest ancestors, parent first
            msg.field.add(name="ancestors", number=3,
                          type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Conversation")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Entry")))


_classes = _message_classes()
RecordMessage: Any = _classes[0]
EntryMessage: Any = _classes[1]
_SPECS = (SchemaSpec(RECORD_SCHEMA, RecordMessage), SchemaSpec(ENTRY_SCHEMA, EntryMessage))
_ADAPTER = "CtxlinkConversationStore"


class CtxlinkConversationStore(AsyncAdapter, ConversationStore):
    """A pydantic-ai ``ConversationStore`` whose saves are compare-and-swap on ctxlink contexts.

    Give exactly one of ``redis_client`` (a ``redis.asyncio.Redis`` or ``RedisCluster``),
    ``redis_url=`` (``redis://``, ``rediss://``, ``unix://``; the store owns that client:
    :meth:`close`) or ``store=`` (a :class:`ctxlink.aio.Store`), else ``ValueError``.
    ``key_prefix`` (non-empty, no whitespace, else ``ValueError``) starts every key; ``ttl``
    (seconds > 0, else :class:`ctxlink.ArgumentError`) is stored with every write. ``engine``: as
    :func:`ctxlink.aio.connect`. The connection and the schema check happen on first use
    (:meth:`setup` does them at once).
    """

    _SPECS = _SPECS
    _ADAPTER = _ADAPTER

    def __init__(
        self,
        redis_client: Any = None,
        *,
        redis_url: Optional[str] = None,
        store: Optional[ctxlink.aio.Store] = None,
        key_prefix: str = "pydantic_ai:",
        ttl: Optional[float] = None,
        engine: Literal["auto", "module", "lua"] = "auto",
    ) -> None:
        self._adapter_init(redis_client, redis_url, store, engine)
        self.key_prefix = check_prefix(key_prefix)
        self.ttl = check_ttl(ttl)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "pydantic_ai:", ttl: Optional[float] = None,
                 engine: Literal["auto", "module", "lua"] = "auto") -> "CtxlinkConversationStore":
        """A store on a new client for ``url``, which it owns; usable at once (it connects on
        first use, or ``await store.setup()``)."""
        return cls(redis_url=url, key_prefix=key_prefix, ttl=ttl, engine=engine)

    # -- plumbing --------------------------------------------------------------------------
    async def _cas(self, key: str, expected: int, message: Message, schema: str,
                   incarnation: Optional[str] = None, ttl: Optional[float] = None) -> CasResult:
        store = await self._ctx()
        return await self._write(lambda: store.cas(
            key, expected, message, schema=schema, ttl=self.ttl if ttl is None else ttl,
            incarnation=incarnation))

    def _record_key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}conversation:{conversation_id}"

    def _entry_key(self, entry_id: str) -> str:
        return f"{self.key_prefix}entry:{entry_id}"

    @staticmethod
    def _record_of(snap: Snapshot) -> ConversationRecord:
        return _RECORD_ADAPTER.validate_json(snap.decode(RecordMessage).data)

    @staticmethod
    def _refreshed_of(snap: Optional[Snapshot]) -> int:
        return 0 if snap is None else int(snap.decode(RecordMessage).refreshed_ms)

    @staticmethod
    def _record_message(record: ConversationRecord, refreshed_ms: int) -> Message:
        message: Message = RecordMessage(data=_RECORD_ADAPTER.dump_json(record),
                                         refreshed_ms=refreshed_ms)
        return message

    @property
    def _entry_ttl(self) -> Optional[float]:
        return None if self.ttl is None else 2 * self.ttl

    async def _refresh_entries(self, record: ConversationRecord) -> None:
        """Extends the expiry of every entry of the record's history and of the branches it
        left to twice ``ttl`` (entries outlive the record that points at them)."""
        store = await self._ctx()
        assert self._entry_ttl is not None
        ids: set[str] = set()
        for tip in [record.head_id, *record.branches]:
            if tip is None:
                continue
            try:
                ids.update(e.id for e in await self.read_history(tip))
            except KeyError:
                continue  # expired or released already: nothing left to keep
        keys = [self._entry_key(i) for i in sorted(ids)]
        for start in range(0, len(keys), 64):
            await asyncio.gather(*(store.touch(k, self._entry_ttl)
                                   for k in keys[start:start + 64]))

    # -- the primitives --------------------------------------------------------------------
    async def read_record(self, conversation_id: str) -> Optional[ConversationRecord]:
        snap = await (await self._ctx()).get(self._record_key(conversation_id))
        return None if snap is None else self._record_of(snap)

    async def read_records(self, *, scope: Optional[str] = None,
                           limit: Optional[int] = None) -> Sequence[ConversationRecord]:
        store = await self._ctx()
        client: Any = store.client  # the Store's redis-py client, for SCAN
        prefix = self._record_key("")
        records: list[ConversationRecord] = []
        async for raw in client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            snap = await store.get(key)
            if snap is None:
                continue  # deleted since the scan saw it
            record = self._record_of(snap)
            if scope is None or record.scope == scope:
                records.append(record)
        records.sort(key=lambda r: r.updated_at, reverse=True)
        return records[:limit]

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: Optional[str],
    ) -> None:
        store = await self._ctx()
        cid = record.conversation_id
        key = self._record_key(cid)
        snap = await store.get(key)
        stored = None if snap is None else self._record_of(snap)
        if (stored.revision if stored is not None else None) != expected_revision:
            raise ConversationConflict(cid)
        new_ids = {e.id for e in new_entries}
        if record.head_id is not None and record.head_id not in new_ids:
            if await store.get(self._entry_key(record.head_id)) is None:
                raise ConversationConflict(cid)  # a delete released the entry a fork points at
        ancestors: dict[str, list[str]] = {}
        for entry in new_entries:
            parent = entry.parent_id
            if parent is None:
                chain: list[str] = []
            else:
                if parent not in ancestors:
                    try:
                        ancestors[parent] = (await self._read_raw(parent))[1]
                    except KeyError:
                        ancestors[parent] = []
                chain = [parent, *ancestors[parent]][:ANCESTORS]
            ancestors[entry.id] = chain
            res = await self._cas(self._entry_key(entry.id), 0,
                                  EntryMessage(data=_ENTRY_ADAPTER.dump_json(entry),
                                               ancestors=chain), ENTRY_SCHEMA,
                                  ttl=self._entry_ttl)
            if not res.ok:
                raise ConversationConflict(cid, message=f"entry {entry.id!r} already exists")
        refreshed = self._refreshed_of(snap)
        now_ms = int(time.time() * 1000)
        if self.ttl is not None and now_ms - refreshed > self.ttl * 500:
            # every ttl/2 of activity: the older entries' expiry again twice ttl from now
            await self._refresh_entries(record)
            refreshed = now_ms
        while True:
            if snap is None or stored is None:
                res = await self._cas(key, 0, self._record_message(record, refreshed),
                                      RECORD_SCHEMA)
            else:
                # title and metadata are update()'s: a save keeps the stored ones
                merged = dataclasses.replace(record, title=stored.title, metadata=stored.metadata)
                try:
                    res = await self._cas(key, snap.version,
                                          self._record_message(merged, refreshed),
                                          RECORD_SCHEMA, snap.incarnation)
                except ContextReplacedError as e:
                    raise ConversationConflict(cid) from e
            if res.ok:
                return
            if expected_revision is None:
                raise ConversationConflict(cid)  # another writer created it first
            snap = res.current
            stored = None if snap is None else self._record_of(snap)
            if stored is None or stored.revision != expected_revision:
                raise ConversationConflict(cid)
            # only a title/metadata update came in between: the revision still holds

    async def write_details(
        self,
        conversation_id: str,
        details: ConversationDetails,
        *,
        expected_revision: str,
        expected: Optional[ConversationDetails] = None,
    ) -> ConversationRecord:
        store = await self._ctx()
        key = self._record_key(conversation_id)
        snap = await store.get(key)
        while True:
            stored = None if snap is None else self._record_of(snap)
            if snap is None or stored is None or stored.revision != expected_revision:
                raise ConversationConflict(conversation_id)
            if expected and any(getattr(stored, k) != v for k, v in expected.items()):
                raise ConversationConflict(conversation_id)
            changed = dataclasses.replace(stored, **details)
            try:
                res = await self._cas(key, snap.version,
                                      self._record_message(changed, self._refreshed_of(snap)),
                                      RECORD_SCHEMA, snap.incarnation)
            except ContextReplacedError as e:
                raise ConversationConflict(conversation_id) from e
            if res.ok:
                return changed
            snap = res.current

    async def delete_record(self, conversation_id: str, *, expected_revision: str) -> None:
        store = await self._ctx()
        key = self._record_key(conversation_id)
        snap = await store.get(key)
        while True:
            if snap is None or self._record_of(snap).revision != expected_revision:
                raise ConversationConflict(conversation_id)
            try:
                res = await store.delete(key, snap.version, incarnation=snap.incarnation)
            except ContextReplacedError as e:
                raise ConversationConflict(conversation_id) from e
            if res.ok:
                return
            snap = res.current  # a title/metadata update in between: check the revision again

    async def read_entry(self, entry_id: str) -> ConversationEntry:
        return (await self._read_raw(entry_id))[0]

    async def _read_raw(self, entry_id: str) -> tuple[ConversationEntry, list[str]]:
        snap = await (await self._ctx()).get(self._entry_key(entry_id))
        if snap is None:
            raise KeyError(entry_id)
        message = snap.decode(EntryMessage)
        return _ENTRY_ADAPTER.validate_json(message.data), list(message.ancestors)

    async def read_history(self, head_id: Optional[str], *,
                           limit: Optional[int] = None) -> list[ConversationEntry]:
        """As the base class's, in ``len/(ANCESTORS+1)`` rounds instead of one read per entry:
        each entry lists its nearest ancestors, which are then read at once."""
        entries: list[ConversationEntry] = []
        next_id = head_id
        while next_id is not None and (limit is None or len(entries) < limit):
            entry, chain = await self._read_raw(next_id)
            entries.append(entry)
            if limit is not None:
                chain = chain[:limit - len(entries)]
            if not chain:
                next_id = entry.parent_id
                continue
            fetched = await asyncio.gather(*(self._read_raw(a) for a in chain))
            entries.extend(e for e, _ in fetched)
            next_id = fetched[-1][0].parent_id
        entries.reverse()
        return entries


#: how many ancestor ids an entry lists (read_history reads that many at once)
ANCESTORS = 16

def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
