"""What every benchmark shares: the Figure record, the run context, topics, configs, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from shared.config import AppConfig, KafkaSettings, TopicPartitions, load_config
from shared.kafka import assign_all, consumer_options, ensure_topics, producer_options
from shared.symbols import Market
from shared.topics import Topics
from tests.helpers import TopicFollower, env_without_overrides, write_config_dir

T = TypeVar("T")

# Consumer-group timings only (how fast a group join completes); every producer and fetch
# setting stays at the KafkaSettings default, i.e. what a deployment runs.
GROUP_TIMINGS: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}

# Environment variables that would override the bench's config files in a daemon.


@dataclass
class Figure:
    """One measured figure; ``ratio`` is ``value / baseline`` (throughput: higher is better;
    latency: lower is better, so a latency ratio says how many times the baseline)."""

    bench: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why there is no value
    broker: str = ""  # which broker it was measured on ("kafka", "tansu", an address, or "" for none)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return out


@dataclass
class BenchContext:
    """One run's settings: quick or full, the broker, a work directory for configs and logs."""

    quick: bool
    workdir: Path
    bootstrap: str = ""
    kafka_overrides: dict[str, Any] = field(default_factory=dict)
    broker_pid: int | None = None
    broker_kind: str = ""  # "kafka", "tansu" or "external"

    def pick(self, full: T, quick: T) -> T:
        """The full-run value, or the quick one under ``--quick``."""
        return quick if self.quick else full

    def kafka_fields(self) -> dict[str, Any]:
        """The ``kafka:`` section every config of the run gets (and every baseline uses)."""
        # what `auto` settles on for this broker, spelled out for the raw baselines' producers
        idempotence = {"enable_idempotence": self.broker_kind != "tansu"}
        return {"bootstrap_servers": self.bootstrap, **GROUP_TIMINGS, **idempotence, **self.kafka_overrides}

    def kafka(self) -> KafkaSettings:
        return KafkaSettings.model_validate(self.kafka_fields())

    def new_topics(self, bench: str) -> Topics:
        return Topics(f"bench.{bench}.{uuid.uuid4().hex[:8]}")

    def config_dir(
        self,
        topics: Topics,
        livedata: dict[str, Any] | None = None,
        data_sources: dict[str, Any] | None = None,
        task_timer: dict[str, Any] | None = None,
    ) -> Path:
        """Write a config directory (livedata.yml etc.) for the run's broker and ``topics``.

        ``livedata`` sections are merged over the defaults (HTTP endpoints on free ports).
        """
        return write_config_dir(
            self.workdir, self.kafka_fields(), topics.prefix, livedata, data_sources=data_sources, task_timer=task_timer
        )

    def load(self, directory: Path) -> AppConfig:
        return load_config(directory, env=daemon_env())


def run_in_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine under uvloop, as the daemons do."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(main)
    return uvloop.run(main)


daemon_env = env_without_overrides


# -- topics ---------------------------------------------------------------------------------


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (Tansu has no retention)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_topics(
    ctx: BenchContext, bench: str, partitions: TopicPartitions | None = None
) -> AsyncIterator[Topics]:
    """The system's six topics under a new prefix; deleted afterwards with every
    ``{prefix}.*`` topic the benchmark added (baselines)."""
    topics = ctx.new_topics(bench)
    kafka = ctx.kafka()
    await ensure_topics(
        kafka, topics.with_partitions(partitions or kafka.partitions), topics.with_configs(kafka.retention)
    )
    try:
        yield topics
    finally:
        await delete_topics(ctx.bootstrap, topics.prefix + ".")


async def create_topic(ctx: BenchContext, name: str, partitions: int) -> None:
    await ensure_topics(ctx.kafka(), {name: partitions})


# -- raw aiokafka (the baselines) -------------------------------------------------------------

KeyValue = tuple[bytes | None, bytes]
RAW_IN_FLIGHT = 20_000  # delivery futures held by the raw producer: pipelined, memory flat


async def produce_raw(ctx: BenchContext, topic: str, items: Sequence[KeyValue], client_id: str) -> float:
    """Produce ``items`` with a plain AIOKafkaProducer built from the run's settings
    (``producer_options``, as the services do), pipelined (a sliding window of delivery
    futures); seconds from the first send to the last ack."""
    producer = AIOKafkaProducer(**producer_options(ctx.kafka(), client_id))
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata outside the timed part
        send = producer.send
        in_flight: deque[asyncio.Future[Any]] = deque()
        started = time.perf_counter()
        for key, value in items:
            in_flight.append(await send(topic, value, key=key))
            if len(in_flight) >= RAW_IN_FLIGHT:
                await in_flight.popleft()
        for f in in_flight:
            await f
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def read_topic(
    ctx: BenchContext, topic: str, count: int, timeout_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of ``topic`` (every partition, from the beginning)."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-reader"))
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} of {count} records of {topic} in {timeout_s}s")
            for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out[:count]


