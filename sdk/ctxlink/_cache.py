"""The SDK's one bounded map: a small thread-safe LRU for the caches that are maps (a context
key's schema, the message type of a schema name, compiled schemas, generated plan scripts);
caches of pure functions use :func:`functools.lru_cache` instead."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries and, with ``weight``, at most ``max_weight`` of their summed
    weights (the newest entry is kept even when it alone weighs more); the least recently used
    goes first."""

    __slots__ = ("_size", "_data", "_lock", "_weigh", "_max_weight", "weight")

    def __init__(
        self,
        size: int,
        max_weight: Optional[int] = None,
        weight: Optional[Callable[[V], int]] = None,
    ) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._weigh = weight
        self._max_weight = max_weight
        #: the summed weights of the entries held (0 without ``weight``)
        self.weight = 0

    def get(self, key: K) -> Optional[V]:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._drop(key)
            self._data[key] = value
            if self._weigh is not None:
                self.weight += self._weigh(value)
            while len(self._data) > 1 and (
                len(self._data) > self._size
                or (self._max_weight is not None and self.weight > self._max_weight)
            ):
                self._drop(next(iter(self._data)))

    def _drop(self, key: K) -> None:
        old = self._data.pop(key, None)
        if old is not None and self._weigh is not None:
            self.weight -= self._weigh(old)

    def pop(self, key: K) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.weight = 0

    def values(self) -> list[V]:
        with self._lock:
            return list(self._data.values())

    def __len__(self) -> int:
        return len(self._data)
