"""The per-task prefix cache: an LRU of :class:`~edgeprompt.runtimes.backend.Prefix` under a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from edgeprompt.runtimes.backend import Prefix


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class PrefixCache:
    """LRU of task prefixes under a byte budget. Thread-safe.

    An entry larger than the whole budget is not kept (the request still runs, cold).
    """

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self._d: OrderedDict[str, Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: str) -> Prefix | None:
        with self._lock:
            p = self._d.get(key)
            if p is None:
                self.stats.misses += 1
                return None
            self._d.move_to_end(key)
            self.stats.hits += 1
            return p

    def put(self, key: str, p: Prefix) -> None:
        with self._lock:
            if key in self._d:
                self.stats.bytes -= self._d.pop(key).nbytes
            if p.nbytes > self.budget:
                self.stats.entries = len(self._d)
                return
            self._d[key] = p
            self.stats.bytes += p.nbytes
            while self.stats.bytes > self.budget:
                _, old = self._d.popitem(last=False)
                self.stats.bytes -= old.nbytes
                self.stats.evictions += 1
            self.stats.entries = len(self._d)

    def drop(self, key: str) -> None:
        with self._lock:
            if key in self._d:
                self.stats.bytes -= self._d.pop(key).nbytes
            self.stats.entries = len(self._d)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._d)
