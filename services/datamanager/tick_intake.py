"""Tick intake: market data in, bars out to their homes, offsets committed after them.

Resumes today's bars from ClickHouse, then consumes every partition of market data from
the committed offsets. Each fetch is decoded by the shared Inbox (a bad record is
dead-lettered there) and folded into the bars in one call; every ``flush_interval_ms``
the changed bars go to ClickHouse and the latest prices to the state store, then the
dead letters, then the offsets: an offset is committed only after what its record changed
is at home. While ClickHouse is away and ``max_pending_bars`` are held, fetching stops
(backpressure), so nothing is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.datamanager.bars import BarAggregator, FoldReport
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.consumers import assigned_consumer, pin_start
from services.datamanager.metrics import DatamanagerMetrics, RecordFailures
from services.datamanager.quality import AlertGate
from services.datamanager.state import DatamanagerState
from shared.alarms import LoopHeartbeats
from shared.backoff import Backoff
from shared.config import ClickHouseSettings, DatamanagerSettings, KafkaSettings
from shared.dto import utcnow
from shared.events import SystemEvents
from shared.kafka import DeadLetters, Inbox, assign_all, commit, fetch
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
        self.bars = self._new_aggregator()
        self.ready = asyncio.Event()
        self.resumed = asyncio.Event()

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

    async def run(self, stop: asyncio.Event) -> None:
        self.ready.clear()
        self.resumed.clear()
        self.bars = self._new_aggregator()  # a takeover starts from the homes, not from memory
        await self._resume(stop)
        consumer = assigned_consumer(self._kafka, self._settings.group_id, "bars")
        await consumer.start()
        positions: dict[TopicPartition, int] = {}
        next_flush = time.time() + self._flush_every_s
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        skew = self._settings.max_clock_skew_s
        try:
            await pin_start(consumer, await assign_all(consumer, self._topics.market_data))
            self.ready.set()
            while not stop.is_set():
                self._loops.beat("ticks")
                store = self.store
                if store is not None and len(store.pending) > self._max_pending:
                    # storage is away and the buffer is full: stop fetching until it drains
                    if not await self._flush(consumer, positions):
                        await sleep_or_stop(stop, backoff.next_delay())
                        continue
                    backoff.reset()
                batches = await fetch(consumer, timeout_ms=200, max_records=10_000)
                now = time.time()
                if batches:
                    floor = max(self._oldest, now - self._settings.max_tick_age_days * 86_400.0)
                    report = self.bars.fold(
                        await self._inbox.decode(batches), clock_limit=now + skew, clock_floor=floor
                    )
                    await self._report(report, now)
                    for tp, records in batches.items():
                        if records:
                            positions[tp] = records[-1].offset + 1
                if now >= next_flush:
                    next_flush = now + self._flush_every_s
                    if positions or (store is not None and store.pending):
                        await self._flush(consumer, positions)
            await self._flush(consumer, positions)
        finally:
            self._loops.retire("ticks")
            await consumer.stop()

    async def _resume(self, stop: asyncio.Event) -> None:
        """Load today's stored bars into the aggregator (ticks then continue them)."""
        store = self.store
        if store is not None:
            days = {trading_day(m, utcnow()) for m in Market}

            async def load() -> int:
                return self.bars.restore(await store.resume_rows(days))

            restored = await retry_until_stopped(load, stop, "resuming bars from clickhouse failed", log)
            log.info("bars resumed from clickhouse", extra=kv(symbols=restored, days=sorted(str(d) for d in days)))
        self.resumed.set()

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

    async def _flush(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> bool:
        """Store changed bars (and latest prices), then commit the ticks that fed them."""
        latest = self.bars.latest_ticks()
        rows = self.bars.drain()
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
        await self._dead.flush()  # the letters of rejected records before their offsets
        # False: the next flush commits again
        return not positions or await commit(consumer, dict(positions))
