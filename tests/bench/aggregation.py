"""Datamanager aggregation: ticks consumed → bars updated, beside raw aiokafka consuming
the same messages.

The sim's ticks for 5,000 symbols (CN/HK/US) are produced to a fresh market-data topic
first. Then, over that backlog: a plain AIOKafkaConsumer with the services' consumer
settings (the baseline), the same consumer decoding every message (for the split), and an
in-process DataManager whose bars consumer group starts at offset 0 (committed before it
joins). Rates are taken between 5 % and 95 % of the backlog, leaving out the group join
and the last partial fetches. Every sampling begins before the first record is consumed
(the datamanager's counter is sampled at each round of its tick loop, from before it
starts), and a window the samples did not see is reported as not measured, not as a rate.
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
    Figures,
    LoopSampler,
    fresh_topics,
    produce_raw,
    rate_between,
    rate_detail,
    symbols_by_market,
)
from tests.bench.ticks import encoded, sim_ticks
from tests.helpers import running

NAME = "aggregation"
TITLE = "datamanager aggregation (ticks → bars) vs raw aiokafka consume"
NEEDS_BROKER = True
TARGET_RATIO = 0.5
SYMBOLS = 5000


Samples = list[tuple[float, float]]  # (perf_counter, records consumed so far)


async def _raw_consume(ctx: BenchContext, topic: str, count: int, decode_values: bool) -> Samples:
    """Consume ``count`` records of ``topic`` from the beginning; a sample after each fetch,
    and one before the first."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-raw-consumer"))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        await consumer.seek_to_beginning(*tps)
        samples: Samples = [(time.perf_counter(), 0)]
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
    return samples


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

    def processed() -> float:
        bars = dm.intake.bars  # replaced on taking over
        return bars.ticks + sum(bars.rejected.values())

    gc.collect()
    with LoopSampler(dm.loops, "ticks", processed) as sampler:
        async with running(dm, timeout_s=60):
            await sampler.until(lambda v: v >= count, timeout_s=180)
    return {
        "samples": sampler.samples,
        "bar_symbols": dm.intake.bars.symbol_count,
        "rejected": dict(dm.intake.bars.rejected),
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
    figures = Figures(NAME)
    with figures.measure(
        "datamanager aggregation (ticks consumed → bars)",
        "ticks/s",
        baseline_name="raw AIOKafkaConsumer of the same messages, services' consumer settings",
        target=f"ratio >= {TARGET_RATIO}",
    ) as f:
        f.details.update(
            {"messages": count, "symbols": SYMBOLS, **costs, **{k: v for k, v in dm.items() if k != "samples"}}
        )
        f.details["raw_consume_and_decode_per_s"] = rate_detail(raw_decoded, 0.05, 0.95, count)
        base = rate_between(raw, 0.05, 0.95, count)
        f.baseline = round(base.per_s)
        f.details["baseline_window"] = base.details()
        rate = rate_between(dm["samples"], 0.05, 0.95, count)
        f.details["window"] = rate.details()
        f.value = round(rate.per_s)
        f.met = rate.per_s / base.per_s >= TARGET_RATIO
    return figures
