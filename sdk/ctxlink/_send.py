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

A write that cannot get a connection (connecting or reconnecting fails) was not sent:
:class:`WriteNotSent`, which the caller does not count as a possibly landed write. Connecting
follows the client's own settings (``socket_connect_timeout``, ``socket_timeout``, ``retry``):
with redis-py's default ``Retry`` one reconnect to a frozen server can take seconds, and
``update(timeout=...)`` is checked between re-sends, not inside one. For tight deadlines give the
client ``retry=Retry(NoBackoff(), 0)``: the SDK re-sends writes itself anyway.
"""

from __future__ import annotations

import inspect
from typing import Any

from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["TRANSPORT_ERRORS", "WriteNotSent", "send_write", "send_write_async"]

#: What a lost reply looks like: the command may or may not have run.
TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class WriteNotSent(RedisConnectionError):
    """No connection could be had (connecting or reconnecting failed): the write was not sent,
    so it certainly did not run. Its ``__cause__`` is the client's error."""


def _not_sent(exc: BaseException) -> WriteNotSent:
    err = WriteNotSent(f"the write was not sent: {exc}")
    err.__cause__ = exc
    return err

_REDIRECTS = 5

#: pool class -> whether its get_connection needs a command name (redis-py 5; 6+ warns on one)
_NEEDS_NAME: dict[type, bool] = {}


def _get_args(pool: Any) -> tuple[Any, ...]:
    cls = type(pool)
    needs = _NEEDS_NAME.get(cls)
    if needs is None:
        try:
            param = inspect.signature(cls.get_connection).parameters.get("command_name")
        except (TypeError, ValueError):  # pragma: no cover - not introspectable
            param = None
        needs = param is not None and param.default is inspect.Parameter.empty
        _NEEDS_NAME[cls] = needs
    return ("_",) if needs else ()


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


def _connected(conn: Any) -> None:
    try:
        conn.connect()  # a no-op when connected
    except TRANSPORT_ERRORS as exc:
        raise _not_sent(exc) from exc


def _send_plain(client: Any, args: tuple[Any, ...], asking: bool = False) -> Any:
    single = getattr(client, "connection", None)
    if single is not None:  # single_connection_client=True
        lock = getattr(client, "single_connection_lock", None)
        if lock is None:
            _connected(single)
            return _send_once(single, args, asking)
        with lock:
            _connected(single)
            return _send_once(single, args, asking)
    pool = client.connection_pool
    try:
        conn = pool.get_connection(*_get_args(pool))  # connects it: nothing sent yet
    except TRANSPORT_ERRORS as exc:
        raise _not_sent(exc) from exc
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


async def _connected_async(conn: Any) -> None:
    try:
        await conn.connect()
    except TRANSPORT_ERRORS as exc:
        raise _not_sent(exc) from exc


async def _send_once_async(conn: Any, args: tuple[Any, ...]) -> Any:
    try:
        await conn.send_command(*args)
        return await conn.read_response()
    except BaseException:  # a transport error or a cancellation mid-reply: the link is unusable
        await conn.disconnect()
        raise


async def _send_node_async(node: Any, args: tuple[Any, ...], asking: bool) -> Any:
    """Sends once to an asyncio cluster node; after ``ASK``, ``ASKING`` goes first on the same
    connection (``ClusterNode.execute_command`` does not send it)."""
    if not asking:
        return await node.execute_command(*args)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(conn.pack_commands([("ASKING",), args]))
        await conn.read_response()
        return await conn.read_response()
    except BaseException:  # a transport error or a cancellation mid-reply: the link is unusable
        await conn.disconnect()
        raise
    finally:
        release = getattr(node, "release", None)
        if release is not None:
            release(conn)
        else:  # redis-py < 8
            node._free.append(conn)


async def send_write_async(client: Any, key: Any, args: tuple[Any, ...]) -> Any:
    """The asyncio twin of :func:`send_write`."""
    if hasattr(client, "nodes_manager"):
        await client.initialize()
        node = client.get_node_from_key(key)
        asking = False
        for _ in range(_REDIRECTS + 1):
            try:  # ClusterNode.execute_command sends once (retries live in RedisCluster)
                return await _send_node_async(node, args, asking)
            except MovedError:
                await client.nodes_manager.initialize()
                node, asking = client.get_node_from_key(key), False
            except AskError as exc:
                node = client.nodes_manager.get_node(host=exc.host, port=exc.port) or node
                asking = True
        return await _send_node_async(node, args, asking)
    try:
        await client.initialize()  # a single-connection client connects here
    except TRANSPORT_ERRORS as exc:
        raise _not_sent(exc) from exc
    single = getattr(client, "connection", None)
    if single is not None:
        lock = getattr(client, "_single_conn_lock", None)
        if lock is None or not getattr(client, "single_connection_client", False):
            await _connected_async(single)
            return await _send_once_async(single, args)
        async with lock:
            await _connected_async(single)
            return await _send_once_async(single, args)
    pool = client.connection_pool
    try:
        conn = await pool.get_connection(*_get_args(pool))
    except TRANSPORT_ERRORS as exc:
        raise _not_sent(exc) from exc
    try:
        return await _send_once_async(conn, args)
    finally:
        await pool.release(conn)
