"""The instructions a sans-I/O operation yields, and the type of an operation.

An operation is a generator that *yields instructions* (:class:`Cmd`, :class:`LoadScript`,
:class:`Sleep`, :class:`Await`, :class:`Write`) and receives their results through ``send`` (or
an exception through ``throw``). It returns the operation's result with ``StopIteration.value``.
The front ends (:mod:`ctxlink._sync`, :mod:`ctxlink.aio`) only run the loop: the sync one calls
the client, the asyncio one awaits it. Nothing in the operations touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Optional, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Cmd:
    """Send one command; ``nodes`` ("primaries" / "random") only matters on a Redis Cluster."""

    args: tuple[Any, ...]
    nodes: Optional[str] = None
    #: made on the way to a write (see :func:`_reads_not_sent`): a transport error is thrown
    #: into the operation instead of ending it
    settle: bool = False


@dataclass(frozen=True)
class LoadScript:
    """``SCRIPT LOAD`` a source (on every primary of a cluster); the result is its SHA-1."""

    source: bytes
    settle: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Await:
    """Await ``awaitable`` (what ``update``'s function returned) and send back its result. The
    asyncio front end awaits it; the sync one closes it and throws ``TypeError`` into the op."""

    awaitable: Any


@dataclass(frozen=True)
class Write:
    """Send one write on ``key`` exactly once: the front end sends it on a connection it owns,
    without redis-py's retries (:mod:`ctxlink._send`), and throws a transport error (the reply was
    lost: the write may have landed) back into the operation, which re-sends the same attempt."""

    key: Any
    args: tuple[Any, ...]


Instr = Union[Cmd, LoadScript, Sleep, Await, Write]
Op = Generator[Instr, Any, T]
