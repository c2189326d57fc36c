"""Redis Cluster: the registry's per-slot copies (slot tags, which copy a key reads) and the
keyless commands sent to several nodes (which nodes, merging their replies)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ctxlink._exceptions import CtxError, EngineError
from ctxlink._protocol import SCHEMA_PREFIX, SCHEMAS_KEY, _bytes

if TYPE_CHECKING:
    from ctxlink._state import State


def registry_key(name: str) -> str:
    return SCHEMA_PREFIX + name


_SLOT_TAGS: list[str] = []


def _slot_tag(slot: int) -> str:
    """The smallest decimal integer whose CRC16 lands in ``slot`` (docs/PROTOCOL.md)."""
    if not _SLOT_TAGS:
        import binascii

        tags: list[Optional[str]] = [None] * 16384
        missing, n = 16384, 0
        while missing:
            t = str(n)
            slot_n = binascii.crc_hqx(t.encode(), 0) & 16383
            if tags[slot_n] is None:
                tags[slot_n] = t
                missing -= 1
            n += 1
        _SLOT_TAGS.extend(t for t in tags if t is not None)
    return _SLOT_TAGS[slot]


def registry_copies(st: "State", name: str) -> list[tuple[str, str]]:
    """(entry, index) of every copy of the registry: one on a standalone server, one per slot on
    a cluster (docs/PROTOCOL.md, "Redis Cluster")."""
    if not st.cluster:
        return [(registry_key(name), SCHEMAS_KEY)]
    tags = (_slot_tag(slot) for slot in range(16384))
    return [(f"__ctx:{{{t}}}:schema:{name}", f"__ctx:{{{t}}}:schemas") for t in tags]


def registry_tag(st: "State", key: Any) -> str:
    """The slot tag of ``key``'s registry copy on a cluster ("" on a standalone server)."""
    if not st.cluster or key is None:
        return ""
    from redis.crc import key_slot

    return _slot_tag(key_slot(_bytes(key)))


def registry_key_for(st: "State", name: str, key: Any) -> str:
    """The registry entry a command on ``key`` reads: on a cluster, the copy in ``key``'s slot."""
    tag = registry_tag(st, key)
    return f"__ctx:{{{tag}}}:schema:{name}" if tag else registry_key(name)


def cluster_targets(client: Any, nodes: str) -> list[Any]:
    """The ClusterNodes of a RedisCluster (sync or asyncio) a keyless command goes to."""
    if nodes == "primaries":
        return list(client.get_primaries())
    return [client.get_random_node()]


def merge_node_replies(results: list[tuple[str, Any]]) -> Any:
    """The reply of a schema command sent to several cluster nodes: every node must have
    answered, and the same (integers: the highest). Otherwise an error that says which nodes did
    what (a schema write that reached only some primaries must be repeated: it is idempotent)."""
    failed = [(node, r) for node, r in results if isinstance(r, BaseException)]
    if failed:
        done = [node for node, r in results if not isinstance(r, BaseException)]
        first = failed[0][1]
        if not done:  # failed everywhere: the error as it is
            raise first
        detail = "; ".join(f"{node}: {r}" for node, r in failed)
        text = f"{first} [failed on {detail}; succeeded on {', '.join(done) or 'none'}]"
        if isinstance(first, CtxError):
            raise type(first)(text) from first
        raise EngineError(text) from first
    replies = [r for _, r in results]
    if all(type(r) is int for r in replies):
        # revisions (CTX.SCHEMA.SET) and counts (CTX.SCHEMA.DEL) are per node: a node that took
        # a registration the others missed keeps its own; the write landed everywhere
        return max(replies)
    if any(r != replies[0] for r in replies[1:]):
        raise EngineError(
            "cluster primaries answered differently: "
            + "; ".join(f"{node}: {r!r}" for node, r in results)
        )
    return replies[0]
