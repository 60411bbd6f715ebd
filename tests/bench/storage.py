"""Datamanager storage: bars stored in ClickHouse beside aggregation, ``bar_snapshot`` of
5,000 symbols read from ClickHouse, restart to ready with 10,000 subscribers in Redis.

Starts its own Redis and ClickHouse (Debian's servers, as the tests do). Figures:
- aggregation with storage on: the aggregation benchmark's backlog consumed by an
  in-process DataManager that stores bars in ClickHouse, beside raw aiokafka consuming the
  same messages (the aggregation benchmark's windows: sampled from before the first record);
  bars stored per second during it (from its first consumed record until every bar of
  the backlog is stored and its ticks committed), beside what one batched insert loop of
  the same rows sustains (so storage is shown not to limit aggregation);
- ``bar_snapshot`` of 5,000 symbols by a freshly started datamanager (memory empty: the
  bars come from ClickHouse), command sent → 5,000th bar received;
- restart to ready: a datamanager process started over a Redis holding 10,000
  subscribers (10 symbols each) and their interest offsets, spawn → ``/readyz`` 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.datamanager.bars import BarRow
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.interest import Subscriber
from services.datamanager.service import DataManager
from services.datamanager.state import RedisState
from services.ops.servers import ClickHouseServer, RedisServer
from shared.coordination import redis_client
from shared.dto import CommandResult, ControlCommand, InterestUpdate, PriceUpdate, decode, utcnow
from shared.kafka import assign_all, consumer_options
from shared.topics import Topics
from tests.bench.aggregation import _commit_start, _raw_consume
from tests.bench.daemons import daemons
from tests.bench.harness import (
    BenchContext,
    Figure,
    Figures,
    LoopSampler,
    NotMeasured,
    TopicTap,
    first_record_at,
    flat,
    fresh_topics,
    produce_raw,
    rate_between,
    symbols_by_market,
)
from tests.bench.ticks import encoded, sim_ticks
from tests.helpers import eventually, publish, running

NAME = "storage"
TITLE = "datamanager storage: ClickHouse bars beside aggregation, snapshot from ClickHouse, restart with Redis"
NEEDS_BROKER = True
SYMBOLS = 5000
SUBSCRIBERS = 10_000


@contextlib.asynccontextmanager
async def _servers(ctx: BenchContext) -> AsyncIterator[tuple[RedisServer, ClickHouseServer]]:
    redis = RedisServer(log_path=ctx.workdir / "redis.log")
    clickhouse = ClickHouseServer(data_dir=ctx.workdir / f"clickhouse-{uuid.uuid4().hex[:6]}")
    await asyncio.to_thread(redis.start)
    try:
        await asyncio.to_thread(clickhouse.start)
        try:
            yield redis, clickhouse
        finally:
            await asyncio.to_thread(clickhouse.close)
    finally:
        await asyncio.to_thread(redis.close)


def _livedata(redis: RedisServer, clickhouse: ClickHouseServer, database: str, **dm: Any) -> dict[str, Any]:
    return {
        "redis": {"url": redis.url},
        "clickhouse": {"url": clickhouse.url, "database": database},
        "datamanager": {"redis_key_prefix": f"bench:{uuid.uuid4().hex[:8]}", **dm},
    }


async def _committed_through(ctx: BenchContext, group: str, topic: str, count: int, timeout_s: float) -> None:
    """Wait until ``group`` has committed ``count`` records of the fresh ``topic``: the
    datamanager commits a fetch's offsets only once the bars it changed are stored."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-offsets", group_id=group))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)

        async def through() -> bool:
            return sum([await consumer.committed(tp) or 0 for tp in tps]) >= count

        await eventually(through, timeout_s=timeout_s, interval_s=0.05, what=f"{group} to commit {count} records")
    finally:
        await consumer.stop()


async def _aggregation_with_storage(
    ctx: BenchContext, topics: Topics, redis: RedisServer, clickhouse: ClickHouseServer, count: int
) -> dict[str, Any]:
    group = f"bench-dm-{uuid.uuid4().hex[:8]}"
    config = ctx.load(ctx.config_dir(topics, livedata=_livedata(redis, clickhouse, "bench_agg", group_id=group)))
    await _commit_start(ctx, f"{group}.bars", topics.market_data)
    dm = DataManager(config)
    assert dm.intake.store is not None
    store = dm.intake.store
    stored_at_start = store.stored

    def processed() -> float:
        bars = dm.intake.bars  # replaced on taking over
        return bars.ticks + sum(bars.rejected.values())

    gc.collect()
    with LoopSampler(dm.loops, "ticks", processed) as sampler:
        async with running(dm, timeout_s=60):
            await sampler.until(lambda v: v >= count, timeout_s=300)
            await _committed_through(ctx, f"{group}.bars", topics.market_data, count, timeout_s=60)
            all_stored_at = time.perf_counter()
    return {
        "samples": sampler.samples,
        "all_stored_at": all_stored_at,
        "bars_stored": store.stored - stored_at_start,
        "clickhouse_failures": store.failures,
        "rejected": dict(dm.intake.bars.rejected),
    }


