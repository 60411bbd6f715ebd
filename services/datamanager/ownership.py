"""Which market-data partitions this instance owns, and so which symbols.

The tick intake writes it on each assignment (all partitions in active/standby; the
consumer group's share when partitioned); commands, snapshots and the gap watch read it.
A symbol belongs to the partition the producer's partitioner puts its key on.
"""

from __future__ import annotations

import time

from shared.partitioning import symbol_partition

_MAX_CACHED = 200_000


class Ownership:
    def __init__(self) -> None:
        self.partitions: frozenset[int] = frozenset()
        self.count = 0  # partitions market data has
        self.since = 0.0  # epoch s of the latest assignment
        self._acquired: set[int] = set()  # newly owned, not yet taken by the command intake
        self._of: dict[str, int] = {}

    def assign(self, partitions: frozenset[int], count: int) -> frozenset[int]:
        """Own ``partitions`` of ``count`` from now; returns the newly owned ones."""
        if count != self.count:
            self._of.clear()
        new = partitions - self.partitions
        self.partitions, self.count = partitions, count
        self.since = time.time()
        self._acquired |= new
        self._acquired &= partitions
        return new

    def revoke(self) -> None:
        self.partitions = frozenset()

    def take_acquired(self) -> frozenset[int]:
        """Partitions owned since the last call (for answering recent commands again)."""
        out, self._acquired = frozenset(self._acquired), set()
        return out

    def partition(self, symbol: str) -> int:
        p = self._of.get(symbol)
        if p is None:
            if len(self._of) >= _MAX_CACHED:
                self._of.clear()
            p = self._of[symbol] = symbol_partition(symbol, self.count)
        return p

    def owns(self, symbol: str) -> bool:
        return self.count > 0 and self.partition(symbol) in self.partitions
