"""What one Store remembers between calls: the engine, the limits the Lua engine enforces, and
its caches (version field and message type per schema, schema per context key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ctxlink._cache import LRU
from ctxlink._lua import Script
from ctxlink._protocol import LUA
from ctxlink._types import Backoff, Snapshot


@dataclass
class State:
    """Engine choice, limits the Lua engine enforces, and the caches of one Store."""

    engine: str
    cluster: bool = False
    max_payload_bytes: int = 1048576
    max_depth: int = 32
    unknown_fields: str = "reject"
    max_schema_bytes: int = 4194304
    scripts: dict[str, Script] = field(default_factory=dict)
    # schema name -> version field name (from register_schema or the registry)
    vfield_by_schema: dict[str, str] = field(default_factory=dict)
    # message full name -> version field name (from register_schema)
    vfield_by_type: dict[str, str] = field(default_factory=dict)
    # schema name -> message type full name (register_schema or the registry's ``type``)
    type_by_schema: dict[str, str] = field(default_factory=dict)
    # schema name -> its registry entry's ``history`` (Lua engine: KEYS[2] of writes; _history)
    history_by_schema: dict[str, int] = field(default_factory=dict)
    # schema name -> its registry entry's ``feed`` (Lua engine: the last KEYS of writes; _feed)
    feed_by_schema: dict[str, int] = field(default_factory=dict)
    # whether the server (and the user's ACL) takes EVAL_RO / EVALSHA_RO (Redis 7+); None:
    # unknown (the Lua engine's read-only scripts, _lua._run; store.changes, _feed)
    eval_ro: Optional[bool] = None
    # context key -> schema name (Lua engine: cas needs the registry key)
    key_schema: LRU[Any, str] = field(default_factory=lambda: LRU(4096))
    # context key -> the newest version an append saw (the base of the next append; _append)
    append_base: LRU[Any, int] = field(default_factory=lambda: LRU(4096))
    backoff: Backoff = field(default_factory=Backoff)
    # connect(local_check=True): a ctxlink._local.LocalValidator, None when off or not built
    local: Any = None
    # store.wait on the Lua engine: whether the server takes SSUBSCRIBE (Redis 7+); None: unknown
    wait_sharded: Optional[bool] = None
    local_limits_read: bool = False
    stale_after_ms: Optional[float] = None  # connect(stale_after_ms=...): ctxlink._telemetry

    def remember_schema(self, key: Any, snap: Optional[Snapshot]) -> None:
        if self.engine == LUA:
            if snap is None:
                self.key_schema.pop(key)
            else:
                self.key_schema.put(key, snap.schema)
