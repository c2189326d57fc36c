"""``store.wait(key, after_version, timeout)``: block until a context's version is above
``after_version`` (docs/PROTOCOL.md, "CTX.WAIT").

- Module engine: one blocking ``CTX.WAIT key after_version timeout_ms`` (:func:`op_wait_module`,
  a sans-I/O operation both front ends run). The server wakes the client on every write and
  deletion, expiry and eviction included.
- Lua engine: the scripts publish on the key's wait channel (:func:`wait_channel`) after every
  write and delete. The waiter subscribes on a connection of its own, then re-reads the context,
  then re-reads it on every message and at least once a second (an expiry publishes nothing).
  :func:`wait_lua_sync` and :func:`wait_lua_async` are the two drivers of the one decision
  logic, :class:`WaitCheck`.

Either way: the Snapshot once the version is above ``after_version``, ``None`` at the timeout,
:class:`~ctxlink.NotFoundError` when the context was deleted meanwhile (or is absent at the call
with ``after_version`` > 0; absent with ``after_version`` 0 waits for its creation).
"""

from __future__ import annotations

import math
import time
from typing import Any, Awaitable, Callable, Optional

from redis.exceptions import ResponseError

from ctxlink._exceptions import ArgumentError, NotFoundError
from ctxlink._instr import Cmd, Op
from ctxlink._protocol import parse_state, wait_channel
from ctxlink._state import State
from ctxlink._types import Snapshot
from ctxlink._write import check_key, op_get

__all__ = [
    "CHECK_EVERY",
    "WaitCheck",
    "check_wait_args",
    "op_wait_module",
    "socket_timeout",
    "wait_channel",
    "wait_lua_async",
    "wait_lua_sync",
]

#: The Lua engine's waiter re-reads the context at least this often (seconds): expiry and
#: eviction publish nothing, and a writer without the channel in its ACL cannot publish.
CHECK_EVERY = 1.0
#: CTX.WAIT's largest timeout_ms (2^40 ms, about 34 years); longer waits are "forever".
_MAX_TIMEOUT_MS = 1 << 40
_MAX_AFTER = (1 << 63) - 2
_DELETED = "CTXDELETED"


