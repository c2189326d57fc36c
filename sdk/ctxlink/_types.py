"""Value types returned by the SDK (shared by the sync and asyncio front ends)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Generic, Iterator, NamedTuple, Optional, TypeVar, Union, cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from redis.backoff import ExponentialBackoff, FullJitterBackoff

from ctxlink._cache import LRU
from ctxlink._exceptions import MessageTypeError

__all__ = [
    "Snapshot",
    "CasResult",
    "Updated",
    "Backoff",
    "M",
    "new_snapshot",
    "new_cas_result",
    "note_schema_type",
]

M = TypeVar("M", bound=Message)


def descriptor_of(message: Union[Message, type[Message]]) -> Descriptor:
    """A message's (or message class's) descriptor. types-protobuf types ``DESCRIPTOR`` as
    ``Descriptor | google._upb._message.Descriptor``; with the upb backend the latter is what
    it is at run time, and ``google.protobuf.descriptor.Descriptor`` accepts it
    (``isinstance`` holds, same attributes), so it is typed as the one class here."""
    return cast(Descriptor, message.DESCRIPTOR)

#: schema name -> message type full name, as the Stores of this process last learned it
#: (register_schema, or the registry read by update/cas/migrate); used by Snapshot.decode
_SCHEMA_TYPES: LRU[str, str] = LRU(4096)
#: (schema name, message class) pairs Snapshot.decode already accepted: checked once each
_DECODE_OK: LRU[tuple[str, type], bool] = LRU(1024)


def note_schema_type(schema: str, type_name: str) -> None:
    """Records the message type schema ``schema`` stores (for :meth:`Snapshot.decode`)."""
    if _SCHEMA_TYPES.get(schema) == type_name:
        return
    _SCHEMA_TYPES.put(schema, type_name)
    _DECODE_OK.clear()  # judge again with what is known now


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
    #: the context's incarnation: 16 lowercase hex digits minted when it was created (kept by
    #: every write; a context deleted and created again has another one); "" for a value an
    #: older module or SDK wrote (storage format v1/v2) until its next write
    incarnation: str = ""

    def decode(self, message_class: type[M]) -> M:
        """Parses ``raw`` into a new ``message_class`` instance.

        Raises :class:`~ctxlink.MessageTypeError` instead of returning a wrong message when
        ``message_class`` is not the schema's type, as far as the SDK can tell without I/O:
        when it knows the schema's message type (a Store of this process registered the schema
        or read its type from the registry in ``update``/``cas``/``migrate``) and the class's full
        name differs, or when no field of the payload is known to the class (a stored payload
        always has its version field). A class of the same type that lacks fields a newer schema
        revision added is accepted (they stay unknown fields). When the SDK knows nothing of the
        schema, a class of another type that happens to know every field present decodes.
        """
        raw = self[1]
        msg: M = message_class()
        msg.ParseFromString(raw)
        if _DECODE_OK.get((self[2], message_class)):
            return msg
        if raw and not msg.ListFields():
            got = message_class.DESCRIPTOR.full_name
            expected = _SCHEMA_TYPES.get(self[2])
            want = f"{expected} " if expected else ""
            raise MessageTypeError(
                f"the payload of schema {self[2]!r} has no field {got} knows: decode it "
                f"with the schema's {want}message class",
                expected or "",
                got,
            )
        expected = _SCHEMA_TYPES.get(self[2])
        if expected is not None:
            got = message_class.DESCRIPTOR.full_name
            if got != expected:
                raise MessageTypeError(
                    f"schema {self[2]!r} stores {expected} messages, not {got}: decode with "
                    f"the class generated for {expected}",
                    expected,
                    got,
                )
        if raw:
            _DECODE_OK.put((self[2], message_class), True)
        return msg


class CasResult(NamedTuple):
    """Outcome of ``cas`` / ``delete``.

    - ``ok`` True: the write happened; ``version`` is the new version (0 after a delete) and
      ``current`` is None.
    - ``ok`` False: a conflict; ``current`` is the state the server holds now (None when there is
      no context) and ``version`` its version (0 when absent).
    - ``replayed`` True: this write id had been applied already (the SDK's re-send after a lost
      reply, or the same ``write_id`` given twice); nothing was written again and ``version`` is
      the version that write produced. A re-sent ``delete`` that finds no context is ``ok`` and
      ``replayed`` too: the context is gone either way.
    - ``changed``: on a conflict of a field patch, the names of the writer's fields that another
      writer changed.

    Immutable (a named tuple); its truth value is ``ok``.
    """

    ok: bool
    version: int
    current: Optional[Snapshot] = None
    replayed: bool = False
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self[0]


@dataclass(frozen=True)
class Updated(Generic[M]):
    """What ``update`` returns: the version it wrote and the message it wrote (version field set).

    Unpacks like a tuple: ``version, order = store.update(...)``. ``raw`` is the exact payload
    stored (after a field patch: the server's merge of the fields written into the state it held)
    and ``message`` that payload decoded; ``attempts`` is how many times ``fn`` was called. When
    ``fn`` changed nothing under ``reads=``, nothing was written: ``version`` and ``raw`` are the
    state ``fn`` saw.
    """

    version: int
    message: M
    raw: bytes
    schema: str
    attempts: int = 1

    def __iter__(self) -> Iterator[Union[int, M]]:
        yield self.version
        yield self.message


#: ``new_snapshot((version, raw, schema, updated_ms, updated_by, incarnation))``: builds a
#: Snapshot from a ready tuple without the keyword handling of ``Snapshot(...)`` (hot paths).
new_snapshot: Callable[[tuple[int, bytes, str, int, str, str]], Snapshot] = partial(
    tuple.__new__, Snapshot
)
new_cas_result: Callable[
    [tuple[bool, int, Optional[Snapshot], bool, tuple[str, ...]]], CasResult
] = partial(tuple.__new__, CasResult)


#: The largest exponent used: base * 2**60 is past any sensible cap (and 2**failures must stay a
#: float-sized number on redis-py 5, whose backoff multiplies a float by it).
_MAX_DOUBLINGS = 60


@dataclass(frozen=True)
class Backoff:
    """How long ``update`` waits before retrying after a conflict (or before re-sending after a
    lost reply): "full jitter", a uniform draw in ``[0, min(cap, base * 2 ** (n - 1))]`` seconds
    after the n-th retry (redis-py's ``FullJitterBackoff``). Defaults: 1 ms doubling up to
    50 ms."""

    base: float = 0.001
    cap: float = 0.05

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0):
            from ctxlink._exceptions import ArgumentError

            raise ArgumentError(f"Backoff base and cap must be >= 0 seconds, not {self}")

    def _doublings(self, n: int) -> int:
        return min(max(n, 1) - 1, _MAX_DOUBLINGS)

    def ceiling(self, n: int) -> float:
        """The longest wait after the n-th retry (n >= 1)."""
        return float(ExponentialBackoff(cap=self.cap, base=self.base).compute(self._doublings(n)))

    def delay(self, n: int) -> float:
        """A wait after the n-th retry (n >= 1): uniform in ``[0, ceiling(n)]``."""
        jitter = FullJitterBackoff(cap=self.cap, base=self.base)
        return float(jitter.compute(self._doublings(n)))
