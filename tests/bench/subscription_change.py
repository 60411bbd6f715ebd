"""Subscription change: interest update → first tick of the new symbol at the client SDK.

The gateway and the datamanager run as processes under the standard load (another
subscriber holds 5,000 symbols ticking 1/s each: 5,000 ticks/s). The client SDK here
subscribes one new symbol at a time (CN, HK, US in turn) and times from just before
``subscribe()`` to the first update of that symbol out of ``next_batch()``. The path:
interest topic → datamanager → subscriptions topic → gateway → sim → market data → SDK.
The baseline is the Kafka part of that path alone: three raw produce → consume hops
(interest, subscription, tick) relayed here by plain aiokafka clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.client import LiveDataClient
from shared.dto import InterestUpdate, PriceUpdate, encode, utcnow
from shared.kafka import assign_all, consumer_options, producer_options
from shared.symbols import Market
from tests.bench.daemons import daemons
from tests.bench.harness import (
    BenchContext,
    Figure,
    Figures,
    create_topic,
    distribution,
    flat,
    fresh_topics,
    sim_sources,
    statistic,
    symbols_by_market,
)
from tests.helpers import publish

NAME = "subscription_change"
TITLE = "interest update → first tick of a new symbol at the client"
NEEDS_BROKER = True
TARGET_MS = 200.0
LOAD_SYMBOLS = 5000


def _new_symbol(i: int) -> str:
    kind = i % 3
    if kind == 0:
        return f"{688000 + i:06d}.SH"
    if kind == 1:
        return f"{8000 + i:05d}.HK"
    return f"NEW{i:03d}"


async def _first_tick(client: LiveDataClient, symbol: str, timeout_s: float = 10.0) -> float:
    """Subscribe ``symbol``; seconds until its first update leaves ``next_batch()``."""
    started = time.perf_counter()
    await client.subscribe([symbol])
    deadline = started + timeout_s
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError(f"no tick of {symbol} within {timeout_s}s")
        batch = await asyncio.wait_for(client.next_batch(), remaining)
        if any(isinstance(u, PriceUpdate) and u.symbol == symbol for u in batch):
            return time.perf_counter() - started


async def _system(ctx: BenchContext, rounds: int) -> dict[str, Any]:
    load = flat(symbols_by_market(LOAD_SYMBOLS))
    async with (
        fresh_topics(ctx, NAME) as topics,
        daemons(ctx, topics, ["gateway", "datamanager"], data_sources=sim_sources(list(Market), 1.0, 100.0)),
        LiveDataClient(ctx.bootstrap, "bench", "subscriber", topics=topics) as client,
    ):
        await publish(
            ctx.bootstrap,
            topics.interest_updates,
            InterestUpdate(
                portfolio_id="bench",
                node_id="load",
                symbols=tuple(load),
                update_type="replace",
                timestamp=utcnow(),
            ),
            key="bench/load",
        )
        await _first_tick(client, _new_symbol(999))  # warm-up: the load is on, the path is hot
        times = [await _first_tick(client, _new_symbol(i)) for i in range(rounds)]
    return distribution(times, scale=1000.0)


async def _baseline(ctx: BenchContext, rounds: int) -> dict[str, Any]:
    """Three raw hops, relayed here, like the path: interest (a service consumer), the
    subscription (a service consumer), the tick (the SDK's fetch settings)."""
    async with fresh_topics(ctx, NAME) as topics:
        hops = [f"{topics.prefix}.baseline.{i}" for i in range(3)]
        for topic in hops:
            await create_topic(ctx, topic, 1)
        kafka = ctx.kafka()
        producer = AIOKafkaProducer(**producer_options(kafka, "bench-raw-producer"))
        consumers = [
            AIOKafkaConsumer(**consumer_options(kafka, "bench-raw-relay")),
            AIOKafkaConsumer(**consumer_options(kafka, "bench-raw-relay")),
            AIOKafkaConsumer(**consumer_options(kafka, "bench-raw-sink", fetch_max_wait_ms=5)),
        ]
        value = encode(
            InterestUpdate(portfolio_id="b", node_id="n", symbols=("X",), update_type="add", timestamp=utcnow())
        )
        times: list[float] = []
        await producer.start()
        try:
            for consumer, topic in zip(consumers, hops, strict=True):
                await consumer.start()
                await consumer.seek_to_beginning(*await assign_all(consumer, topic, wait_s=10))
            for _ in range(rounds + 1):
                started = time.perf_counter()
                for consumer, topic in zip(consumers, hops, strict=True):
                    await producer.send_and_wait(topic, value, key=b"b")
                    while not await consumer.getmany(timeout_ms=1000):
                        pass
                times.append(time.perf_counter() - started)
        finally:
            for consumer in consumers:
                await consumer.stop()
            await producer.stop()
    return distribution(times[1:], scale=1000.0)


async def run(ctx: BenchContext) -> list[Figure]:
    rounds = ctx.pick(21, 6)
    system = await _system(ctx, rounds)
    raw = await _baseline(ctx, rounds)
    figures = Figures(NAME)
    for key in ("p50", "max"):
        with figures.measure(
            f"interest update → first tick {key} ({rounds} changes)",
            "ms",
            baseline_name="three raw aiokafka produce → consume hops, same settings",
            target=f"<= {TARGET_MS:g} ms",
            details={"system": system, "baseline": raw, "load": f"{LOAD_SYMBOLS} symbols x 1 tick/s"}
            if key == "p50"
            else {},
        ) as f:
            f.baseline = statistic(raw, key, "raw round trips")
            value = f.value = statistic(system, key, "subscription changes")
            f.met = value <= TARGET_MS
    return figures
