"""The full market end to end on Apache Kafka: 5,469 CN + 2,672 HK + 6,000 US symbols, CN and
HK one snapshot per symbol every 3 s, US 20,000 trades/s with a burst at 100,000/s.

The system: Redis, ClickHouse, the gateway (sim feeders at those rates), a partitioned
datamanager member with its bars in ClickHouse, and the tasktimer, as processes; one
subscriber holds the whole market. The sim holds a rate, it cannot change it mid-run, and one
gateway process tops out below 100,000 ticks/s beside everything else on two cores, so the
burst is the sim's 20,000 US trades/s plus 80,000/s more from a load generator (plain
aiokafka producers in their own processes, tests/bench/market_load.py) straight onto market
data for the burst's length, keyed and shaped like US trades. Market data has
``PARTITIONS`` partitions, as a full-market deployment would give it (with the default 6 a
node of 10 symbols would read most of them). Figures:

- tick → client latency p50/p99 outside the burst (ticks created in the steady window) and
  through it (created during the burst), for a client SDK of 200 symbols here, beside raw
  aiokafka: the same load made entirely by the load generator and read by a plain consumer
  of the same symbols' partitions with the SDK's fetch settings (a drain reads everything, as
  the datamanager does);
- each daemon's RSS after the warm-up (and at the end of the burst, in the details);
- a client of 10 symbols, in its own process: bytes read and CPU seconds over the steady
  window, the SDK (only its partitions) beside a consumer of every partition keeping its
  symbols (what a node did before);
- aggregation of a backlog by one partitioned member and by two, each a process with bars in
  ClickHouse, beside a raw consumer of the backlog; the members are held (SIGSTOP) once
  their group has settled on the empty topic and released together once the backlog is in,
  so the rates are of members that own their share from the first record;
- interest → first tick of a new symbol at full market, beside three raw hops;
- a rebalance under full load: a second member joins; how long bar storage (and folding)
  stopped, beside the longest pause in the steady window before; then the load stops and
  nothing is lost: the group committed every record, and every symbol's stored daily bar
  ends at its last tick (partition and offset), carries its cumulative volume, and every
  minute it ticked in has a stored minute bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.datamanager.barstore import ClickHouseBars
from services.ops.servers import ClickHouseServer, RedisServer, free_port
from shared.client import LiveDataClient
from shared.config import KafkaSettings, TopicPartitions
from shared.dto import Bar, DecodeError, InterestUpdate, PriceUpdate, decode, utcnow
from shared.kafka import assign_all, consumer_options
from shared.partitioning import symbol_partition
from shared.symbols import Market
from shared.topics import Topics
from tests.bench import subscription_change
from tests.bench.aggregation import _raw_consume
from tests.bench.daemons import ROOT, CpuMeter, Daemon, rss_mb
from tests.bench.harness import (
    BenchContext,
    Figure,
    Figures,
    NotMeasured,
    daemon_env,
    distribution,
    fresh_topics,
    percentile,
    produce_raw,
    rate_between,
    statistic,
)
from tests.bench.market_load import CANARY_SIZE
from tests.bench.storage import _servers
from tests.bench.ticks import encoded, sim_ticks
from tests.bench.universe import US_REAL, full_market
from tests.helpers import eventually, publish
from tests.reliability.scale_out import split_between

NAME = "full_market"
TITLE = "the full market (5,469 CN + 2,672 HK + 6,000 US) end to end, Apache Kafka"
NEEDS_BROKER = True
BROKER_KINDS = ("kafka", "external")  # latency cannot be judged on Tansu (INFRA.md)

PARTITIONS = 24
SNAPSHOT_PERIOD_S = 3.0  # CN and HK: one snapshot per symbol this often
US_PER_S = 20_000.0
BURST_PER_S = 100_000.0
LOAD_SLICES = 2  # load-generator processes (one Python producer tops out near 80,000/s)
LATENCY_SYMBOLS = {Market.US: 100, Market.CN: 60, Market.HK: 40}
# Through the rebalance: symbols of their own traded at a known size, so every trade lost
# (or counted twice) shows in the stored volumes; the full market's snapshot volumes are
# cumulative and would hide a lost tick behind the next one.
CANARIES = 300
CANARY_PER_S = 1500.0
CLIENT_SYMBOLS = US_REAL  # the node of 10 symbols
TARGET_P99_MS = 10.0
TARGET_RSS_MB = 250.0
TARGET_FIRST_TICK_MS = 200.0
TARGET_MEMBER_RATIO = 0.5
METRICS_EVERY_S = 0.05
# What a deployment runs (KafkaSettings' defaults), not the harness's quick group timings: at
# the full market a member's loop is held for seconds at a time (a rebalance loads 14,000
# symbols' bars), and a 2-second session expires under it, over and over.
DEPLOYED_GROUP_TIMINGS: dict[str, Any] = {
    "session_timeout_ms": KafkaSettings.model_fields["session_timeout_ms"].default,
    "heartbeat_interval_ms": KafkaSettings.model_fields["heartbeat_interval_ms"].default,
}


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU so far (/proc/stat): the machine's load, ours or not."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return float(sum(fields) - idle), float(sum(fields))


class Cpu:
    """Each named process's share of one core, and the whole machine's busy share of all its
    cores, between ``__init__`` and ``result()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._meter = CpuMeter(pids)
        self._machine = machine_busy()

    def result(self) -> dict[str, Any]:
        busy, total = machine_busy()
        shares = self._meter.shares()
        return {
            "cores_busy_share_of_one": shares,
            "ours_in_cores": round(sum(shares.values()), 2),
            "machine_busy_in_cores": round(
                (busy - self._machine[0]) / max(total - self._machine[1], 1.0) * (os.cpu_count() or 1), 2
            ),
        }


@dataclass(frozen=True)
class Timings:
    warmup_s: float
    first_tick_rounds: int
    steady_s: float
    burst_s: float
    tail_s: float
    rebalance_before_s: float
    rebalance_after_s: float
    backlog: int

    @classmethod
    def of(cls, ctx: BenchContext) -> Timings:
        return cls(
            warmup_s=ctx.pick(30.0, 6.0),
            first_tick_rounds=ctx.pick(21, 5),
            steady_s=ctx.pick(30.0, 8.0),
            burst_s=ctx.pick(10.0, 5.0),
            tail_s=ctx.pick(10.0, 3.0),
            rebalance_before_s=ctx.pick(15.0, 5.0),
            rebalance_after_s=ctx.pick(20.0, 6.0),
            backlog=ctx.pick(1_000_000, 400_000),
        )


