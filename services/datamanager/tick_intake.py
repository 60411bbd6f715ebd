"""Tick intake: market data in, bars out to their homes, offsets committed after them.

Owns the market-data partitions it is given: every partition when active/standby (the one
active instance assigns them all: a takeover waits for no session timeout), or its share
of the consumer group when ``partitioned`` (``group_instance_id`` from ``member_id`` keeps
a quick restart's share without a rebalance). On each assignment it loads the partitions'
symbols' bars of today from ClickHouse and resumes from the committed offsets; before a
rebalance (aiokafka revokes everything each time) it stores and commits what they changed
and forgets their state, so a partition has one writer and versions only increase.

Each fetch is decoded by the shared Inbox (a bad record is dead-lettered there) and folded
into the bars in one call; every ``flush_interval_ms`` the changed bars go to ClickHouse and
the latest prices to the state store, then the dead letters, then the offsets: an offset is
committed only after what its record changed is at home. While ClickHouse is away and
``max_pending_bars`` are held, fetching stops (backpressure), so nothing is lost.

HistoryBars (a provider's minute history for a repair window) fold in the same call, in
record order with the ticks; ``RepairFlow`` reads what the store holds of windows memory
does not before the fold, and publishes the bars they revised after the flush stored
them, before the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from services.datamanager.bars import BarAggregator, FoldReport
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.consumers import assigned_consumer, pin_start
from services.datamanager.metrics import DatamanagerMetrics, RecordFailures
from services.datamanager.ownership import Ownership
from services.datamanager.quality import AlertGate
from services.datamanager.repair_flow import RepairFlow
from services.datamanager.state import DatamanagerState
from shared.alarms import LoopHeartbeats
from shared.backoff import Backoff
from shared.config import ClickHouseSettings, DatamanagerSettings, KafkaSettings
from shared.dto import utcnow
from shared.events import SystemEvents
from shared.kafka import DeadLetters, Inbox, assign_all, commit, consumer_options, fetch
from shared.logs import kv
from shared.sessions import trading_day
from shared.symbols import Market
from shared.tasks import retry_until_stopped, sleep_or_stop
from shared.topics import Topics

log = logging.getLogger("datamanager.ticks")


class TickIntake:
    """Owns the tick consumer, its positions, the bars (``bars``) and their flushing.

    ``run(stop)`` serves one active session with a fresh aggregator; ``ready`` is set once
    the consumer has its partitions and positions, ``resumed`` once today's stored bars
    are loaded. ``close_due(now)`` closes minute bars that have ended.
    """

    def __init__(
        self,
        settings: DatamanagerSettings,
        clickhouse: ClickHouseSettings,
        kafka: KafkaSettings,
        topics: Topics,
        store: ClickHouseBars | None,
        state: DatamanagerState,
        inbox: Inbox,
        dead: DeadLetters,
        failures: RecordFailures,
        events: SystemEvents,
        metrics: DatamanagerMetrics,
        loops: LoopHeartbeats,
        ownership: Ownership,
        repairs: RepairFlow,
    ) -> None:
        self._settings = settings
        self._oldest = dt.datetime.combine(settings.oldest_tick, dt.time(), dt.UTC).timestamp()
        self._flush_every_s = clickhouse.flush_interval_ms / 1000.0
        self._max_pending = clickhouse.max_pending_bars
        self._kafka = kafka
        self._topics = topics
        self.store = store
        self._state = state
        self._inbox = inbox
        self._dead = dead
        self._failures = failures
        self._events = events
        self._metrics = metrics
        self._loops = loops
        self._gate = AlertGate(settings.alert_interval_s)
        self._own = ownership
        self.repairs = repairs
        self._on_resumed: list[Callable[[], None]] = []
        self.resumes = 0  # how many times today's bars were loaded (each assignment)
        self.bars = self._new_aggregator()
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()
        self._positions: dict[TopicPartition, int] = {}  # next offset to commit, per owned partition
        self._flush_lock = asyncio.Lock()  # a flush and a rebalance never interleave

    def _new_aggregator(self) -> BarAggregator:
        s = self._settings
        return BarAggregator(
            late_grace_s=s.late_tick_grace_s,
            max_price=s.max_price,
            st_symbols=frozenset(s.st_symbols),
            no_limit_symbols=frozenset(s.no_limit_symbols),
        )

    def close_due(self) -> None:
        self.bars.close_due(utcnow())

    def when_resumed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time today's stored bars are loaded (a start, a takeover,
        a rebalance), once ticks fold on them."""
        self._on_resumed.append(callback)

    async def run(self, stop: asyncio.Event) -> None:
        self.ready.clear()
        self.resumed.clear()
        self.bars = self._new_aggregator()  # a takeover starts from the homes, not from memory
        self._positions = {}
        partitioned = self._settings.partitioned
        consumer = self._consumer()
        await consumer.start()
        next_flush = time.time() + self._flush_every_s
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        skew = self._settings.max_clock_skew_s
        try:
            if partitioned:
                consumer.subscribe([self._topics.market_data], listener=_Rebalance(self, consumer, stop))
            else:
                await self._assigned(consumer, await assign_all(consumer, self._topics.market_data), stop)
            while not stop.is_set():
                self._loops.beat("ticks")
                store = self.store
                if store is not None and len(store.pending) > self._max_pending:
                    # storage is away and the buffer is full: stop fetching until it drains
                    if not await self._flush(consumer):
                        await sleep_or_stop(stop, backoff.next_delay())
                        continue
                    backoff.reset()
                batches = await fetch(consumer, timeout_ms=200, max_records=10_000)
                now = time.time()
                if batches:
                    if partitioned:  # a rebalance may have run during the fetch's awaits
                        owned = self._own.partitions
                        batches = {tp: recs for tp, recs in batches.items() if tp.partition in owned}
                    floor = max(self._oldest, now - self._settings.max_tick_age_days * 86_400.0)
                    decoded = await self._inbox.decode(batches)
                    stored = await self.repairs.stored_windows(self.bars, decoded, store, stop)
                    if stored is None:
                        break  # stopped while the store was away: these records are fetched again
                    report = self.bars.fold(decoded, clock_limit=now + skew, clock_floor=floor, stored=stored)
                    self.repairs.folded(report.repairs)
                    await self._report(report, now)
                    for tp, records in batches.items():
                        if records and tp.partition in self._own.partitions:
                            self._positions[tp] = records[-1].offset + 1
                if now >= next_flush:
                    next_flush = now + self._flush_every_s
                    if self._positions or (store is not None and store.pending):
                        await self._flush(consumer)
            await self._flush(consumer)
        finally:
            self._own.revoke()
            self._loops.retire("ticks")
            await consumer.stop()

    def _consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        if not s.partitioned:
            return assigned_consumer(self._kafka, s.group_id, "bars")
        return AIOKafkaConsumer(
            **consumer_options(
                self._kafka,
                f"{self._kafka.client_id}-dm-bars",
                background=True,
                group_id=f"{s.group_id}.bars",
                group_instance_id=s.member_id,
                auto_offset_reset="latest",
            ),
        )

    async def _assigned(self, consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition], stop: asyncio.Event) -> None:
        """Own ``tps``: load their symbols' bars of today from ClickHouse, pin the start of
        partitions the group has no offset for, then fold their ticks from the committed offsets.

        Active/standby, the active instance owns every partition from the start (commands
        are answered while ClickHouse is away, from memory, and say so); partitioned, a
        member owns its share once its bars are loaded (it answers for nothing it has not)."""
        tps = sorted(tps)
        count = len(consumer.partitions_for_topic(self._topics.market_data) or ()) or len(tps)
        partitions = frozenset(tp.partition for tp in tps)
        partitioned = self._settings.partitioned
        async with self._flush_lock:
            if not partitioned:
                new = self._own.assign(partitions, count)
            elif tps:
                # until they are owned, no fetch may return their records: the main loop
                # would drop them as another member's and its position would pass them
                consumer.pause(*tps)
            await self._load(partitions, stop)
            starts = await pin_start(consumer, tps) if tps else {}
            if partitioned:
                new = self._own.assign(partitions, count)
                if tps:
                    consumer.resume(*tps)
        log.info("partitions assigned", extra=kv(partitions=sorted(partitions), new=sorted(new), of=count, at=starts))
        self.ready.set()

    async def _revoked(self, consumer: AIOKafkaConsumer) -> None:
        """Before a rebalance: stop folding, store what the owned partitions changed and
        commit it, then forget their state (their next owner loads it from ClickHouse)."""
        async with self._flush_lock:
            owned = self._own.partitions
            self._own.revoke()
            stored = await self._flush_locked(consumer)
            self.bars = self._new_aggregator()
            self._positions = {}
        log.info("partitions revoked", extra=kv(partitions=sorted(owned), committed=stored))

    async def _load(self, partitions: frozenset[int], stop: asyncio.Event) -> None:
        """Load today's stored bars of ``partitions``' symbols into the aggregator (of every
        symbol when not partitioned: the one active instance owns them all)."""
        store = self.store
        if store is not None and partitions:
            days = {trading_day(m, utcnow()) for m in Market}
            only = partitions if self._settings.partitioned else None

            async def load() -> int:
                return self.bars.restore(await store.resume_rows(days, only))

            restored = await retry_until_stopped(load, stop, "resuming bars from clickhouse failed", log)
            log.info(
                "bars resumed from clickhouse",
                extra=kv(symbols=restored, days=sorted(str(d) for d in days), partitions=sorted(partitions)),
            )
        self.resumed.set()
        self.resumes += 1
        for callback in self._on_resumed:
            callback()

    async def _report(self, report: FoldReport, now: float) -> None:
        """Count what one fold rejected, flagged and failed; alert on flagged prices."""
        m = self._metrics
        for source, ts in report.newest.items():  # one latency sample per source per fetch
            m.latency.labels(m.source_label(source)).observe(max(now - ts, 0.0))
        for reason, n in report.rejected.items():
            m.rejected.labels(reason).inc(n)
        for rec, error in report.failed:
            await self._failures.failed(rec, error)
        for flag in report.flags:
            m.flagged.inc()
            if self._gate.allow("price_limit", flag.symbol, now):
                self._events.alert(
                    "price_limit",
                    f"{flag.symbol} at {flag.price} is beyond its board's limit from the previous close "
                    f"{flag.prev_close}",
                    symbol=flag.symbol,
                    price=flag.price,
                    prev_close=flag.prev_close,
                )

    async def _flush(self, consumer: AIOKafkaConsumer) -> bool:
        async with self._flush_lock:
            return await self._flush_locked(consumer)

    async def _flush_locked(self, consumer: AIOKafkaConsumer) -> bool:
        """Store changed bars (and latest prices), then commit the ticks that fed them."""
        latest = self.bars.latest_ticks()
        rows = self.bars.drain()
        self.repairs.drained(rows, self.bars.take_revised())
        if latest:
            try:
                await self._state.save_latest(latest)
            except Exception as e:  # a convenience for snapshot-on-subscribe: logged, not fatal
                log.warning("saving latest prices failed", extra=kv(error=repr(e)))
        store = self.store
        if store is not None:
            store.add(rows)
            if not await store.flush():
                return False
        if not await self.repairs.stored():  # revised bars out after they are home, before the commit
            return False
        await self._dead.flush()  # the letters of rejected records before their offsets
        # False: the next flush commits again
        return not self._positions or await commit(consumer, dict(self._positions))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partitioned member's share changes: flush and commit on revoke, load on assign."""

    def __init__(self, intake: TickIntake, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        self._intake = intake
        self._consumer = consumer
        self._stop = stop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._intake._revoked(self._consumer)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._intake._assigned(self._consumer, assigned, self._stop)
