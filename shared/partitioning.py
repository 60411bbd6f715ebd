"""Which partition a key lands on: the producer's partitioner, so readers can compute it.

aiokafka's default (and the Java client's): murmur2 of the key bytes, made positive,
modulo the number of partitions, over the topic's partition ids in order. The gateway's
publisher places every keyed record with ``partition_of``; the client SDK and the
datamanager compute a symbol's partition with the same function, so a reader of
``market.data`` can assign only the partitions that hold its symbols.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aiokafka.partitioner import murmur2 as _murmur2


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 hash of ``key`` (a signed 32-bit int)."""
    return int(_murmur2(key))


def partition_of(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of ``key`` among ``partitions`` (sorted ids, as the producer sees them)."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def symbol_partition(symbol: str, count: int) -> int:
    """The ``market.data`` partition of a symbol when the topic has ``count`` partitions."""
    return (murmur2(symbol.encode()) & 0x7FFFFFFF) % count


def partitions_of(symbols: Iterable[str], count: int) -> dict[int, set[str]]:
    """Symbols grouped by the ``market.data`` partition that holds them."""
    out: dict[int, set[str]] = {}
    for s in symbols:
        out.setdefault(symbol_partition(s, count), set()).add(s)
    return out
