"""Datamanager aggregation: ticks consumed → bars updated, beside raw aiokafka consuming
the same messages.

The sim's ticks for 5,000 symbols (CN/HK/US) are produced to a fresh market-data topic
first. Then, over that backlog: a plain AIOKafkaConsumer with the services' consumer
settings (the baseline), the same consumer decoding every message (for the split), and an
in-process DataManager whose bars consumer group starts at offset 0 (committed before it
joins). Rates are taken between 5 % and 95 % of the backlog, leaving out the group join
and the last partial fetches.
"""

from __future__ import annotations

import gc
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.datamanager.bars import BarAggregator
from services.datamanager.service import DataManager
from shared.dto import PriceUpdate, decode
from shared.kafka import assign_all, consumer_options
from shared.topics import Topics
from tests.bench.harness import (
    BenchContext,
    Figure,
    fresh_topics,
    produce_raw,
    rate_between,
    sample_until,
    symbols_by_market,
)
from tests.bench.ticks import encoded, sim_ticks
from tests.helpers import running

NAME = "aggregation"
TITLE = "datamanager aggregation (ticks → bars) vs raw aiokafka consume"
NEEDS_BROKER = True
TARGET_RATIO = 0.5
SYMBOLS = 5000


async def _raw_consume(ctx: BenchContext, topic: str, count: int, decode_values: bool) -> float:
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-raw-consumer"))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        await consumer.seek_to_beginning(*tps)
        samples: list[tuple[float, float]] = []
        n = 0
        deadline = time.monotonic() + 120
        while n < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer read {n} of {count}")
            for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                if decode_values:
                    for r in records:
                        decode(r.value or b"")
                n += len(records)
            samples.append((time.perf_counter(), n))
    finally:
        await consumer.stop()
    return rate_between(samples, 0.05, 0.95, count)


async def _commit_start(ctx: BenchContext, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for ``group``: a new group otherwise starts at
    the end (``auto_offset_reset=latest``) and would skip the backlog."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-offsets", group_id=group))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


async def _datamanager(ctx: BenchContext, topics: Topics, count: int) -> dict[str, Any]:
    group = f"bench-dm-{uuid.uuid4().hex[:8]}"
    config = ctx.load(ctx.config_dir(topics, livedata={"datamanager": {"group_id": group}}))
    await _commit_start(ctx, f"{group}.bars", topics.market_data)
    dm = DataManager(config)
    gc.collect()
    async with running(dm, timeout_s=60):

        def processed() -> float:
            return dm.bars.ticks + sum(dm.bars.rejected.values())

        samples = await sample_until(processed, lambda v: v >= count, timeout_s=180, interval_s=0.01)
    return {
        "rate": rate_between(samples, 0.05, 0.95, count),
        "bar_symbols": dm.bars.symbol_count,
        "rejected": dict(dm.bars.rejected),
    }


def _per_tick_costs(values: list[bytes]) -> dict[str, float]:
    """Microseconds per tick for the two steps the datamanager adds to a raw consume."""
    started = time.perf_counter()
    ticks = [decode(v) for v in values]
    decode_us = (time.perf_counter() - started) / len(values) * 1e6
    bars = BarAggregator()
    on_tick = bars.on_tick
    started = time.perf_counter()
    for t in ticks:
        assert isinstance(t, PriceUpdate)
        on_tick(t)
    on_tick_us = (time.perf_counter() - started) / len(values) * 1e6
    return {"decode_us_per_tick": round(decode_us, 3), "on_tick_us_per_tick": round(on_tick_us, 3)}


async def run(ctx: BenchContext) -> list[Figure]:
    count = ctx.pick(500_000, 150_000)
    async with fresh_topics(ctx, NAME) as topics:
        ticks = await sim_ticks(symbols_by_market(SYMBOLS), count)
        items = encoded(ticks)
        del ticks
        await produce_raw(ctx, topics.market_data, items, "bench-loader")
        costs = _per_tick_costs([v for _, v in items[:100_000]])
        del items
        gc.collect()
        raw = await _raw_consume(ctx, topics.market_data, count, decode_values=False)
        raw_decoded = await _raw_consume(ctx, topics.market_data, count, decode_values=True)
        dm = await _datamanager(ctx, topics, count)
    ratio = dm["rate"] / raw
    return [
        Figure(
            NAME,
            "datamanager aggregation (ticks consumed → bars)",
            round(dm["rate"]),
            "ticks/s",
            baseline=round(raw),
            baseline_name="raw AIOKafkaConsumer of the same messages, services' consumer settings",
            target=f"ratio >= {TARGET_RATIO}",
            met=ratio >= TARGET_RATIO,
            details={
                "messages": count,
                "symbols": SYMBOLS,
                "raw_consume_and_decode_per_s": round(raw_decoded),
                **costs,
                **{k: v for k, v in dm.items() if k != "rate"},
            },
        )
    ]
