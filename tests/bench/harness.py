"""What every benchmark shares: the Figure record, the run context, topics, configs, statistics.

One rule for every figure: a benchmark measures what it says or says why it cannot. A
helper whose window is too short or empty (``rate_between``, ``slope_per_minute``,
``statistic``) raises ``NotMeasured``; ``Figures.measure`` turns that into a figure
reported as "not measured: <reason>" and the benchmark goes on with its other figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from shared.alarms import LoopHeartbeats
from shared.config import AppConfig, KafkaSettings, TopicPartitions, load_config
from shared.kafka import assign_all, consumer_options, ensure_topics, producer_options
from shared.symbols import Market
from shared.topics import Topics
from tests.helpers import TopicFollower, env_without_overrides, write_config_dir

T = TypeVar("T")

# Consumer-group timings only (how fast a group join completes); every producer and fetch
# setting stays at the KafkaSettings default, i.e. what a deployment runs.
GROUP_TIMINGS: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


class NotMeasured(Exception):
    """A figure's window was too short or empty: it is reported without a value, with this
    message as the reason (``Figures.measure``), never as a number from a window not seen."""


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _json_safe(v: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN), in nested details too."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


@dataclass
class Figure:
    """One measured figure; ``ratio`` is ``value / baseline`` (throughput: higher is better;
    latency: lower is better, so a latency ratio says how many times the baseline).

    ``skipped``: the benchmark (or this part of it) could not run. ``not_measured``: it ran,
    but the figure's window was too short or empty; ``settle()`` enforces that such a figure
    has no value and no verdict.
    """

    bench: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why there is no value: it could not run
    broker: str = ""  # which broker it was measured on ("kafka", "tansu", an address, or "" for none)
    not_measured: str | None = None  # why there is no value: its window was too short or empty

    @property
    def ratio(self) -> float | None:
        if not _finite(self.value) or not _finite(self.baseline) or not self.baseline:
            return None
        assert self.value is not None and self.baseline is not None
        return self.value / self.baseline

    @property
    def measured(self) -> bool:
        return self.skipped is None and self.not_measured is None

    def settle(self) -> Figure:
        """Apply the rule: no finite value (or a baseline that is not a number) means not
        measured, with a reason; a figure without a value has no verdict."""
        if self.skipped is None and self.not_measured is None:
            if not _finite(self.value):
                self.not_measured = "no value was measured" if self.value is None else f"value is {self.value}"
            elif self.baseline is not None and not _finite(self.baseline):
                self.not_measured = f"baseline is {self.baseline}"
                self.details["value_without_baseline"] = self.value
        if not self.measured:
            self.value = None
            self.met = None
        if self.baseline is not None and not _finite(self.baseline):
            self.baseline = None
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _json_safe(asdict(self))
        out["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return out


class Figures(list[Figure]):
    """One benchmark's figures, each built in a ``measure`` block."""

    def __init__(self, bench: str) -> None:
        super().__init__()
        self.bench = bench

    @contextlib.contextmanager
    def measure(self, name: str, unit: str, **fields: Any) -> Iterator[Figure]:
        """Add the figure ``name`` and yield it to be filled in (value, baseline, met,
        details); a ``NotMeasured`` raised inside makes it "not measured" with that reason
        (whatever was filled in stays in its details) and the benchmark goes on."""
        figure = Figure(self.bench, name, None, unit, **fields)
        self.append(figure)
        try:
            yield figure
        except NotMeasured as e:
            figure.not_measured = str(e)
        figure.settle()


@dataclass
class BenchContext:
    """One run's settings: quick or full, the broker, a work directory for configs and logs."""

    quick: bool
    workdir: Path
    bootstrap: str = ""
    kafka_overrides: dict[str, Any] = field(default_factory=dict)
    broker_pid: int | None = None
    broker_kind: str = ""  # "kafka", "tansu" or "external"
    minutes: float | None = None  # --minutes: the soak's length (None: its default)

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


def statistic(dist: dict[str, Any], key: str, what: str) -> float:
    """``dist[key]`` of a ``distribution()``; NotMeasured when it had no values."""
    if not dist.get("count"):
        raise NotMeasured(f"no {what} in the window")
    value = dist[key]
    if not _finite(value):
        raise NotMeasured(f"{key} of {what} is {value}")
    return float(value)


