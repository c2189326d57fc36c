"""Sending one write exactly once: the SDK owns every re-send of a write.

redis-py re-sends a command after a timeout or a dropped connection (redis-py 6+ does so three
times by default, the cluster client on top of that). For a write that may have landed, the SDK
must know about every re-send: it decides, with the write id and the server's window, whether the
write was applied (docs/PROTOCOL.md, "Write ids"). So writes go out here, once, on a pooled
connection and without redis-py's retry wrapper; a transport error reaches the caller, which
re-sends the same attempt itself (same payload, same write id).

- ``redis.Redis``: a connection from its pool (or its single connection, under its lock).
- ``redis.cluster.RedisCluster``: the node that owns the key, through that node's ``redis.Redis``;
  ``MOVED`` refreshes the slot map and ``ASK`` sends ``ASKING`` first, on the same connection
  (neither ran the command, so following them is not a re-send).
- ``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster``: the same, awaited.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["TRANSPORT_ERRORS", "send_write", "send_write_async"]

#: What a lost reply looks like: the command may or may not have run.
TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

_REDIRECTS = 5


def _send_once(conn: Any, args: tuple[Any, ...], asking: bool = False) -> Any:
    try:
        if asking:
            conn.send_command("ASKING")
            conn.read_response()
        conn.send_command(*args)
        return conn.read_response()
    except TRANSPORT_ERRORS:
        conn.disconnect()
        raise


def _send_plain(client: Any, args: tuple[Any, ...], asking: bool = False) -> Any:
    single = getattr(client, "connection", None)
    if single is not None:  # single_connection_client=True
        lock = getattr(client, "single_connection_lock", None)
        if lock is None:
            return _send_once(single, args, asking)
        with lock:
            return _send_once(single, args, asking)
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        return _send_once(conn, args, asking)
    finally:
        pool.release(conn)


def send_write(client: Any, key: Any, args: tuple[Any, ...]) -> Any:
    """Sends ``args`` (a write on ``key``) once; returns the reply or raises (a transport error
    means the outcome is unknown: the caller re-sends the same attempt)."""
    if not hasattr(client, "nodes_manager"):
        return _send_plain(client, args)
    node = client.get_node_from_key(key)
    asking = False
    for _ in range(_REDIRECTS):
        try:
            return _send_plain(client.get_redis_connection(node), args, asking)
        except MovedError:
            client.nodes_manager.initialize()
            node, asking = client.get_node_from_key(key), False
        except AskError as exc:
            node = client.nodes_manager.get_node(host=exc.host, port=exc.port) or node
            asking = True
    return _send_plain(client.get_redis_connection(node), args, asking)


async def _send_once_async(conn: Any, args: tuple[Any, ...]) -> Any:
    try:
        await conn.send_command(*args)
        return await conn.read_response()
    except BaseException:  # a transport error or a cancellation mid-reply: the link is unusable
        await conn.disconnect()
        raise


async def send_write_async(client: Any, key: Any, args: tuple[Any, ...]) -> Any:
    """The asyncio twin of :func:`send_write`."""
    if hasattr(client, "nodes_manager"):
        await client.initialize()
        node = client.get_node_from_key(key)
        asking = False
        for _ in range(_REDIRECTS + 1):
            try:  # ClusterNode.execute_command sends once (retries live in RedisCluster)
                return await node.execute_command(*args, asking=asking)
            except MovedError:
                await client.nodes_manager.initialize()
                node, asking = client.get_node_from_key(key), False
            except AskError as exc:
                node = client.nodes_manager.get_node(host=exc.host, port=exc.port) or node
                asking = True
        return await node.execute_command(*args, asking=asking)
    await client.initialize()  # a single-connection client connects here
    single = getattr(client, "connection", None)
    if single is not None:
        lock = getattr(client, "_single_conn_lock", None)
        if lock is None or not getattr(client, "single_connection_client", False):
            return await _send_once_async(single, args)
        async with lock:
            return await _send_once_async(single, args)
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        return await _send_once_async(conn, args)
    finally:
        await pool.release(conn)
