"""The client SDK reads only the partitions of its symbols, computed with the producer's
partitioner, and follows a change of the partition count."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from shared.client import LiveDataClient
from shared.config import KafkaSettings
from shared.dto import PriceUpdate, encode
from shared.kafka import KafkaPublisher, assign_all, ensure_topics
from shared.partitioning import symbol_partition
from shared.symbols import Market
from shared.topics import Topics
from tests.bench.universe import CN_COUNT, HK_COUNT, US_COUNT, full_market
from tests.helpers import eventually

PARTITIONS = 12
T0 = datetime(2025, 12, 31, 2, 0, tzinfo=UTC)


def tick(symbol: str, sequence: int = 1) -> PriceUpdate:
    return PriceUpdate(symbol=symbol, price=10.0 + sequence, timestamp=T0, source="test", sequence=sequence)


async def test_computed_partition_is_the_producers_for_the_full_market(kafka_bootstrap: str, topics: Topics) -> None:
    market = full_market()
    symbols = [s for group in market.values() for s in group]
    assert [len(market[m]) for m in (Market.CN, Market.HK, Market.US)] == [CN_COUNT, HK_COUNT, US_COUNT]
    assert len(set(symbols)) == len(symbols) == 5469 + 2672 + 6000
    topic = f"{topics.prefix}.partitioning"  # deleted with the test's other topics
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await ensure_topics(kafka, {topic: PARTITIONS})
    async with KafkaPublisher(kafka, "test-partitioning") as publisher:  # the gateway's publisher
        await publisher.publish_raw(topic, [(s.encode(), encode(tick(s))) for s in symbols])

    placed: dict[str, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await assign_all(consumer, topic)
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        while len(placed) < len(symbols) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    assert r.key is not None
                    assert r.key.decode() not in placed, "a record read twice"
                    placed[r.key.decode()] = tp.partition
    finally:
        await consumer.stop()
    assert len(placed) == len(symbols)
    wrong = {s: (p, symbol_partition(s, PARTITIONS)) for s, p in placed.items() if p != symbol_partition(s, PARTITIONS)}
    assert not wrong, f"{len(wrong)} symbols placed elsewhere, e.g. {list(wrong.items())[:5]}"
    used = set(placed.values())
    print(f"\n{len(placed)} symbols, every one on its computed partition; {len(used)} of {PARTITIONS} partitions used")
    assert used == set(range(PARTITIONS))


async def test_client_assigns_only_its_partitions_and_reassigns(kafka_bootstrap: str, topics: Topics) -> None:
    count = 3  # the fixture's market-data topic
    symbols = [s for group in full_market().values() for s in group[:40]]
    by_partition = {p: [s for s in symbols if symbol_partition(s, count) == p] for p in range(count)}
    only0 = by_partition[0][:3]
    async with LiveDataClient(kafka_bootstrap, "p1", "n1", topics=topics, lease_s=None) as client:
        assert client.partition_count == count and client.partitions == frozenset()
        await client.subscribe(only0)
        assert client.partitions == {0}
        async with KafkaPublisher(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test-pub") as pub:
            await pub.publish_many(topics.market_data, [(s, tick(s, 1)) for s in symbols])
            got: list[PriceUpdate] = []

            async def all_of(wanted: set[str]) -> bool:
                got.extend(u for u in await client.next_batch() if isinstance(u, PriceUpdate))
                return {u.symbol for u in got} >= wanted

            await eventually(lambda: all_of(set(only0)), what="ticks of the partition-0 symbols")
            assert {u.symbol for u in got} == set(only0)
            assert client.lag.unfetched == 0

            # a symbol on another partition: that partition is added, starting at its end
            other = by_partition[2][0]
            await client.subscribe([other])
            assert client.partitions == {0, 2}
            await pub.publish_many(topics.market_data, [(s, tick(s, 2)) for s in [*only0, other]])
            got.clear()
            await eventually(lambda: all_of({*only0, other}), what="ticks of both partitions' symbols")
            assert sorted((u.symbol, u.sequence) for u in got) == sorted((s, 2) for s in [*only0, other])

            # partition 0 kept its position across the reassignment: nothing read twice
            await client.unsubscribe(only0)
            assert client.partitions == {2}
            await pub.publish_many(topics.market_data, [(s, tick(s, 3)) for s in symbols])
            got.clear()
            await eventually(lambda: all_of({other}), what="the remaining symbol's tick")
            assert [(u.symbol, u.sequence) for u in got] == [(other, 3)]
            await client.clear()
            assert client.partitions == frozenset()


async def test_partition_count_change_recomputes(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="client")
    old, new = 3, 6
    symbols = [s for group in full_market().values() for s in group[:50]]
    moved = [s for s in symbols if symbol_partition(s, new) >= old][:4]  # onto a partition created by the change
    stayed = [s for s in symbols if symbol_partition(s, new) < old][:2]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    client = LiveDataClient(kafka_bootstrap, "p1", "n1", topics=topics, lease_s=None, partition_check_s=0.2)
    async with client, KafkaPublisher(kafka, "test-before") as before:
        await client.subscribe([*moved, *stayed])
        assert client.partitions == {symbol_partition(s, old) for s in [*moved, *stayed]}
        await before.publish_many(topics.market_data, [(s, tick(s, 1)) for s in [*moved, *stayed]])
        got: list[PriceUpdate] = []

        async def received(n: int) -> bool:
            got.extend(u for u in await client.next_batch() if isinstance(u, PriceUpdate))
            return len(got) >= n

        await eventually(lambda: received(6), what="ticks before the change")

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topics.market_data: NewPartitions(total_count=new)})
        finally:
            await admin.close()
        await eventually(lambda: client.partition_count == new, timeout_s=10, what="the client saw the new count")
        wanted = {symbol_partition(s, new) for s in [*moved, *stayed]}
        kept = {symbol_partition(s, old) for s in [*moved, *stayed]}  # still read: producers may not know yet
        assert client.partitions == wanted | kept
        # a producer that knows the new count places the moved symbols on the new partitions;
        # one that does not yet (metadata up to 5 minutes old) still uses the old ones
        async with KafkaPublisher(kafka, "test-after") as after:
            await after.publish_many(topics.market_data, [(s, tick(s, 2)) for s in [*moved, *stayed]])
        await before.publish_many(topics.market_data, [(s, tick(s, 3)) for s in [*moved, *stayed]])
        await eventually(lambda: received(18), what="ticks on the new partitions and the old ones")
        assert sorted((u.symbol, u.sequence) for u in got) == sorted(
            (s, n) for s in [*moved, *stayed] for n in (1, 2, 3)
        )
    changes = [r for r in caplog.records if "partition count changed" in r.getMessage()]
    assert len(changes) == 1


async def test_client_delivers_corrections_and_revised_bars_not_history(kafka_bootstrap: str, topics: Topics) -> None:
    """A trade correction and a repaired bar of a subscribed symbol reach the application;
    the gateway's raw provider history (``history_bars``, for the datamanager) does not."""
    from shared.dto import Bar, HistoryBars, TradeCorrection

    fix = TradeCorrection(
        symbol="AAPL",
        original_id=7,
        original_price=10.0,
        original_size=5,
        timestamp=T0,
        source="alpaca",
        cancelled=True,
    )
    raw = HistoryBars(symbol="AAPL", start=T0, end=T0, source="alpaca", state="pending", timestamp=T0)
    bar = Bar(
        symbol="AAPL",
        period="1m",
        open=1,
        high=2,
        low=1,
        close=2,
        volume=9,
        timestamp=T0,
        source="alpaca",
        quality="repaired",
        revision=1,
    )
    async with LiveDataClient(kafka_bootstrap, "p1", "n-fix", topics=topics, lease_s=None) as client:
        await client.subscribe(["AAPL"])
        async with KafkaPublisher(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test-pub") as pub:
            await pub.publish_many(topics.market_data, [("AAPL", raw), ("AAPL", fix), ("AAPL", bar)])
        got: list[object] = []

        async def both() -> bool:
            got.extend(await client.next_batch())
            return len(got) >= 2

        await eventually(both, timeout_s=15, what="the correction and the bar")
    assert got == [fix, bar]