def rates() -> dict[Market, float]:
    """Steady ticks/s per market."""
    u = full_market()
    return {
        Market.CN: len(u[Market.CN]) / SNAPSHOT_PERIOD_S,
        Market.HK: len(u[Market.HK]) / SNAPSHOT_PERIOD_S,
        Market.US: US_PER_S,
    }


def sim_sources() -> dict[str, Any]:
    """data_sources.yml: one sim per market at the full market's rates."""
    u = full_market()
    snapshot = {"type": "sim", "ticks_per_s_per_symbol": 1.0 / SNAPSHOT_PERIOD_S, "interval_ms": 100.0}
    trades = {"type": "sim", "ticks_per_s_per_symbol": US_PER_S / len(u[Market.US]), "interval_ms": 20.0}
    return {"markets": {"CN": {"sources": [snapshot]}, "HK": {"sources": [snapshot]}, "US": {"sources": [trades]}}}


def latency_symbols() -> list[str]:
    u = full_market()
    return [s for m, n in LATENCY_SYMBOLS.items() for s in u[m][:: len(u[m]) // n][:n]]


def new_symbols(n: int) -> list[str]:
    """Symbols outside the full-market lists (CN, HK, US in turn), for interest → first tick."""
    taken = {s for group in full_market().values() for s in group}
    out: list[str] = []
    i = 0
    while len(out) < n:
        kind = i % 3
        s = f"{604999 - i:06d}.SH" if kind == 0 else f"{7999 - i:05d}.HK" if kind == 1 else f"NEW{i:03d}"
        if s not in taken:
            out.append(s)
        i += 1
    return out


# -- processes --------------------------------------------------------------------------------


@dataclass
class Stores:
    redis: RedisServer
    clickhouse: ClickHouseServer


@dataclass
class Deployment:
    """The config sections every process of one system run shares (one Redis prefix, one
    ClickHouse database, one datamanager group)."""

    ctx: BenchContext
    topics: Topics
    stores: Stores
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    kafka: dict[str, Any] = field(default_factory=lambda: dict(DEPLOYED_GROUP_TIMINGS))

    @property
    def database(self) -> str:
        return f"bench_full_{self.tag}"

    @property
    def group(self) -> str:
        return f"bench-full-{self.tag}"

    def sections(self, **per_service: dict[str, Any]) -> dict[str, Any]:
        dm = {
            "partitioned": True,
            "group_id": self.group,
            "redis_key_prefix": f"bench:full:{self.tag}",
            "limits": {"max_symbols_per_subscriber": 20_000},
            **per_service.pop("datamanager", {}),
        }
        out: dict[str, Any] = {
            "redis": {"url": self.stores.redis.url},
            "clickhouse": {"url": self.stores.clickhouse.url, "database": self.database},
            "datamanager": dm,
            "tasktimer": {"redis_prefix": f"bench:full:{self.tag}:tt"},
        }
        out["kafka"] = self.kafka
        for name, values in per_service.items():
            out[name] = {**out.get(name, {}), **values}
        return out

    def daemon(
        self, name: str, label: str, task_timer: dict[str, Any] | None = None, **sections: dict[str, Any]
    ) -> Daemon:
        port = free_port()
        service = {**sections.pop(name, {}), "http": {"port": port}}
        live = self.sections(**{name: service}, **sections)
        directory = self.ctx.config_dir(self.topics, live, sim_sources(), task_timer)
        return Daemon(name, directory, port, self.ctx.workdir / f"{self.topics.prefix}.{label}.log")

    def member(self, member_id: str) -> Daemon:
        return self.daemon("datamanager", f"dm-{member_id}", datamanager={"member_id": member_id})


@contextlib.asynccontextmanager
async def running(*procs: Daemon, timeout_s: float = 40.0) -> AsyncIterator[None]:
    """Start ``procs`` (each ready before the next starts) and stop them all afterwards."""
    started: list[Daemon] = []
    try:
        for d in procs:
            started.append(d)
            await d.start()
            await d.wait_ready(timeout_s)
        yield
    finally:
        for d in reversed(started):
            await d.stop()


REJECTED = "livedata_datamanager_ticks_rejected_total"


async def counters(d: Daemon, by_reason: bool = False) -> dict[str, Any]:
    """Ticks folded (+ rejected), bar rows stored, from one datamanager's /metrics (and the
    rejections by reason, with ``by_reason``)."""
    text = await d.get("/metrics")
    out: dict[str, Any] = {"ticks": 0.0, "rejected": 0.0, "stored": 0.0}
    reasons: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "livedata_datamanager_ticks_aggregated_total":
            out["ticks"] = float(value)
        elif name.startswith(REJECTED):
            out["rejected"] += float(value)
            reasons[name[len(REJECTED) :].strip("{}")] = float(value)
        elif name == "livedata_datamanager_bars_stored_total":
            out["stored"] = float(value)
    if by_reason:
        out["rejected_by"] = reasons
    return out


class Series:
    """(perf_counter, cumulative) samples of a counter that restarts from 0 when a member's
    aggregator is replaced on a rebalance (the restart is added back: the series only grows)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._last = 0.0
        self._offset = 0.0

    def add(self, at: float, raw: float) -> None:
        if raw < self._last:
            self._offset += self._last
        self._last = raw
        self.samples.append((at, self._offset + raw))

    @property
    def value(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


class MemberSampler:
    """Every ``METRICS_EVERY_S``: each member's ticks (folded + rejected) and bars stored,
    one sampling task per member (a busy member answers late; it delays only its own series)."""

    def __init__(self) -> None:
        self.ticks: dict[str, Series] = {}
        self.stored: dict[str, Series] = {}
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    def seed(self, label: str, at: float, value: dict[str, float]) -> None:
        """A sample taken before the member was released (its counters cannot have moved)."""
        self.ticks.setdefault(label, Series()).add(at, value["ticks"] + value["rejected"])
        self.stored.setdefault(label, Series()).add(at, value["stored"])

    def watch(self, label: str, d: Daemon) -> None:
        ticks = self.ticks.setdefault(label, Series())
        stored = self.stored.setdefault(label, Series())

        async def sample() -> None:
            while True:
                try:
                    c = await counters(d)
                except (OSError, AssertionError, RuntimeError, TimeoutError, aiohttp.ClientError):
                    self.errors += 1  # not up yet, or busy past the HTTP timeout
                else:
                    now = time.perf_counter()
                    ticks.add(now, c["ticks"] + c["rejected"])
                    stored.add(now, c["stored"])
                await asyncio.sleep(METRICS_EVERY_S)  # the sampling period of a counter

        self._tasks.append(asyncio.create_task(sample(), name=f"bench.sample-{label}"))

    def total(self, which: str) -> list[tuple[float, float]]:
        """The sum over members, at every sample time of any member (each member's latest value)."""
        series = self.ticks if which == "ticks" else self.stored
        events = sorted((t, label, v) for label, s in series.items() for t, v in s.samples)
        latest: dict[str, float] = {}
        out = []
        for t, label, v in events:
            latest[label] = v
            out.append((t, sum(latest.values())))
        return out

    async def __aenter__(self) -> MemberSampler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def rebalances(d: Daemon) -> int:
    """How many times a member gave its partitions back (its log's "partitions revoked" lines,
    the first, empty one at start-up not counted)."""
    try:
        text = d.log.read_text(errors="replace")
    except OSError:
        return -1
    return sum(1 for line in text.splitlines() if "partitions revoked" in line and "partitions=[]" not in line)


def longest_pause(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The longest time between two increases of a cumulative series within [start, end]."""
    last_rise = start
    prev: float | None = None
    longest = 0.0
    for t, v in samples:
        if t < start:
            prev = v
            continue
        if t > end:
            break
        if prev is not None and v > prev:
            longest = max(longest, t - last_rise)
            last_rise = t
        prev = v
    longest = max(longest, min(end, samples[-1][0] if samples else end) - last_rise)
    if prev is None:
        raise NotMeasured("no samples in the window")
    return longest


# -- the load generator -----------------------------------------------------------------------


class Load:
    """``LOAD_SLICES`` market_load processes; ``started_at`` is the first one's start (epoch)."""

    def __init__(
        self,
        ctx: BenchContext,
        topic: str,
        steady: dict[Market, float],
        burst: dict[Market, float],
        burst_at_s: float,
        burst_s: float,
        duration_s: float,
        drain: bool = False,
        canary: tuple[int, float] | None = None,
    ) -> None:
        kafka = {k: v for k, v in ctx.kafka_fields().items() if k != "bootstrap_servers"}
        self._argv = [
            "--bootstrap",
            ctx.bootstrap,
            "--topic",
            topic,
            "--duration-s",
            str(duration_s),
            "--burst-at-s",
            str(burst_at_s),
            "--burst-s",
            str(burst_s),
            "--kafka",
            json.dumps(kafka),
            *(a for m, r in steady.items() for a in ("--rate", f"{m.value}={r}")),
            *(a for m, r in burst.items() for a in ("--burst-rate", f"{m.value}={r}")),
            *(("--canary", str(canary[0]), "--canary-rate", str(canary[1])) if canary else ()),
        ]
        self._drain = drain
        self.procs: list[asyncio.subprocess.Process] = []
        self.started_at: list[float] = []
        self.results: list[dict[str, Any]] = []

    async def start(self) -> float:
        for i in range(LOAD_SLICES):
            extra = ["--drain"] if self._drain and i == 0 else []
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.bench.market_load",
                    *self._argv,
                    "--slice",
                    f"{i}/{LOAD_SLICES}",
                    *extra,
                    cwd=ROOT,
                    env=daemon_env(),
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for p in self.procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"the load generator exited with {await p.wait()} before sending")
            self.started_at.append(float(json.loads(line)["started_at"]))
        return min(self.started_at)

    async def finish(self, timeout_s: float) -> dict[str, Any]:
        """Wait for every slice; what they sent per phase, summed."""
        for p in self.procs:
            assert p.stdout is not None
            out, _ = await asyncio.wait_for(p.communicate(), timeout_s)
            self.results.append(json.loads(out.decode().strip().splitlines()[-1]))
        phases: dict[str, dict[str, float]] = {}
        for r in self.results:
            for name, ph in r["phases"].items():
                total = phases.setdefault(name, {"sent": 0, "per_s": 0})
                total["sent"] += ph["sent"]
                total["per_s"] += ph["per_s"]
        return phases

    async def kill(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


# -- latency ----------------------------------------------------------------------------------


class Arrivals:
    """(created epoch s, latency s, source) of every new price update received."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, str]] = []

    def add(self, items: Iterable[PriceUpdate | Bar | Any], now: float) -> None:
        for u in items:
            if isinstance(u, PriceUpdate) and not u.snapshot:
                created = u.timestamp.timestamp()
                self.samples.append((created, now - created, u.source))

    def between(self, start: float, end: float) -> list[float]:
        return [lat for created, lat, _ in self.samples if start <= created < end]

    def report(self, steady: tuple[float, float], burst: tuple[float, float], tail_s: float) -> dict[str, Any]:
        per_s: list[dict[str, Any]] = []
        slices: dict[int, list[float]] = {}
        for created, lat, _ in self.samples:
            if steady[0] <= created < burst[1] + tail_s:
                slices.setdefault(int(created - burst[0] + 1000) - 1000, []).append(lat * 1000)
        for second, lats in sorted(slices.items()):
            v = sorted(lats)
            per_s.append(
                {"s": second, "n": len(v), "p50": round(percentile(v, 50), 2), "p99": round(percentile(v, 99), 2)}
            )
        sources: dict[str, int] = {}
        for _, _, src in self.samples:
            sources[src] = sources.get(src, 0) + 1
        return {
            "steady": distribution(self.between(*steady), scale=1000.0),
            "burst": distribution(self.between(*burst), scale=1000.0),
            "after_burst": distribution(self.between(burst[1], burst[1] + tail_s), scale=1000.0),
            "per_second_from_burst_start_ms": per_s,
            "received_by_source": sources,
        }


class Breakdown:
    """Where a tick's latency goes, on one partition read by a plain consumer: tick created →
    the gateway's producer took it (the record's CreateTime), and that → here."""

    def __init__(self, ctx: BenchContext, topic: str, symbols: list[str]) -> None:
        by_partition: dict[int, list[str]] = {}
        for s in symbols:
            by_partition.setdefault(symbol_partition(s, PARTITIONS), []).append(s)
        self.partition, mine = max(by_partition.items(), key=lambda kv: len(kv[1]))
        self._wanted = {s.encode() for s in mine}
        self._tp = TopicPartition(topic, self.partition)
        self._consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-breakdown"))
        self.samples: list[tuple[float, float, float]] = []  # (created, in gateway s, after it s)
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
            now = time.time()
            for records in batches.values():
                for r in records:
                    if r.key not in self._wanted:
                        continue
                    m = decode(r.value or b"")
                    if isinstance(m, PriceUpdate) and not m.snapshot and m.source != "load":
                        created, sent = m.timestamp.timestamp(), r.timestamp / 1000
                        self.samples.append((created, sent - created, now - sent))

    def report(self, start: float, end: float) -> dict[str, Any]:
        window = [(g, k) for c, g, k in self.samples if start <= c < end]
        return {
            "partition": self.partition,
            "created_to_producer_ms": distribution((g for g, _ in window), scale=1000.0),
            "producer_to_consumer_ms": distribution((k for _, k in window), scale=1000.0),
        }

    async def __aenter__(self) -> Breakdown:
        await self._consumer.start()
        self._consumer.assign([self._tp])
        await self._consumer.seek_to_end(self._tp)
        self._task = asyncio.create_task(self._read(), name="bench.breakdown")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@contextlib.asynccontextmanager
async def reading(client: LiveDataClient, arrivals: Arrivals) -> AsyncIterator[None]:
    async def read() -> None:
        while True:
            batch = await client.next_batch()
            arrivals.add(batch, time.time())

    task = asyncio.create_task(read(), name="bench.latency-client")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the client of 10 symbols -----------------------------------------------------------------


async def probe(ctx: BenchContext, topics: Topics, mode: str, seconds: float, warmup_s: float) -> dict[str, Any]:
    kafka = {k: v for k, v in ctx.kafka_fields().items() if k != "bootstrap_servers"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bench.client_probe",
        "--bootstrap",
        ctx.bootstrap,
        "--prefix",
        topics.prefix,
        "--mode",
        mode,
        "--symbols",
        ",".join(CLIENT_SYMBOLS),
        "--seconds",
        str(seconds),
        "--warmup-s",
        str(warmup_s),
        "--kafka",
        json.dumps(kafka),
        cwd=ROOT,
        env=daemon_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + warmup_s + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"mode": mode, "failed": "the client probe did not finish"}
    if proc.returncode != 0:
        return {"mode": mode, "failed": f"the client probe exited with {proc.returncode}"}
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- nothing lost -----------------------------------------------------------------------------


async def committed_to_end(ctx: BenchContext, group: str, topic: str, timeout_s: float) -> dict[str, Any]:
    """Wait until ``group`` has committed every partition of ``topic`` to its end."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-offsets", group_id=group))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        behind: dict[int, int] = {}

        async def done() -> bool:
            behind.clear()
            for tp in tps:
                c = await consumer.committed(tp) or 0
                if c < ends[tp]:
                    behind[tp.partition] = ends[tp] - c
            return not behind

        started = time.monotonic()
        try:
            await eventually(done, timeout_s=timeout_s, interval_s=0.2, what="every record committed")
        except AssertionError:
            return {"records": sum(ends.values()), "uncommitted": sum(behind.values()), "by_partition": behind}
        return {"records": sum(ends.values()), "uncommitted": 0, "waited_s": round(time.monotonic() - started, 2)}
    finally:
        await consumer.stop()


@dataclass
class _Last:
    partition: int
    offset: int
    volume: float | None


@dataclass
class Scan:
    """What a topic held: each symbol's last new tick and last record of any type, the
    (symbol, minute start ms) pairs it ticked in, and the records by message type."""

    last: dict[str, _Last] = field(default_factory=dict)
    last_any: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # type, partition, offset
    minutes: set[tuple[str, int]] = field(default_factory=set)
    ticks: int = 0
    types: dict[str, int] = field(default_factory=dict)
    canary_days: dict[str, float] = field(default_factory=dict)  # symbol → traded volume
    canary_minutes: dict[tuple[str, int], float] = field(default_factory=dict)


async def scan_topic(ctx: BenchContext, topic: str) -> Scan:
    """Every record of ``topic``, read back from the beginning."""
    consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-scan"))
    await consumer.start()
    scan = Scan()
    last, minutes, types, last_any = scan.last, scan.minutes, scan.types, scan.last_any
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 300
        while remaining:
            if time.monotonic() > deadline:
                raise NotMeasured("the topic could not be read back within 300 s")
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)).items():
                for r in records:
                    try:
                        m = decode(r.value or b"")
                    except DecodeError:
                        types["undecodable"] = types.get("undecodable", 0) + 1
                        continue
                    kind = type(m).__name__ + (" (snapshot)" if isinstance(m, PriceUpdate) and m.snapshot else "")
                    types[kind] = types.get(kind, 0) + 1
                    symbol = getattr(m, "symbol", None)
                    if isinstance(symbol, str):
                        last_any[symbol] = (kind, r.partition, r.offset)
                    if not isinstance(m, PriceUpdate) or m.snapshot:
                        continue
                    scan.ticks += 1
                    last[m.symbol] = _Last(r.partition, r.offset, m.volume)
                    ts = m.timestamp.timestamp()
                    minute = (m.symbol, int((ts - ts % 60.0) * 1000))
                    minutes.add(minute)
                    if m.symbol.startswith("CANARY") and m.last_size is not None:
                        scan.canary_days[m.symbol] = scan.canary_days.get(m.symbol, 0.0) + m.last_size
                        scan.canary_minutes[minute] = scan.canary_minutes.get(minute, 0.0) + m.last_size
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return scan


