"""Value types returned by the SDK (shared by the sync and asyncio front ends)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Generic, Iterator, NamedTuple, Optional, TypeVar, Union

from google.protobuf.message import Message

__all__ = ["Snapshot", "CasResult", "Updated", "M", "new_snapshot", "new_cas_result"]

M = TypeVar("M", bound=Message)


class Snapshot(NamedTuple):
    """One stored state of a context, as ``CTX.GET`` returns it.

    Immutable (a named tuple: assigning an attribute raises ``AttributeError``); compares, hashes
    and prints by its fields.
    """

    version: int
    raw: bytes
    schema: str
    updated_ms: int
    updated_by: str

    def decode(self, message_class: type[M]) -> M:
        """Parses ``raw`` into a new ``message_class`` instance."""
        msg: M = message_class()
        msg.ParseFromString(self[1])
        return msg


class CasResult(NamedTuple):
    """Outcome of ``cas`` / ``delete``.

    - ``ok`` True: the write happened; ``version`` is the new version (0 after a delete) and
      ``current`` is None.
    - ``ok`` False: a conflict; ``current`` is the state the server holds now (None when there is
      no context) and ``version`` its version (0 when absent).

    Immutable (a named tuple); its truth value is ``ok``.
    """

    ok: bool
    version: int
    current: Optional[Snapshot] = None

    def __bool__(self) -> bool:
        return self[0]


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


#: ``new_snapshot((version, raw, schema, updated_ms, updated_by))``: builds a Snapshot from a
#: ready tuple without the keyword handling of ``Snapshot(...)`` (the SDK's hot paths).
new_snapshot: Callable[[tuple[int, bytes, str, int, str]], Snapshot] = partial(
    tuple.__new__, Snapshot
)
new_cas_result: Callable[[tuple[bool, int, Optional[Snapshot]]], CasResult] = partial(
    tuple.__new__, CasResult
)
