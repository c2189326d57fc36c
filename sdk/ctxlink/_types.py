"""Value types returned by the SDK (shared by the sync and asyncio front ends)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, Optional, TypeVar, Union

from google.protobuf.message import Message

__all__ = ["Snapshot", "CasResult", "Updated", "M"]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Snapshot:
    """One stored state of a context, as ``CTX.GET`` returns it."""

    version: int
    raw: bytes
    schema: str
    updated_ms: int
    updated_by: str

    def decode(self, message_class: type[M]) -> M:
        """Parses ``raw`` into a new ``message_class`` instance."""
        msg: M = message_class()
        msg.ParseFromString(self.raw)
        return msg


@dataclass(frozen=True)
class CasResult:
    """Outcome of ``cas`` / ``delete``.

    - ``ok`` True: the write happened; ``version`` is the new version (0 after a delete) and
      ``current`` is None.
    - ``ok`` False: a conflict; ``current`` is the state the server holds now (None when there is
      no context) and ``version`` its version (0 when absent).
    """

    ok: bool
    version: int
    current: Optional[Snapshot] = None

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Updated(Generic[M]):
    """What ``update`` returns: the version it wrote and the message it wrote (version field set).

    Unpacks like a tuple: ``version, order = store.update(...)``. ``raw`` is the exact payload
    stored, ``attempts`` how many CAS calls it took.
    """

    version: int
    message: M
    raw: bytes
    schema: str
    attempts: int = 1

    def __iter__(self) -> Iterator[Union[int, M]]:
        yield self.version
        yield self.message