async def stored_bars(url: str, database: str) -> list[tuple[Any, ...]]:
    store = ClickHouseBars(url, database)
    await store.start()
    try:
        return await store.execute(
            f"SELECT symbol, period, start, volume, tick_partition, tick_offset FROM {database}.bars FINAL"
        )
    finally:
        await store.stop()


def compare(scan: Scan, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """What the stored bars lack against the ticks on the topic."""
    last, minutes = scan.last, scan.minutes
    daily: dict[str, tuple[int, float, int, int]] = {}
    stored_minutes: dict[tuple[str, int], float] = {}
    for symbol, period, start, volume, partition, offset in rows:
        if period == "1d":
            if symbol not in daily or start > daily[symbol][0]:
                daily[symbol] = (start, volume, partition, offset)
        elif period == "1m":
            stored_minutes[(symbol, start)] = volume
    no_daily = [s for s in last if s not in daily]
    short = [s for s, t in last.items() if s in daily and (daily[s][2], daily[s][3]) != (t.partition, t.offset)]
    volume = [s for s, t in last.items() if s in daily and t.volume is not None and daily[s][1] != t.volume]
    missing_minutes = sorted(minutes - set(stored_minutes))
    canary_days = {s: (v, daily[s][1] if s in daily else 0.0) for s, v in scan.canary_days.items()}
    canary_minutes = {k: (v, stored_minutes.get(k, 0.0)) for k, v in scan.canary_minutes.items()}
    wrong_days = {s: vs for s, vs in canary_days.items() if vs[0] != vs[1]}
    wrong_minutes = {k: vs for k, vs in canary_minutes.items() if vs[0] != vs[1]}
    return {
        "symbols": len(last),
        "minutes": len(minutes),
        "symbols_without_daily_bar": len(no_daily),
        "daily_bar_not_at_last_tick": len(short),
        "daily_volume_not_cumulative": len(volume),
        "minutes_without_bar": len(missing_minutes),
        "canary_symbols": len(canary_days),
        "canary_trades": round(sum(v for v, _ in canary_days.values()) / CANARY_SIZE),
        "canary_daily_volume_wrong": len(wrong_days),
        "canary_minute_volume_wrong": len(wrong_minutes),
        "canary_trades_missing": round(sum(max(e - g, 0.0) for e, g in canary_days.values()) / CANARY_SIZE),
        "canary_trades_extra": round(sum(max(g - e, 0.0) for e, g in canary_days.values()) / CANARY_SIZE),
        "records_by_type": scan.types,
        "examples": {
            "no_daily": no_daily[:5],
            "short": [
                {
                    "symbol": s,
                    "stored_1d": daily[s][1:],
                    "last_tick": vars(last[s]),
                    "last_record": scan.last_any.get(s),
                }
                for s in short[:5]
            ],
            "volume": volume[:5],
            "minutes": [list(m) for m in missing_minutes[:5]],
            "canary_days": {s: list(v) for s, v in list(wrong_days.items())[:5]},
            "canary_minutes": [[*k, *v] for k, v in list(wrong_minutes.items())[:5]],
        },
    }


# -- aggregation: one member, two members -----------------------------------------------------


async def _aggregation_run(
    ctx: BenchContext, stores: Stores, items: list[tuple[bytes | None, bytes]], members: int, raw: bool
) -> dict[str, Any]:
    """``members`` partitioned members settle on an empty topic, are held, the backlog is
    produced, and they are released together; their counters sampled until it is folded."""
    count = len(items)
    async with fresh_topics(ctx, NAME, TopicPartitions(market_data=PARTITIONS)) as topics:
        # a long session: held members must not be expelled while the backlog goes in
        dep = Deployment(ctx, topics, stores, kafka={"session_timeout_ms": 60_000, "heartbeat_interval_ms": 1000})
        procs = [dep.member(f"m{i}") for i in range(members)]
        out: dict[str, Any] = {"members": members, "messages": count}
        async with running(*procs):
            await eventually(
                lambda: split_between(procs, PARTITIONS), timeout_s=60, interval_s=0.2, what="the group settled"
            )
            held = [await counters(d) for d in procs]
            for d in procs:
                os.kill(d.pid, signal.SIGSTOP)
            try:
                out["produce_s"] = round(await produce_raw(ctx, topics.market_data, items, "bench-loader"), 2)
            finally:
                for d in procs:
                    os.kill(d.pid, signal.SIGCONT)
                released = time.perf_counter()
            async with MemberSampler() as sampler:
                for i, d in enumerate(procs):
                    sampler.seed(f"m{i}", released, held[i])
                    sampler.watch(f"m{i}", d)

                def folded() -> bool:
                    return sum(s.value for s in sampler.ticks.values()) >= count

                await eventually(folded, timeout_s=300, interval_s=0.1, what=f"{count} ticks folded")
            if raw:
                out["raw"] = await _raw_consume(ctx, topics.market_data, count, decode_values=False)
            out["partitions"] = {f"m{i}": (await d.readiness()).get("partitions") for i, d in enumerate(procs)}
    out["total"] = sampler.total("ticks")
    out["per_member"] = {label: s.samples for label, s in sampler.ticks.items()}
    out["sample_errors"] = sampler.errors
    return out


async def aggregation(ctx: BenchContext, stores: Stores, backlog: int, out: dict[str, Any]) -> None:
    items = encoded(await sim_ticks(full_market(), backlog))
    out["one"] = await _aggregation_run(ctx, stores, items, 1, raw=True)
    out["two"] = await _aggregation_run(ctx, stores, items, 2, raw=False)


# -- the system at full market ----------------------------------------------------------------


async def _ticks_out(gateway: Daemon) -> float:
    return (await gateway.metrics()).get("livedata_gateway_ticks_out_total", 0.0)


async def system(ctx: BenchContext, stores: Stores, tm: Timings, out: dict[str, Any]) -> None:
    """The system at full market; each phase's results go into ``out`` as they are measured."""
    universe = full_market()
    everything = [s for group in universe.values() for s in group]
    async with fresh_topics(ctx, NAME, TopicPartitions(market_data=PARTITIONS)) as topics:
        dep = Deployment(ctx, topics, stores)
        jobs = {"jobs": [{"name": "snapshot", "cron": "*/5 * * * *", "timezone": "UTC", "command": "bar_snapshot"}]}
        gateway = dep.daemon("gateway", "gateway")
        member0 = dep.member("m0")
        timer = dep.daemon("tasktimer", "tasktimer", task_timer=jobs)
        member1 = dep.member("m1")
        daemons = {"gateway": gateway, "datamanager": member0, "tasktimer": timer}
        async with running(member0, gateway, timer):
            await publish(
                ctx.bootstrap,
                topics.interest_updates,
                InterestUpdate(
                    portfolio_id="bench",
                    node_id="market",
                    symbols=tuple(everything),
                    update_type="replace",
                    timestamp=utcnow(),
                ),
                key="bench/market",
            )
            await eventually(
                lambda: _flowing(gateway, len(everything)), timeout_s=60, interval_s=0.2, what="the full market flowing"
            )
            gw0, at0 = await _ticks_out(gateway), time.monotonic()
            await asyncio.sleep(tm.warmup_s)  # the warm-up: the load runs, nothing is measured
            out["gateway_ticks_out_per_s_warmup"] = round((await _ticks_out(gateway) - gw0) / (time.monotonic() - at0))
            out["rss_after_warmup_mb"] = {n: round(d.rss_mb(), 1) for n, d in daemons.items()}
            if ctx.broker_pid:
                out["rss_after_warmup_mb"]["broker"] = round(rss_mb(ctx.broker_pid), 1)

            fresh = new_symbols(tm.first_tick_rounds + 1)
            async with LiveDataClient(ctx.bootstrap, "bench", "first-tick", topics=topics, kafka=ctx.kafka()) as c:
                await subscription_change._first_tick(c, fresh[0])  # warm the path
                times = [await subscription_change._first_tick(c, s) for s in fresh[1:]]
            out["first_tick"] = distribution(times, scale=1000.0)

            arrivals = Arrivals()
            probe_warmup = 3.0
            pids: dict[str, int | None] = {n: d.pid for n, d in daemons.items()}
            pids |= {"broker": ctx.broker_pid, "clickhouse": stores.clickhouse.pid, "redis": stores.redis.pid}
            pids["bench (latency client)"] = os.getpid()
            async with (
                LiveDataClient(ctx.bootstrap, "bench", "latency", topics=topics, kafka=ctx.kafka()) as client,
                reading(client, arrivals),
                Breakdown(ctx, topics.market_data, latency_symbols()) as breakdown,
            ):
                await client.subscribe(latency_symbols())
                probes = asyncio.gather(
                    probe(ctx, topics, "aware", tm.steady_s, probe_warmup),
                    probe(ctx, topics, "all", tm.steady_s, probe_warmup),
                )
                await asyncio.sleep(probe_warmup + 1.0)  # the probes start and warm up
                steady_from = time.time()
                gw0, at0 = await _ticks_out(gateway), time.monotonic()
                cpu = Cpu(pids)
                out["probes"] = await probes  # the steady window
                out["cpu_steady"] = cpu.result()
                out["gateway_ticks_out_per_s_steady"] = round(
                    (await _ticks_out(gateway) - gw0) / (time.monotonic() - at0)
                )
                extra = {Market.US: BURST_PER_S - US_PER_S}
                load = Load(ctx, topics.market_data, {}, extra, 0.0, tm.burst_s, tm.burst_s)
                try:
                    burst_from = await load.start()
                    cpu = Cpu(pids)
                    out["load"] = await load.finish(tm.burst_s + 60)
                    out["cpu_burst"] = cpu.result()
                finally:
                    await load.kill()
                burst_to = burst_from + tm.burst_s
                await asyncio.sleep(tm.tail_s)  # after the burst: recovery is part of the figure's details
                out["latency"] = arrivals.report((steady_from, burst_from), (burst_from, burst_to), tm.tail_s)
                out["latency_breakdown"] = {
                    "steady": breakdown.report(steady_from, burst_from),
                    "burst": breakdown.report(burst_from, burst_to),
                }
            out["rss_after_burst_mb"] = {n: round(d.rss_mb(), 1) for n, d in daemons.items()}
            gm = await gateway.metrics()
            out["gateway_conflated"] = gm.get("livedata_gateway_ticks_conflated_total", 0.0)

            canary = Load(ctx, topics.market_data, {}, {}, 0.0, 0.0, 600.0, canary=(CANARIES, CANARY_PER_S))
            async with MemberSampler() as sampler, contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(canary.kill)
                sampler.watch("m0", member0)
                await canary.start()
                await asyncio.sleep(tm.rebalance_before_s)  # the steady pauses, for the baseline
                joined = time.perf_counter()
                async with running(member1, timeout_s=60):
                    sampler.watch("m1", member1)
                    await eventually(
                        lambda: split_between([member0, member1], PARTITIONS),
                        timeout_s=60,
                        interval_s=0.1,
                        what="the partitions split between two members",
                    )
                    split = time.perf_counter()
                    await asyncio.sleep(tm.rebalance_after_s)  # both members folding under the full load
                    out["rebalance"] = {
                        "joined": joined,
                        "split_s": round(split - joined, 3),
                        "end": split + tm.rebalance_after_s,
                        "stored": sampler.total("stored"),
                        "ticks": sampler.total("ticks"),
                        "sample_errors": sampler.errors,
                    }
                    out["rss_member1_mb"] = round(member1.rss_mb(), 1)
                    await canary.kill()  # the load stops: everything on the topic is what counts
                    await gateway.stop()  # and everything the gateway took in is on the topic
                    await timer.stop()
                    out["committed"] = await committed_to_end(ctx, f"{dep.group}.bars", topics.market_data, 60)
                    out["member_counters"] = {
                        label: await counters(d, by_reason=True) for label, d in (("m0", member0), ("m1", member1))
                    }
        out["revokes_seen"] = {"m0": rebalances(member0), "m1": rebalances(member1)}
        scan = await scan_topic(ctx, topics.market_data)
        rows = await stored_bars(stores.clickhouse.url, dep.database)
        out["lost"] = {"ticks_on_topic": scan.ticks, **compare(scan, rows)}


async def _flowing(gateway: Daemon, symbols: int) -> bool:
    return await _ticks_out(gateway) >= symbols


# -- the raw baseline -------------------------------------------------------------------------


async def raw_latency(ctx: BenchContext, tm: Timings, out: dict[str, Any]) -> None:
    """The whole load from the load generator (a drain reads it all), a plain consumer of the
    latency symbols' partitions with the SDK's fetch settings keeping their records."""
    symbols = latency_symbols()
    arrivals = Arrivals()
    async with fresh_topics(ctx, NAME, TopicPartitions(market_data=PARTITIONS)) as topics:
        topic = topics.market_data
        consumer = AIOKafkaConsumer(**consumer_options(ctx.kafka(), "bench-raw-latency"))
        await consumer.start()
        steady_s = tm.warmup_s / 3 + tm.steady_s
        load = Load(
            ctx,
            topic,
            rates(),
            {Market.US: BURST_PER_S},
            steady_s,
            tm.burst_s,
            steady_s + tm.burst_s + tm.tail_s,
            drain=True,
        )
        try:
            wanted = {s.encode() for s in symbols}
            parts = sorted({symbol_partition(s, PARTITIONS) for s in symbols})
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            started = await load.start()
            end = started + steady_s + tm.burst_s + tm.tail_s
            while time.time() < end:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                now = time.time()
                for records in batches.values():
                    arrivals.add((decode(r.value or b"") for r in records if r.key in wanted), now)
            result = await load.finish(60)
        finally:
            await load.kill()
            await consumer.stop()
    burst_from = started + steady_s
    steady_from = started + tm.warmup_s / 3
    out.update(arrivals.report((steady_from, burst_from), (burst_from, burst_from + tm.burst_s), tm.tail_s))
    out["load"] = result


# -- figures ----------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


async def attempt(part: dict[str, Any], work: Coroutine[Any, Any, None]) -> None:
    """Run one part; if it fails, its figures say why instead of ending the benchmark."""
    try:
        await work
    except Exception as e:
        traceback.print_exc()
        part["failed"] = _reason(e)


def need(part: dict[str, Any], key: str) -> Any:
    """``part[key]``, or NotMeasured naming why the part stopped before it."""
    if key in part:
        return part[key]
    raise NotMeasured(f"the run stopped before this: {part.get('failed', 'not reached')}")


def _rate(samples: list[tuple[float, float]], total: float) -> float:
    return rate_between(samples, 0.05, 0.95, total).per_s


MIN_RUN_S = 0.5


def release_rate(samples: Sequence[tuple[float, float]], share: float) -> float:
    """A held member's rate over its whole share: ticks / (its release, the first sample,
    → the first sample that saw its last tick folded). Its sampling is as coarse as the
    member lets it be (it answers /metrics between fetches it folds back to back), but both
    ends of this window are seen."""
    if not samples or share <= 0:
        raise NotMeasured("the member folded nothing")
    released = samples[0][0]
    done = next((t for t, v in samples if v >= share), None)
    if done is None:
        raise NotMeasured(f"the member's count stopped short of its share {share:,.0f}")
    if done - released < MIN_RUN_S:
        raise NotMeasured(f"the member's share took {done - released:.3f} s: too short to time")
    return share / (done - released)


async def run(ctx: BenchContext) -> list[Figure]:
    if ctx.broker_kind not in BROKER_KINDS:
        return [Figure(NAME, TITLE, None, "", skipped="Apache Kafka only: latency cannot be judged on Tansu")]
    tm = Timings.of(ctx)
    agg: dict[str, Any] = {}
    sys_: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    hops: dict[str, Any] = {}
    try:
        async with _servers(ctx) as (redis, clickhouse):
            stores = Stores(redis, clickhouse)
            await attempt(agg, aggregation(ctx, stores, tm.backlog, agg))
            await attempt(sys_, system(ctx, stores, tm, sys_))
    except Exception as e:  # Redis or ClickHouse would not start (or stop)
        traceback.print_exc()
        for part in (agg, sys_):
            part.setdefault("failed", f"the stores: {_reason(e)}")
    await attempt(raw, raw_latency(ctx, tm, raw))

    async def three_hops() -> None:
        hops.update(await subscription_change._baseline(ctx, tm.first_tick_rounds))

    await attempt(hops, three_hops())
    figures = Figures(NAME)
    _latency_figures(figures, sys_, raw)
    _rss_figures(figures, sys_)
    _client_figures(figures, sys_)
    _aggregation_figures(figures, agg)
    with figures.measure(
        f"interest → first tick p50 at full market ({tm.first_tick_rounds} changes)",
        "ms",
        baseline_name="three raw aiokafka produce → consume hops, same settings",
        target=f"<= {TARGET_FIRST_TICK_MS:g} ms",
    ) as f:
        first = need(sys_, "first_tick")
        f.details = {"system": first, "baseline": hops}
        need(hops, "count")
        f.baseline = statistic(hops, "p50", "raw round trips")
        f.value = statistic(first, "p50", "subscription changes")
        f.met = f.value <= TARGET_FIRST_TICK_MS
    _rebalance_figures(figures, sys_)
    return figures


def _latency_figures(figures: Figures, sys_: dict[str, Any], raw: dict[str, Any]) -> None:
    details = {
        "load": f"CN {rates()[Market.CN]:,.0f} + HK {rates()[Market.HK]:,.0f} snapshots/s and US {US_PER_S:,.0f}"
        f" trades/s from the sim; the burst adds {BURST_PER_S - US_PER_S:,.0f} US trades/s from the load generator",
        "burst_extra": sys_.get("load", {}).get("burst"),
        "gateway_ticks_out_per_s": sys_.get("gateway_ticks_out_per_s_steady"),
        "gateway_conflated": sys_.get("gateway_conflated"),
        "cpu_steady": sys_.get("cpu_steady"),
        "cpu_burst": sys_.get("cpu_burst"),
        "latency_breakdown": sys_.get("latency_breakdown"),
        "client_symbols": sum(LATENCY_SYMBOLS.values()),
        "system": sys_.get("latency"),
        "baseline": raw,
    }
    raw_name = "raw aiokafka: the same load from plain producers, a plain consumer of the same partitions"
    for window, label in (("steady", "outside the burst"), ("burst", "through the burst")):
        for key in ("p50", "p99"):
            judged = window == "steady" and key == "p99"
            with figures.measure(
                f"tick → client latency {key}, {label}",
                "ms",
                baseline_name=raw_name,
                target=f"<= {TARGET_P99_MS:g} ms" if judged else "report",
                details=details if (window, key) == ("steady", "p50") else {},
            ) as f:
                f.baseline = statistic(need(raw, window), key, f"ticks {label} at the raw consumer")
                f.value = statistic(need(sys_, "latency")[window], key, f"ticks {label} at the client")
                f.met = f.value <= TARGET_P99_MS if judged else None


def _rss_figures(figures: Figures, sys_: dict[str, Any]) -> None:
    if "rss_after_warmup_mb" not in sys_:
        with figures.measure("daemon RSS after warm-up at full market", "MB", target=f"<= {TARGET_RSS_MB:g} MB"):
            need(sys_, "rss_after_warmup_mb")
        return
    burst = sys_.get("rss_after_burst_mb", {})
    for name, mb in sys_["rss_after_warmup_mb"].items():
        daemon = name != "broker"
        details: dict[str, Any] = {"after_burst_mb": burst.get(name)}
        if name == "datamanager":
            details["second_member_mb"] = sys_.get("rss_member1_mb")
        figures.append(
            Figure(
                NAME,
                f"{name} RSS after warm-up at full market",
                mb,
                "MB",
                target=f"<= {TARGET_RSS_MB:g} MB" if daemon else "report",
                met=mb <= TARGET_RSS_MB if daemon else None,
                details=details,
            )
        )


def _client_figures(figures: Figures, sys_: dict[str, Any]) -> None:
    name = "a consumer of every partition keeping the same 10 symbols (what a node did before)"
    target = "less than reading every partition"
    for figure, unit, key in (
        ("10-symbol client: bytes read per second, partition-aware", "B/s", "bytes_per_s"),
        ("10-symbol client: CPU seconds over the steady window, partition-aware", "s", "cpu_s"),
    ):
        with figures.measure(figure, unit, baseline_name=name, target=target) as f:
            probes = {p["mode"]: p for p in need(sys_, "probes")}
            aware, every = probes["aware"], probes["all"]
            for p in (aware, every):
                if "failed" in p:
                    raise NotMeasured(f"the {p['mode']} probe: {p['failed']}")
            if key == "bytes_per_s":
                f.details = {
                    "symbols": list(CLIENT_SYMBOLS),
                    "partitions_read": f"{len(aware['partitions'])} of {aware['partition_count']}",
                    "aware": aware,
                    "all": every,
                }
            f.baseline = every[key]
            f.value = aware[key]
            f.met = aware[key] < every[key]


def _aggregation_figures(figures: Figures, agg: dict[str, Any]) -> None:
    raw_name = "raw AIOKafkaConsumer of the same backlog (one process, every partition)"
    rates_: dict[str, float] = {}
    with figures.measure(
        "aggregation, one partitioned member (bars in ClickHouse)",
        "ticks/s",
        baseline_name=raw_name,
        target=f"ratio >= {TARGET_MEMBER_RATIO:g}",
    ) as f:
        one = need(agg, "one")
        count = one["messages"]
        f.details = {"messages": count, "produce_s": one.get("produce_s"), "sample_errors": one.get("sample_errors")}
        base = rate_between(one["raw"], 0.05, 0.95, count)
        f.baseline = round(base.per_s)
        rates_["raw"] = base.per_s
        rates_["one"] = _rate(one["total"], count)
        f.value = round(rates_["one"])
        f.met = rates_["one"] / base.per_s >= TARGET_MEMBER_RATIO
    with figures.measure(
        "aggregation, two partitioned members (together)",
        "ticks/s",
        baseline_name="one member, same backlog",
        target="more than one member",
    ) as f:
        two = need(agg, "two")
        f.details = {"partitions": two.get("partitions"), "sample_errors": two.get("sample_errors")}
        if "one" not in rates_:
            raise NotMeasured("the one-member rate was not measured")
        f.baseline = round(rates_["one"])
        both = _rate(two["total"], two["messages"])
        f.value = round(both)
        f.met = both > rates_["one"]
    members = sorted(agg["two"]["per_member"].items()) if "two" in agg else [("m0", None), ("m1", None)]
    for label, samples in members:
        with figures.measure(
            f"aggregation per member of two ({label})",
            "ticks/s",
            baseline_name=raw_name,
            target=f"ratio >= {TARGET_MEMBER_RATIO:g}",
        ) as f:
            if samples is None:
                raise NotMeasured(f"the two-member run: {agg.get('failed', 'not reached')}")
            if "raw" not in rates_:
                raise NotMeasured("the raw baseline was not measured")
            share = samples[-1][1] if samples else 0.0
            f.details["ticks"] = share
            f.details["how"] = "its share / (release → its last tick folded): the window is the whole share"
            f.baseline = round(rates_["raw"])
            per = release_rate(samples, share)
            f.value = round(per)
            f.met = per / rates_["raw"] >= TARGET_MEMBER_RATIO


def _rebalance_figures(figures: Figures, sys_: dict[str, Any]) -> None:
    with figures.measure(
        "rebalance under full load: longest pause in bar storage (second member joins)",
        "s",
        baseline_name="the longest pause in the steady window before (ClickHouse flush every 1 s)",
        target="report",
    ) as f:
        rb = need(sys_, "rebalance")
        joined, end = rb["joined"], rb["end"]
        before_from = rb["stored"][0][0] if rb["stored"] else joined
        f.details = {"split_s": rb["split_s"], "sample_errors": rb["sample_errors"]}
        f.baseline = round(longest_pause(rb["stored"], before_from, joined), 3)
        f.value = round(longest_pause(rb["stored"], joined, end), 3)
        f.details["longest_pause_in_folding_s"] = round(longest_pause(rb["ticks"], joined, end), 3)
        f.details["folding_pause_before_s"] = round(longest_pause(rb["ticks"], before_from, joined), 3)
    with figures.measure("rebalance under full load: bars lost (after the load stopped)", "bars", target="0") as f:
        committed = need(sys_, "committed")
        lost = need(sys_, "lost")
        f.details = {
            "committed": committed,
            "check": lost,
            "members": sys_.get("member_counters"),
            "revokes_seen": sys_.get("revokes_seen"),
        }
        if committed.get("uncommitted"):
            raise NotMeasured(f"{committed['uncommitted']} records were still uncommitted after 60 s")
        keys = (
            "symbols_without_daily_bar",
            "daily_bar_not_at_last_tick",
            "daily_volume_not_cumulative",
            "minutes_without_bar",
            "canary_daily_volume_wrong",
            "canary_minute_volume_wrong",
        )
        f.value = float(sum(lost[k] for k in keys))
        f.met = f.value == 0