def check_wait_args(key: Any, after_version: Any, timeout: Any) -> Optional[float]:
    """Checks the arguments before anything is sent; returns the timeout as a float (None:
    forever). ``TypeError`` for a key that is not str/bytes, :class:`ArgumentError` (a
    ``ValueError``) for a bad ``after_version`` or ``timeout``."""
    check_key(key)
    if type(after_version) is not int or not 0 <= after_version <= _MAX_AFTER:
        raise ArgumentError(
            f"after_version must be an int from 0 to {_MAX_AFTER}, not {after_version!r}")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentError(
            f"timeout must be a number of seconds >= 0 or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ArgumentError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    if math.isinf(timeout) or timeout * 1000 >= _MAX_TIMEOUT_MS:
        return None
    return float(timeout)


def _deleted(key: Any) -> NotFoundError:
    return NotFoundError(f"the context {key!r} was deleted while waiting")


class WaitCheck:
    """What a waiter decides from each read, without I/O: :meth:`see` returns the snapshot once
    its version is above ``after``, None to keep waiting, or raises :class:`NotFoundError`
    when the context it started from is gone (absent, a lower version, another incarnation)."""

    __slots__ = ("key", "after", "deadline", "_seen", "_incarnation", "_version")

    def __init__(self, key: Any, after: int, timeout: Optional[float], now: float) -> None:
        self.key = key
        self.after = after
        self.deadline = None if timeout is None else now + timeout
        self._seen = False  # a context was seen at some read
        self._incarnation = ""
        self._version = 0

    def see(self, snap: Optional[Snapshot]) -> Optional[Snapshot]:
        if snap is None:
            if self._seen:
                raise _deleted(self.key)
            if self.after > 0:
                raise NotFoundError(f"no context at {self.key!r} (after_version > 0)")
            return None
        incarnation = getattr(snap, "incarnation", "") or ""
        if self._seen and (
            snap.version < self._version
            or (incarnation and self._incarnation and incarnation != self._incarnation)
        ):
            raise _deleted(self.key)
        self._seen = True
        self._incarnation = incarnation
        self._version = snap.version
        return snap if snap.version > self.after else None

    def next_wait(self, now: float) -> Optional[float]:
        """Seconds to wait for a message before the next read (at most :data:`CHECK_EVERY`),
        or None when the timeout has passed."""
        if self.deadline is None:
            return CHECK_EVERY
        left = self.deadline - now
        if left <= 0:
            return None
        return min(left, CHECK_EVERY)


# ---------------------------------------------------------------------------------------------
# module engine


def socket_timeout(client: Any) -> Optional[float]:
    """The client's ``socket_timeout`` (seconds), None when it has none (or it is unknown)."""
    kwargs: Any = None
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", None)
    elif hasattr(client, "get_connection_kwargs"):  # redis.cluster.RedisCluster
        kwargs = client.get_connection_kwargs()
    else:
        kwargs = getattr(client, "connection_kwargs", None)  # redis.asyncio.cluster
    value = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def op_wait_module(
    st: State, key: Any, after: int, timeout: Optional[float], slice_s: Optional[float] = None
) -> Op[Optional[Snapshot]]:
    """``CTX.WAIT``: one command, or with ``slice_s`` (half the client's socket timeout) one
    per slice, a read between slices (a deletion between two slices is then seen too).
    ``timeout`` 0 is one read, no blocking."""
    check = WaitCheck(key, after, timeout, time.monotonic())
    if timeout == 0:
        return check.see((yield from op_get(st, key)))
    while True:
        left = None if check.deadline is None else check.deadline - time.monotonic()
        span = left if slice_s is None else (slice_s if left is None else min(left, slice_s))
        ms = 0 if span is None else max(1, math.ceil(span * 1000))
        try:
            reply = yield Cmd(("CTX.WAIT", key, after, ms))
        except ResponseError as exc:
            text = str(exc)
            if text.startswith(_DELETED):
                raise NotFoundError(text) from exc
            raise
        if reply is not None or slice_s is None:
            return check.see(parse_state(reply)) if reply is not None else None
        found = check.see((yield from op_get(st, key)))
        if found is not None:
            return found
        if check.next_wait(time.monotonic()) is None:
            return None


# ---------------------------------------------------------------------------------------------
# Lua engine: the pub/sub drivers


def _is_subscribed(msg: Any) -> bool:
    return isinstance(msg, dict) and msg.get("type") in (
        "subscribe", "ssubscribe", b"subscribe", b"ssubscribe")


def _node_client_sync(client: Any, key: Any) -> Any:
    """The plain client a waiter subscribes on: the client itself, or on a Redis Cluster the
    client of the primary serving the key's slot."""
    if hasattr(client, "get_node_from_key"):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def _subscribe_sync(r: Any, st: State, channel: bytes, shard: bool) -> Any:
    """A PubSub subscribed to ``channel``, the subscription confirmed (so no write after this
    returns is missed)."""
    use_shard = shard and st.wait_sharded is not False
    ps = r.pubsub()
    try:
        (ps.ssubscribe if use_shard else ps.subscribe)(channel)
        while True:
            msg = ps.get_message(timeout=CHECK_EVERY)
            if _is_subscribed(msg):
                break
        if use_shard:
            st.wait_sharded = True
        return ps
    except ResponseError as exc:
        ps.close()
        if not use_shard or "unknown command" not in str(exc).lower():
            raise
    st.wait_sharded = False  # Redis 6.2: the scripts PUBLISH
    return _subscribe_sync(r, st, channel, False)


def wait_lua_sync(
    client: Any, st: State, key: Any, after: int, timeout: Optional[float],
    read: Callable[[], Optional[Snapshot]],
) -> Optional[Snapshot]:
    """The Lua engine's wait, on a redis-py client; ``read`` is the Store's ``get(key)``."""
    check = WaitCheck(key, after, timeout, time.monotonic())
    if timeout == 0:
        return check.see(read())
    channel, shard = wait_channel(key)
    ps = _subscribe_sync(_node_client_sync(client, key), st, channel, shard)
    try:
        found = check.see(read())
        while found is None:
            wait = check.next_wait(time.monotonic())
            if wait is None:
                return None
            ps.get_message(ignore_subscribe_messages=True, timeout=wait)
            found = check.see(read())
        return found
    finally:
        ps.close()


async def _node_client_async(client: Any, key: Any) -> tuple[Any, bool]:
    """As :func:`_node_client_sync` for redis.asyncio; True when the client is ours to close."""
    if hasattr(client, "get_node_from_key"):
        import redis.asyncio as aioredis

        node = client.get_node_from_key(key)
        kwargs = dict(getattr(node, "connection_kwargs", {}))
        kwargs.setdefault("host", node.host)
        kwargs.setdefault("port", node.port)
        pool = aioredis.ConnectionPool(
            connection_class=getattr(node, "connection_class", aioredis.Connection), **kwargs)
        return aioredis.Redis.from_pool(pool), True  # closes the pool with the client
    return client, False


async def _subscribe_async(r: Any, st: State, channel: bytes, shard: bool) -> Any:
    use_shard = shard and st.wait_sharded is not False
    ps = r.pubsub()
    try:
        await (ps.ssubscribe if use_shard else ps.subscribe)(channel)
        while True:
            msg = await ps.get_message(timeout=CHECK_EVERY)
            if _is_subscribed(msg):
                break
        if use_shard:
            st.wait_sharded = True
        return ps
    except ResponseError as exc:
        await ps.aclose()
        if not use_shard or "unknown command" not in str(exc).lower():
            raise
    st.wait_sharded = False
    return await _subscribe_async(r, st, channel, False)


async def wait_lua_async(
    client: Any, st: State, key: Any, after: int, timeout: Optional[float],
    read: Callable[[], Awaitable[Optional[Snapshot]]],
) -> Optional[Snapshot]:
    """:func:`wait_lua_sync` on a redis.asyncio client."""
    check = WaitCheck(key, after, timeout, time.monotonic())
    if timeout == 0:
        return check.see(await read())
    channel, shard = wait_channel(key)
    r, owned = await _node_client_async(client, key)
    try:
        ps = await _subscribe_async(r, st, channel, shard)
        try:
            found = check.see(await read())
            while found is None:
                wait = check.next_wait(time.monotonic())
                if wait is None:
                    return None
                await ps.get_message(ignore_subscribe_messages=True, timeout=wait)
                found = check.see(await read())
            return found
        finally:
            await ps.aclose()
    finally:
        if owned:
            await r.aclose()
