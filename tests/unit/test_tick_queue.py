"""The conflating tick queue: FIFO with room, latest-per-symbol without, order kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import PriceUpdate

T = datetime(2024, 1, 1, tzinfo=UTC)


def ticks(*pairs: tuple[str, float]) -> list[PriceUpdate]:
    return [PriceUpdate(symbol=s, price=p, timestamp=T, source="t") for s, p in pairs]


async def test_fifo_while_there_is_room() -> None:
    q = ConflatingTickQueue(10)
    q.put_batch(ticks(("A", 1), ("B", 1), ("A", 2)))
    got = await q.get_batch(10)
    assert [(t.symbol, t.price, t.sequence) for t in got] == [("A", 1, 1), ("B", 1, 1), ("A", 2, 2)]
    assert q.conflated == 0


async def test_conflates_per_symbol_when_full_and_keeps_order() -> None:
    q = ConflatingTickQueue(3)
    q.put_batch(ticks(("A", 1), ("B", 1), ("A", 2)))  # fills the FIFO
    q.put_batch(ticks(("A", 3), ("B", 2), ("A", 4), ("C", 1), ("A", 5)))
    assert len(q) == 6  # 3 queued + latest A, B, C
    assert q.conflated == 2  # A3 and A4 replaced
    got = await q.get_batch(100)
    assert [(t.symbol, t.price) for t in got] == [("A", 1), ("B", 1), ("A", 2), ("A", 5), ("B", 2), ("C", 1)]
    # sequence gaps show what was conflated
    assert [t.sequence for t in got if t.symbol == "A"] == [1, 2, 5]


async def test_memory_is_bounded_by_size_plus_symbols() -> None:
    q = ConflatingTickQueue(100)
    for i in range(10_000):
        q.put_batch(ticks((f"S{i % 50}", float(i))))
    assert len(q) <= 100 + 50
    assert q.accepted == 10_000 and q.conflated == 10_000 - 100 - 50


async def test_get_waits_and_close_drains() -> None:
    q = ConflatingTickQueue(10)
    waiter = asyncio.create_task(q.get_batch(10))
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put_batch(ticks(("A", 1)))
    assert len(await asyncio.wait_for(waiter, 1)) == 1
    q.put_batch(ticks(("B", 1)))
    q.close()
    assert len(await q.get_batch(10)) == 1
    assert await q.get_batch(10) == []
    q.put_batch(ticks(("C", 1)))  # ignored after close
    assert len(q) == 0


async def test_partial_takes() -> None:
    q = ConflatingTickQueue(2)
    q.put_batch(ticks(("A", 1), ("B", 1), ("C", 1), ("D", 1)))
    assert [t.symbol for t in await q.get_batch(3)] == ["A", "B", "C"]
    assert [t.symbol for t in await q.get_batch(3)] == ["D"]