def _stored_per_s(agg: dict[str, Any]) -> float:
    """Bars stored per second, first consumed record → every bar stored and committed."""
    if not agg["bars_stored"]:
        raise NotMeasured("no bar was stored")
    return float(agg["bars_stored"] / (agg["all_stored_at"] - first_record_at(agg["samples"])))


async def _insert_capacity(clickhouse: ClickHouseServer, rows: int) -> float:
    """Rows per second one batched insert loop (10,000 a batch) sustains."""
    store = ClickHouseBars(clickhouse.url, "bench_capacity")
    await store.start()
    day = date.today()
    batch = 10_000
    started = time.perf_counter()
    for b in range(rows // batch):
        store.add(
            BarRow(
                f"S{i:05d}", "1m", (b * batch + i) * 60_000, day, 1, 2, 0.5, 1.5, 10, 15, None, "x", 0, 0, i, None, None
            )
            for i in range(batch)
        )
        if not await store.flush():
            raise RuntimeError("insert failed")
    elapsed = time.perf_counter() - started
    await store.stop()
    return rows / elapsed


class _Seen:
    def __init__(self) -> None:
        self.bar_times: list[float] = []
        self.results: dict[str, CommandResult] = {}

    def on_market_data(self, records: list[ConsumerRecord[bytes, bytes]], now: float) -> None:
        for r in records:
            if r.value is not None and r.value.startswith(b'{"type":"bar"'):
                self.bar_times.append(now)

    def on_events(self, records: list[ConsumerRecord[bytes, bytes]], _: float) -> None:
        for r in records:
            if r.value is not None and b'"command_result"' in r.value:
                msg = decode(r.value)
                if isinstance(msg, CommandResult):
                    self.results[msg.correlation_id] = msg


async def _snapshot_from_clickhouse(
    ctx: BenchContext, topics: Topics, redis: RedisServer, clickhouse: ClickHouseServer, rounds: int
) -> dict[str, Any]:
    config = ctx.load(ctx.config_dir(topics, livedata=_livedata(redis, clickhouse, "bench_snap")))
    symbols = flat(symbols_by_market(SYMBOLS))
    boot = ctx.bootstrap
    first = DataManager(config)
    async with running(first, timeout_s=60):
        await eventually(lambda: first.readiness()[0], timeout_s=30, what="datamanager ready")
        update = InterestUpdate(
            portfolio_id="bench", node_id="snap", symbols=tuple(symbols), update_type="replace", timestamp=utcnow()
        )
        await publish(boot, topics.interest_updates, update, key="bench/snap")
        await eventually(lambda: len(first.interest.registry.all_symbols()) == SYMBOLS, timeout_s=30, what="interest")
        now = utcnow()
        ticks = [
            PriceUpdate(symbol=s, price=10.0 + i % 500 / 10, timestamp=now, source="sim", last_size=100)
            for i, s in enumerate(symbols)
        ]
        await produce_raw(ctx, topics.market_data, encoded(ticks), "bench-loader")
        store = first.intake.store
        assert store is not None
        await eventually(lambda: first.intake.bars.symbol_count >= SYMBOLS, timeout_s=30, what="bars for all symbols")
        await eventually(lambda: not store.pending and store.stored >= 2 * SYMBOLS, timeout_s=30, what="stored")
    second = DataManager(config)  # a fresh process's view: nothing in memory
    seen = _Seen()
    latencies: list[float] = []
    own_ms: list[float] = []
    async with (
        running(second, timeout_s=60),
        TopicTap(ctx, topics.market_data, seen.on_market_data),
        TopicTap(ctx, topics.system_events, seen.on_events),
    ):
        await eventually(lambda: second.readiness()[0], timeout_s=30, what="second datamanager ready")
        assert second.intake.store is not None
        read_started = time.perf_counter()
        rows = await second.intake.store.read(date.fromisoformat(ticks[0].timestamp.date().isoformat()), "1d", symbols)
        direct_read_ms = (time.perf_counter() - read_started) * 1000
        for _ in range(rounds):
            mark = len(seen.bar_times)
            cid = f"bench-snap-{uuid.uuid4().hex[:8]}"
            cmd = ControlCommand(command="bar_snapshot", correlation_id=cid, timestamp=utcnow(), source="bench")
            started = time.time()
            await publish(boot, topics.control_commands, cmd, key="datamanager")

            def complete(cid: str = cid, mark: int = mark) -> bool:
                return cid in seen.results and len(seen.bar_times) >= mark + SYMBOLS

            await eventually(complete, timeout_s=30, interval_s=0.005, what="5,000 bars")
            result = seen.results[cid]
            if result.detail.get("bars") != SYMBOLS or result.detail.get("from_store") != SYMBOLS:
                raise RuntimeError(f"bar_snapshot answered {result.detail}")
            latencies.append(seen.bar_times[mark + SYMBOLS - 1] - started)
            own_ms.append(result.duration_ms)
    return {
        "max_s": round(max(latencies), 4),
        "rounds_s": [round(x, 4) for x in latencies],
        "datamanager_duration_ms": own_ms,
        "clickhouse_read_5000_daily_ms": round(direct_read_ms, 1),
        "rows_read": len(rows),
    }


async def _restart_to_ready(
    ctx: BenchContext, topics: Topics, redis: RedisServer, clickhouse: ClickHouseServer
) -> dict[str, Any]:
    livedata = _livedata(redis, clickhouse, "bench_restart")
    prefix = livedata["datamanager"]["redis_key_prefix"]
    state = RedisState(redis_client(redis.url), prefix)
    universe = flat(symbols_by_market(SYMBOLS))
    subscribers = {
        (f"p{i}", "n"): Subscriber(frozenset(universe[(i * 10 + j) % SYMBOLS] for j in range(10)), None, 0)
        for i in range(SUBSCRIBERS)
    }
    partitions = ctx.kafka().partitions.interest_updates
    await state.save_interest(dict(subscribers), dict.fromkeys(range(partitions), 0), {})
    await state.stop()
    started = time.monotonic()
    async with daemons(ctx, topics, ["datamanager"], livedata=livedata):
        ready_s = time.monotonic() - started
    return {"ready_s": round(ready_s, 3), "subscribers": SUBSCRIBERS, "symbols": SYMBOLS}


async def run(ctx: BenchContext) -> list[Figure]:
    count = ctx.pick(500_000, 150_000)
    figures = Figures(NAME)
    async with _servers(ctx) as (redis, clickhouse):
        async with fresh_topics(ctx, NAME) as topics:
            ticks = await sim_ticks(symbols_by_market(SYMBOLS), count)
            await produce_raw(ctx, topics.market_data, encoded(ticks), "bench-loader")
            del ticks
            gc.collect()
            raw = await _raw_consume(ctx, topics.market_data, count, decode_values=False)
            agg = await _aggregation_with_storage(ctx, topics, redis, clickhouse, count)
        capacity = await _insert_capacity(clickhouse, ctx.pick(200_000, 50_000))
        details = {k: v for k, v in agg.items() if k not in ("samples", "all_stored_at")}
        with figures.measure(
            "aggregation with bars stored in ClickHouse",
            "ticks/s",
            baseline_name="raw AIOKafkaConsumer of the same messages",
            target="ratio >= 0.5",
            details={"messages": count, "symbols": SYMBOLS, **details},
        ) as f:
            base = rate_between(raw, 0.05, 0.95, count)
            f.baseline = round(base.per_s)
            f.details["baseline_window"] = base.details()
            rate = rate_between(agg["samples"], 0.05, 0.95, count)
            f.details["window"] = rate.details()
            f.value = round(rate.per_s)
            f.met = rate.per_s / base.per_s >= 0.5
        with figures.measure(
            "bars stored per second during aggregation",
            "rows/s",
            baseline=round(capacity),
            baseline_name="one batched insert loop (10,000 rows a batch) into the same server",
            details={
                "note": "the datamanager inserts each changed bar once per flush (1 s)",
                "window": "its first consumed record → every bar of the backlog stored and its ticks committed",
            },
        ) as f:
            f.value = round(_stored_per_s(agg))
        async with fresh_topics(ctx, NAME) as topics:
            snap = await _snapshot_from_clickhouse(ctx, topics, redis, clickhouse, ctx.pick(5, 3))
        figures.append(
            Figure(
                NAME,
                "bar_snapshot 5,000 bars from ClickHouse (fresh datamanager, worst round)",
                snap["max_s"],
                "s",
                target="<= 1 s",
                met=snap["max_s"] <= 1.0,
                details=snap,
            )
        )
        async with fresh_topics(ctx, NAME) as topics:
            restart = await _restart_to_ready(ctx, topics, redis, clickhouse)
        figures.append(
            Figure(
                NAME,
                "restart to ready, 10,000 subscribers in Redis (process spawn → /readyz 200)",
                restart["ready_s"],
                "s",
                target="<= 2 s",
                met=restart["ready_s"] <= 2.0,
                details=restart,
            )
        )
    return figures