# -- symbols ----------------------------------------------------------------------------------


def symbols_by_market(n: int, start: int = 0) -> dict[Market, list[str]]:
    """``n`` distinct canonical symbols: 60 % CN (SH and SZ), 20 % HK, 20 % US.

    ``start`` offsets the codes, so two calls with disjoint ranges never share a symbol.
    """
    n_hk = n // 5
    n_us = n // 5
    n_cn = n - n_hk - n_us
    cn = [f"{600000 + start + i:06d}.SH" if i % 2 == 0 else f"{1 + start + i:06d}.SZ" for i in range(n_cn)]
    hk = [f"{1 + start + i:05d}.HK" for i in range(n_hk)]
    us = [f"U{start + i:05d}" for i in range(n_us)]
    return {m: s for m, s in ((Market.CN, cn), (Market.HK, hk), (Market.US, us)) if s}


def flat(symbols: dict[Market, list[str]]) -> list[str]:
    return [s for group in symbols.values() for s in group]


def sim_sources(
    markets: Iterable[Market], ticks_per_s_per_symbol: float, interval_ms: float, **extra: Any
) -> dict[str, Any]:
    """A data_sources.yml with one ``sim`` source per market."""
    sim = {"type": "sim", "ticks_per_s_per_symbol": ticks_per_s_per_symbol, "interval_ms": interval_ms, **extra}
    return {"markets": {m.value: {"sources": [sim]} for m in markets}}


# -- statistics -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """p50, p90, p99, p99.9, max, mean and count of ``values`` (multiplied by ``scale``)."""
    v = sorted(x * scale for x in values)
    if not v:
        return {"count": 0}
    return {
        "count": len(v),
        "p50": round(percentile(v, 50), digits),
        "p90": round(percentile(v, 90), digits),
        "p99": round(percentile(v, 99), digits),
        "p99.9": round(percentile(v, 99.9), digits),
        "max": round(v[-1], digits),
        "mean": round(statistics.fmean(v), digits),
    }


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 2:
        return math.nan
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    if max(xs) == min(xs):
        return math.nan
    return statistics.linear_regression(xs, ys).slope * 60.0


def rate_between(samples: Sequence[tuple[float, float]], lo_frac: float, hi_frac: float, total: float) -> float:
    """Units per second between the first samples at ``lo_frac`` and ``hi_frac`` of ``total``.

    ``samples`` are (seconds, cumulative count); cutting the ends leaves start-up (group
    join, first fetch) and the last partial batches out of a throughput figure.
    """
    lo = next((s for s in samples if s[1] >= total * lo_frac), None)
    hi = next((s for s in samples if s[1] >= total * hi_frac), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return math.nan
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


async def sample_until(
    read: Callable[[], float], done: Callable[[float], bool], timeout_s: float, interval_s: float = 0.005
) -> list[tuple[float, float]]:
    """Poll ``read()`` every ``interval_s`` until ``done(value)``; (perf_counter, value) samples.

    Raises TimeoutError at the deadline.
    """
    samples: list[tuple[float, float]] = []
    deadline = time.perf_counter() + timeout_s
    while True:
        now = time.perf_counter()
        value = read()
        samples.append((now, value))
        if done(value):
            return samples
        if now > deadline:
            raise TimeoutError(f"still at {value} after {timeout_s}s")
        await asyncio.sleep(interval_s)  # sampling period of a counter, not a condition wait


# -- observing topics -------------------------------------------------------------------------


RecordsCallback = Callable[[list[ConsumerRecord[bytes, bytes]], float], None]


class TopicTap(TopicFollower):
    """Follows a topic from the beginning and hands each fetched batch to
    ``on_records(records, received_at)``. Fetch settings are the client SDK's."""

    def __init__(self, ctx: BenchContext, topic: str, on_records: RecordsCallback) -> None:
        super().__init__(topic, consumer_options(ctx.kafka(), "bench-tap", fetch_max_wait_ms=5))
        self._on_records = on_records

    def on_batch(self, records: list[ConsumerRecord[bytes, bytes]], received_at: float) -> None:
        self._on_records(records, received_at)