MIN_SLOPE_POINTS = 3


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute; NotMeasured with fewer
    than ``MIN_SLOPE_POINTS`` samples or no time between them."""
    if len(samples) < MIN_SLOPE_POINTS:
        raise NotMeasured(f"{len(samples)} samples in the window: a slope needs {MIN_SLOPE_POINTS}")
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    if max(xs) == min(xs):
        raise NotMeasured("every sample at the same moment: no time to take a slope over")
    return statistics.linear_regression(xs, ys).slope * 60.0


@dataclass(frozen=True)
class Rate:
    """Units per second over a window of (seconds, cumulative count) samples."""

    per_s: float
    units: float  # counted inside the window
    seconds: float
    points: int  # samples from the window's start to its end, both included

    def details(self) -> dict[str, Any]:
        return {"window_units": round(self.units), "window_s": round(self.seconds, 3), "window_samples": self.points}


# A window must hold at least this share of the units between its two marks (a counter
# that jumped from 0 past the low mark in one step started the window late), span this
# many samples and last this long; shorter, the figure is not measured.
MIN_WINDOW_SHARE = 0.75
MIN_WINDOW_POINTS = 3
MIN_WINDOW_S = 0.05


def _count(v: float) -> str:
    return f"{v:,.0f}"


def rate_between(samples: Sequence[tuple[float, float]], lo_frac: float, hi_frac: float, total: float) -> Rate:
    """The rate between the first samples at ``lo_frac`` and ``hi_frac`` of ``total``.

    ``samples`` are (seconds, cumulative count), in time order, and must begin before the
    low mark (from before the first record): cutting the ends leaves start-up (group join,
    first fetch) and the last partial batches out of a throughput figure. NotMeasured when
    the samples did not see that window: sampling began past the low mark, the count never
    reached the high one, or the window is too short (``MIN_WINDOW_*``).
    """
    lo_at, hi_at = total * lo_frac, total * hi_frac
    span = f"{lo_frac:.0%}-{hi_frac:.0%} of {_count(total)}"
    if not samples:
        raise NotMeasured(f"no samples of the window {span}")
    if samples[0][1] > lo_at:
        raise NotMeasured(f"sampling began at {_count(samples[0][1])}, past the start of the window {span}")
    lo_i = next((i for i, s in enumerate(samples) if s[1] >= lo_at), None)
    hi_i = next((i for i, s in enumerate(samples) if s[1] >= hi_at), None)
    if lo_i is None or hi_i is None:
        raise NotMeasured(f"the count stopped at {_count(samples[-1][1])}, short of the window {span}")
    lo, hi = samples[lo_i], samples[hi_i]
    units, seconds, points = hi[1] - lo[1], hi[0] - lo[0], hi_i - lo_i + 1
    wanted = MIN_WINDOW_SHARE * (hi_at - lo_at)
    if units < wanted or points < MIN_WINDOW_POINTS or seconds < MIN_WINDOW_S:
        seen = ", ".join(_count(v) for _, v in samples[max(lo_i - 1, 0) : hi_i + 1][:8])
        raise NotMeasured(
            f"window {span} too short: {points} samples saw {_count(units)} units in {seconds:.3f} s"
            f" (needs {MIN_WINDOW_POINTS} samples, {_count(wanted)} units, {MIN_WINDOW_S:g} s); counts seen: {seen}"
        )
    return Rate(units / seconds, units, seconds, points)


def rate_detail(samples: Sequence[tuple[float, float]], lo_frac: float, hi_frac: float, total: float) -> Any:
    """A diagnostic rate for a figure's details: rounded, or "not measured: <reason>"."""
    try:
        return round(rate_between(samples, lo_frac, hi_frac, total).per_s)
    except NotMeasured as e:
        return f"not measured: {e}"


def first_record_at(samples: Sequence[tuple[float, float]]) -> float:
    """When the first unit was counted: the last sample still at zero before the count rose
    (the moment the fetch that brought it began). NotMeasured if sampling began later."""
    if not samples or samples[0][1] > 0:
        raise NotMeasured("sampling began after the first record: the window's start was not seen")
    start = samples[0][0]
    for t, v in samples:
        if v > 0:
            return start
        start = t
    raise NotMeasured("no record was counted")


class LoopSampler:
    """(perf_counter, ``read()``) samples of a counter of a service running in this process,
    taken at every beat of its loop ``loop`` (``service.loops.beat``: once round the loop,
    i.e. once per fetch) and every ``interval_s`` while ``until`` waits.

    The beats are what make the samples fine enough: a consumer loop folds one buffered
    fetch after another without yielding to the event loop, so a poller alone can see a
    whole prefetched backlog (a freshly started datamanager prefetches it while it waits
    for the group coordinator) as one jump from 0 to the end. The first sample is taken on
    entering, before the service starts: the window's start is always seen.
    """

    def __init__(self, loops: LoopHeartbeats, loop: str, read: Callable[[], float]) -> None:
        self.samples: list[tuple[float, float]] = []
        self._loops = loops
        self._loop = loop
        self._read = read

    def _sample(self) -> float:
        value = self._read()
        self.samples.append((time.perf_counter(), value))
        return value

    def __enter__(self) -> LoopSampler:
        original = self._loops.beat

        def beat(name: str) -> None:
            if name == self._loop:
                self._sample()
            original(name)

        self._loops.beat = beat  # type: ignore[method-assign]
        self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        del self._loops.beat  # the class's method again

    async def until(self, done: Callable[[float], bool], timeout_s: float, interval_s: float = 0.01) -> None:
        """Sample every ``interval_s`` too, until ``done(value)``; TimeoutError at the deadline."""
        deadline = time.perf_counter() + timeout_s
        while not done(value := self._sample()):
            if time.perf_counter() > deadline:
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
