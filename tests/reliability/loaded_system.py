"""What the crash and graceful-stop scenarios share: the three daemons under 5,000 ticks/s
(200 symbols x 25 ticks/s on the sim feeder) with Redis and ClickHouse behind the
datamanager, a client SDK that records what reaches it, a tasktimer on a scaled clock,
and readers of a topic's end offsets, a group's committed offsets and a whole topic."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.tasktimer.clock import ScaledClock
from shared.client import LiveDataClient, MarketUpdate
from shared.dto import Bar, PriceUpdate
from shared.kafka import assign_all
from tests.daemons import ROOT, Daemon

SYMBOLS = (
    [f"{600000 + i}.SH" for i in range(80)] + [f"{i:05d}.HK" for i in range(1, 41)] + [f"SYM{i}" for i in range(80)]
)
SIM = {"type": "sim", "ticks_per_s_per_symbol": 25, "interval_ms": 40}  # x 200 symbols: 5,000 ticks/s


def stores(redis_url: str, redis_prefix: str, clickhouse_url: str, database: str) -> dict[str, Any]:
    """livedata.yml sections that put the datamanager's state in Redis and its bars in
    ClickHouse, and the tasktimer's fire records in Redis, all under this test's names."""
    return {
        "redis": {"url": redis_url},
        "clickhouse": {"url": clickhouse_url, "database": database},
        "datamanager": {"redis_key_prefix": redis_prefix, "group_id": f"dm-{redis_prefix.replace(':', '-')}"},
        "tasktimer": {"redis_prefix": f"{redis_prefix}:tt"},
    }


def merge(*sections: dict[str, Any]) -> dict[str, Any]:
    """livedata.yml sections merged one level deep (later ones win)."""
    out: dict[str, dict[str, Any]] = {}
    for s in sections:
        for name, values in s.items():
            out[name] = {**out.get(name, {}), **values}
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (``name`` or ``name_total``, labels a subset)."""
    for m in re.finditer(rf"^{name}(?:_total)?(?:{{([^}}]*)}})? ([0-9.e+-]+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


class Received:
    """Everything a client receives; after ``watch(since)``, when ticks the gateway received
    from ``since`` (epoch s) on first arrived, the first one and each symbol's."""

    def __init__(self) -> None:
        self.ticks = 0
        self.last_seq: dict[str, int] = {}
        self.bars: list[Bar] = []
        self.since = float("inf")
        self.first_after: float | None = None  # monotonic
        self.symbols_after: dict[str, float] = {}  # symbol -> monotonic arrival of its first tick

    def watch(self, since_epoch: float) -> None:
        self.since = since_epoch
        self.first_after = None
        self.symbols_after = {}

    def add(self, item: MarketUpdate) -> None:
        if isinstance(item, Bar):
            self.bars.append(item)
            return
        if not isinstance(item, PriceUpdate):  # a trade correction: not a tick
            return
        if item.snapshot:  # the datamanager's replay of a latest price, not a new tick
            return
        self.ticks += 1
        if item.sequence is not None:
            self.last_seq[item.symbol] = item.sequence
        if item.receive_time is not None and item.receive_time.timestamp() >= self.since:
            now = time.monotonic()
            if self.first_after is None:
                self.first_after = now
            self.symbols_after.setdefault(item.symbol, now)

    @property
    def all_back(self) -> float | None:
        """When the last symbol ticked again since ``watch`` (None: not all yet)."""
        return max(self.symbols_after.values()) if len(self.symbols_after) == len(SYMBOLS) else None


async def follow(client: LiveDataClient, received: Received) -> None:
    """Hand every update the client yields to ``received`` (a task the test cancels)."""
    while True:
        for item in await client.next_batch():
            received.add(item)


class ScaledTasktimer(Daemon):
    """The tasktimer daemon (tests/reliability/scaled_tasktimer.py) on a schedule clock
    that runs ``speed`` times faster than real time; restarts continue its schedule."""

    def __init__(self, base: Daemon, speed: float) -> None:
        super().__init__("tasktimer", base.config_dir, base.port, base.log, base.env)
        self.real_start = time.time()
        self.start_epoch = self.real_start  # schedule time starts at real time, then runs ahead
        self.speed = speed
        self.clock = ScaledClock(datetime.fromtimestamp(self.start_epoch, UTC), speed, real_start=self.real_start)

    async def start(self) -> None:
        with open(self.log, "wb") as out:  # noqa: ASYNC230 - the child's log file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.reliability.scaled_tasktimer",
                "--config-dir",
                str(self.config_dir),
                repr(self.start_epoch),
                repr(self.real_start),
                repr(self.speed),
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=self.env,
                cwd=ROOT,
            )


def restart_log(daemon: Daemon) -> None:
    """Give a daemon's next run its own log file (``name.2.log``), keeping the killed one's."""
    stem = daemon.log.stem.split(".")[0]
    n = sum(1 for _ in daemon.log.parent.glob(f"{stem}*.log")) + 1
    daemon.log = daemon.log.with_name(f"{stem}.{n}.log")


# -- offsets ---------------------------------------------------------------------------------


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (-1 where none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        found = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: (found[tp].offset if tp in found else -1) for tp in tps}
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, from the beginning up to its end offsets when called."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        left = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while left:
            if time.monotonic() > deadline:
                positions = {tp.partition: await consumer.position(tp) for tp in left}
                raise AssertionError(
                    f"timed out after {timeout_s}s reading {topic}: positions {positions},"
                    f" ends { {tp.partition: ends[tp] for tp in left} }"
                )
            batches = await consumer.getmany(*left, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                out.extend(r for r in records if r.offset < ends[tp])
            for tp in list(left):  # every partition fetched from so far, with records this time or not
                if consumer.highwater(tp) is not None and await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()


def started_at(daemon: Daemon) -> float | None:
    """Epoch of the daemon's "starting" log line: its process is up (imports, config done)."""
    for line in daemon.log.read_text(errors="replace").splitlines():
        if " runtime: starting" in line:
            stamp = line.split(" ", 1)[0].rstrip("Z")
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None
