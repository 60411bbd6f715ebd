"""The datamanager service: interest → subscriptions, ticks → bars, commands → answers.

Active/standby: with Redis configured several instances may run; the one holding the
active lease consumes and publishes, the others wait for the lease (and follow nothing,
so nothing is published twice). Becoming active rebuilds everything from the homes of
the state: interest and latest prices from Redis (the interest topic only from the stored
offsets on), bars from ClickHouse, positions from the committed offsets. Without Redis
one instance runs, always active, with its interest in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from datetime import date
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Histogram

from services.datamanager.bars import BarAggregator, row_bar
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.commands import CommandDesk
from services.datamanager.interest import InterestRegistry
from services.datamanager.quality import AlertGate
from services.datamanager.state import ANSWERED, DatamanagerState, MemoryState, RedisState
from shared.backoff import Backoff
from shared.broker_watch import BrokerReturn
from shared.config import AppConfig, DatamanagerSettings
from shared.dto import (
    Bar,
    CommandResult,
    ControlCommand,
    DecodeError,
    InterestUpdate,
    PriceUpdate,
    Subscription,
    TradeCorrection,
    decode,
    utcnow,
)
from shared.kafka import DeadLetters, Inbox, assign_all, at_end, commit, consumer_options, fetch
from shared.logs import kv
from shared.metrics import LATENCY_BUCKETS_S, add_callback_metric
from shared.runtime import Service
from shared.sessions import in_session, trading_day
from shared.symbols import Market

log = logging.getLogger("datamanager")

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class DataManager(Service):
    """Owns interest and data: subscriptions per market, bars, bar_snapshot."""

    name = "datamanager"

    settings: DatamanagerSettings

    def __init__(self, config: AppConfig) -> None:
        super().__init__(config, config.livedata.datamanager)
        live = config.livedata
        s = self.settings
        dead = DeadLetters(self.publisher, self.topics, self.name, self.metrics)
        self.inbox = Inbox(
            dead,
            self.metrics,
            accepts={
                self.topics.interest_updates: (InterestUpdate,),
                self.topics.control_commands: (ControlCommand,),
                self.topics.market_data: (PriceUpdate, TradeCorrection),
            },
            ignores={self.topics.market_data: (Bar,)},
        )
        self.dead = dead
        # where this process runs (host, pid namespace), its pid, a nonce: a restarted
        # instance recognises the lease of a predecessor that died (_gone_local_holder)
        self.instance_id = f"{_process_home()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state: DatamanagerState = (
            RedisState(live.redis.url.get_secret_value(), s.redis_key_prefix)
            if live.redis.url is not None
            else MemoryState()
        )
        ch = live.clickhouse
        self.store = (
            ClickHouseBars(ch.url.get_secret_value(), ch.database, ch.connect_timeout_s) if ch.url is not None else None
        )
        self.registry = InterestRegistry(s.default_lease_s, s.max_lease_s)
        self.bars = self._new_aggregator()
        self.desk = CommandDesk(self.name, s.command_freshness_s)
        self.desk.register("bar_snapshot", self._bar_snapshot)
        self.desk.register("status", self._status)
        self.role = "starting"  # starting → standby ⇄ active
        self.active = asyncio.Event()
        self.interest_loaded = asyncio.Event()
        self.ticks_ready = asyncio.Event()  # the tick consumer has its partitions and positions
        self.commands_ready = asyncio.Event()
        self.bars_resumed = asyncio.Event()
        self._revision: dict[Market, int] = {}
        self._interest_lock = asyncio.Lock()
        self._gate = AlertGate(s.alert_interval_s)
        self._active_since = 0.0
        self.takeovers = 0
        self.snapshots_sent = 0
        self.failed_records: dict[str, int] = {}
        m = self.metrics
        self._rejected = m.counter(
            "livedata_datamanager_ticks_rejected", "Ticks dropped by data-quality checks", ["reason"]
        )
        self._failed = m.counter(
            "livedata_datamanager_records_failed", "Records whose processing raised (dead-lettered)", ["topic"]
        )
        self._flagged = m.counter("livedata_datamanager_price_limit_flags", "Moves beyond the board's price limit")
        self._gaps = m.gauge("livedata_datamanager_symbols_in_gap", "Subscribed symbols without ticks in session")
        add_callback_metric(
            m, "counter", "livedata_datamanager_ticks_aggregated", "Ticks folded into bars", lambda: self.bars.ticks
        )
        add_callback_metric(
            m,
            "counter",
            "livedata_datamanager_bar_revisions",
            "Late ticks that revised a bar",
            lambda: self.bars.revisions,
        )
        add_callback_metric(
            m,
            "gauge",
            "livedata_datamanager_subscribers",
            "Subscribers with interest",
            lambda: self.registry.subscriber_count,
        )
        add_callback_metric(
            m,
            "gauge",
            "livedata_datamanager_symbols",
            "Symbols in the union of interest",
            lambda: len(self.registry.all_symbols()),
        )
        add_callback_metric(
            m,
            "gauge",
            "livedata_datamanager_active",
            "1 while this instance is the active one",
            lambda: 1.0 if self.active.is_set() else 0.0,
        )
        if self.store is not None:
            store = self.store
            add_callback_metric(
                m,
                "gauge",
                "livedata_datamanager_bars_pending",
                "Bars waiting for ClickHouse",
                lambda: len(store.pending),
            )
            add_callback_metric(
                m,
                "counter",
                "livedata_datamanager_bars_stored",
                "Bar rows inserted into ClickHouse",
                lambda: store.stored,
            )
            add_callback_metric(
                m,
                "counter",
                "livedata_datamanager_clickhouse_failures",
                "Failed ClickHouse operations (connection dropped, retried)",
                lambda: store.failures,
            )
        self._latency = Histogram(
            "livedata_tick_latency_seconds",
            "Provider time → datamanager receive time, per source",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=m.registry,
        )

    def _new_aggregator(self) -> BarAggregator:
        s = self.settings
        return BarAggregator(
            late_grace_s=s.late_tick_grace_s,
            max_price=s.max_price,
            st_symbols=frozenset(s.st_symbols),
            no_limit_symbols=frozenset(s.no_limit_symbols),
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.role != "active":  # a standby answers 503: it serves nothing until it takes over
            return False, {
                "role": self.role,
                "instance": self.instance_id,
                "broker": self.broker_ok,
            }
        parts = {
            "broker": self.broker_ok,
            "interest_loaded": self.interest_loaded.is_set(),
            "ticks_consumer": self.ticks_ready.is_set(),
            "commands_consumer": self.commands_ready.is_set(),
        }
        return all(parts.values()), {"role": self.role, "instance": self.instance_id, **parts}

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "service": self.name,
            "role": self.role,
            "instance": self.instance_id,
            "subscribers": self.registry.subscriber_count,
            "symbols": len(self.registry.all_symbols()),
            "bar_symbols": self.bars.symbol_count,
        }
        if self.store is not None:
            out["clickhouse"] = {"healthy": self.store.healthy, "pending": len(self.store.pending)}
        return out

    # -- lifecycle: standby ⇄ active ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.start_kafka(stop):
            await self.stop_kafka()
            return  # stopped before the broker answered
        self.broker.on_reconnect("republish-subscriptions", self._on_broker_back)
        if not self.state.durable:
            log.warning("redis.url is not set: interest and latest prices live in this process (one instance only)")
        if self.store is None:
            log.warning("clickhouse.url is not set: today's bars live in memory and are lost on restart")
        self.events.status("datamanager", "started", instance=self.instance_id)
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name="dm.events")
                while not stop.is_set():
                    if not await self._await_active(stop):
                        break
                    await self._active_session(stop)
                self.events.status("datamanager", "stopped", instance=self.instance_id)
                self.events.close()
                await events_task
        finally:
            if self.takeovers:  # held the lease at some point: release it if still ours
                with contextlib.suppress(Exception):
                    await self.state.release_active(self.instance_id)
            with contextlib.suppress(Exception):
                await self.state.stop()
            if self.store is not None:
                await self.store.stop()
            await self.stop_kafka()

    async def _on_broker_back(self, back: BrokerReturn) -> None:
        """After an outage republish every market's subscription: a broker that lost its
        topics (the embedded one) lost them too, and a gateway started now needs them."""
        if self.role == "active" and self.interest_loaded.is_set():
            log.info("broker back: republishing subscriptions", extra=kv(recreated=sorted(back.recreated)))
            await self._publish_subscriptions(set(Market))

    async def _await_active(self, stop: asyncio.Event) -> bool:
        """Wait until this instance holds the active lease; False if stopped first."""
        ttl = self.settings.active_lease_s
        announced = False
        while not stop.is_set():
            try:
                if await self.state.acquire_active(self.instance_id, ttl):
                    return True
                holder = await self.state.active_holder()
                if holder is not None and _gone_local_holder(holder):
                    # a predecessor SIGKILLed on this host: no need to wait out its lease
                    # (compare-and-delete: a live instance's newer lease is left alone)
                    await self.state.release_active(holder)
                    log.warning("active lease of a process that is gone: taking it over", extra=kv(holder=holder))
                    if await self.state.acquire_active(self.instance_id, ttl):
                        return True
                if not announced:
                    self.role = "standby"
                    self.events.status("datamanager", "standby", instance=self.instance_id, active=holder)
                    announced = True
            except Exception as e:  # Redis away: stay standby, try again
                log.warning("active lease check failed", extra=kv(error=repr(e)))
                self.role = "standby"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=ttl / 4)
        return False

    async def _keep_active(self, lost: asyncio.Event, stop: asyncio.Event) -> None:
        """Renew the lease every third of it; set ``lost`` if it cannot be renewed in time."""
        ttl = self.settings.active_lease_s
        renewed = time.monotonic()
        while not stop.is_set() and not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=ttl / 3)
            if stop.is_set():
                return
            try:
                if await asyncio.wait_for(self.state.acquire_active(self.instance_id, ttl), ttl / 3):
                    renewed = time.monotonic()
                    continue
                log.error("active lease taken by another instance")
                lost.set()
            except Exception as e:
                log.warning("active lease renewal failed", extra=kv(error=repr(e)))
                if time.monotonic() - renewed > ttl * 0.8:
                    lost.set()

    async def _active_session(self, stop: asyncio.Event) -> None:
        """Serve as the active instance until ``stop`` or the lease is lost."""
        self.takeovers += 1
        self.role = "active"
        self.active.set()
        self._active_since = time.time()
        for ev in (self.interest_loaded, self.ticks_ready, self.commands_ready, self.bars_resumed):
            ev.clear()
        self.bars = self._new_aggregator()
        self.events.status("datamanager", "active", instance=self.instance_id)
        lost = asyncio.Event()
        session_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(self._keep_active(lost, stop), name="dm.lease")
                intake = [
                    tg.create_task(self._follow_interest(session_stop), name="dm.interest"),
                    tg.create_task(self._consume_ticks(session_stop), name="dm.ticks"),
                    tg.create_task(self._consume_commands(session_stop), name="dm.commands"),
                    tg.create_task(self._timers(session_stop), name="dm.timers"),
                ]
                waiters = [
                    tg.create_task(stop.wait(), name="dm.stop-wait"),
                    tg.create_task(lost.wait(), name="dm.lost-wait"),
                ]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                # stop consuming → finish in-flight → commit (in each loop) → close
                session_stop.set()
                for w in waiters:
                    w.cancel()
                await asyncio.gather(*intake)
                keeper.cancel()
        finally:
            self.active.clear()
            self.role = "standby" if not stop.is_set() else "stopping"
        if lost.is_set() and not stop.is_set():
            self.events.status("datamanager", "lost_active_lease", instance=self.instance_id)

    # -- per-record isolation -------------------------------------------------------------

    async def _failed_record(self, rec: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        """One record's processing raised: dead-letter it with the reason, count, go on."""
        self._failed.labels(rec.topic).inc()
        reason = f"processing failed: {type(error).__name__}: {error}"
        self.failed_records[reason[:80]] = self.failed_records.get(reason[:80], 0) + 1
        try:
            await self.dead.send(rec, reason[:500])
        except Exception as e:  # the dead-letter topic itself is away: logged, never fatal
            log.error("dead letter failed", extra=kv(topic=rec.topic, offset=rec.offset, error=repr(e)))

    # -- interest ---------------------------------------------------------------------

    async def _follow_interest(self, stop: asyncio.Event) -> None:
        """Resume interest from the store, then follow the topic from the stored offsets."""
        loaded = await self._retry(self.state.load_interest, stop, "load interest")
        if loaded is None:
            return
        async with self._interest_lock:
            self.registry.load(loaded.subscribers)
        self._revision = {Market(k): v for k, v in loaded.revisions.items() if k in Market.__members__}
        topic = self.topics.interest_updates
        consumer = AIOKafkaConsumer(
            **consumer_options(self.kafka, f"{self.kafka.client_id}-dm-interest", background=True)
        )
        await consumer.start()
        try:
            tps = await assign_all(consumer, topic)
            fresh = [tp for tp in tps if tp.partition not in loaded.offsets]
            for tp in tps:
                if tp.partition in loaded.offsets:
                    consumer.seek(tp, loaded.offsets[tp.partition])
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            skew = self.settings.max_clock_skew_s
            while not stop.is_set():
                self.loops.beat("interest")
                batches = await fetch(consumer, *tps, timeout_ms=200, max_records=5000)
                changed: set[Market] = set()
                added: set[str] = set()
                offsets: dict[int, int] = {}
                limit = time.time() + skew
                for rec, msg in await self.inbox.decode(batches):
                    assert isinstance(msg, InterestUpdate)
                    try:
                        if msg.timestamp.timestamp() > limit:
                            raise ValueError(f"timestamp {msg.timestamp.isoformat()} is ahead of the receive clock")
                        if msg.lease_s is not None and not (math.isfinite(msg.lease_s) and msg.lease_s > 0):
                            raise ValueError(f"lease_s {msg.lease_s!r} is not a positive finite number")
                        self.registry.validate(msg)
                        changed |= self.registry.apply(msg, rec.offset)
                        added |= self.registry.last_added
                    except Exception as e:
                        await self._failed_record(rec, e)
                for tp, records in batches.items():
                    if records:
                        offsets[tp.partition] = records[-1].offset + 1
                if not self.interest_loaded.is_set():
                    if await at_end(consumer, tps):
                        self.registry.expire(time.time())
                        log.info(
                            "interest loaded",
                            extra=kv(
                                subscribers=self.registry.subscriber_count,
                                symbols=len(self.registry.all_symbols()),
                                resumed=bool(loaded.offsets),
                            ),
                        )
                        await self._publish_subscriptions(set(Market))
                        await self._save_interest(offsets, stop)
                        self.interest_loaded.set()
                        continue
                elif changed:
                    await self._publish_subscriptions(changed)
                # resumed at stored offsets, what is read while loading is new too
                if added and (self.interest_loaded.is_set() or loaded.offsets):
                    await self._send_snapshots(added)
                if offsets or self.registry.dirty:
                    await self._save_interest(offsets, stop)
        finally:
            self.loops.retire("interest")
            await consumer.stop()

    async def _save_interest(self, offsets: dict[int, int], stop: asyncio.Event) -> None:
        await self.dead.flush()  # the letters of what was read, then its offsets
        async with self._interest_lock:
            dirty = self.registry.take_dirty()
            revisions = {m.value: r for m, r in self._revision.items()}

            async def save() -> bool:
                await self.state.save_interest(dirty, offsets, revisions)
                return True

            await self._retry(save, stop, "save interest")

    async def _send_snapshots(self, symbols: set[str]) -> None:
        """Snapshot-on-subscribe: the latest known price of newly added symbols, marked."""
        found = {t.symbol: t for t in self.bars.latest_ticks(symbols)}
        missing = symbols - found.keys()
        if missing:
            try:
                found.update(await self.state.load_latest(missing))
            except Exception as e:
                log.warning("latest prices unavailable", extra=kv(error=repr(e)))
        if not found:
            return
        items = [(s, msgspec.structs.replace(t, snapshot=True)) for s, t in found.items()]
        await self.publisher.publish_many(self.topics.market_data, items)
        self.snapshots_sent += len(items)

    async def _publish_subscriptions(self, markets: set[Market]) -> None:
        now = utcnow()
        stamp = int(now.timestamp() * 1000)
        items = []
        for market in sorted(markets):
            # forward across restarts and takeovers even if the stored revision lags
            rev = self._revision[market] = max(self._revision.get(market, 0) + 1, stamp)
            symbols = tuple(sorted(self.registry.market_symbols(market)))
            items.append(
                (market.value, Subscription(market=market.value, symbols=symbols, timestamp=now, revision=rev))
            )
            log.info("subscription published", extra=kv(market=market.value, symbols=len(symbols), revision=rev))
        await self.publisher.publish_many(self.topics.subscriptions, items)

    async def _timers(self, stop: asyncio.Event) -> None:
        """Once a second: close minute bars that have ended, expire leases, watch for gaps."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            now_dt = utcnow()
            self.bars.close_due(now_dt)
            if self.interest_loaded.is_set():
                changed, gone = self.registry.expire(time.time())
                if gone:
                    log.info("leases expired", extra=kv(subscribers=[f"{p}/{n}" for p, n in gone]))
                if changed:
                    await self._publish_subscriptions(changed)
                if gone:
                    await self._save_interest({}, stop)
                self._watch_gaps(now_dt.timestamp())

    def _watch_gaps(self, now: float) -> None:
        gap_s = self.settings.gap_alert_s
        since = self._active_since
        if now - since < gap_s:
            return
        at = utcnow()
        open_markets = {m for m in Market if in_session(m, at)}
        if not open_markets:
            self._gaps.set(0)
            return
        gapped = 0
        for market in open_markets:
            for symbol in self.registry.market_symbols(market):
                last = self.bars.last_tick_time(symbol)
                silent = now - max(last, since)
                if silent > gap_s:
                    gapped += 1
                    if self._gate.allow("gap", symbol, now):
                        self.events.alert(
                            "tick_gap",
                            f"no tick for {symbol} for {silent:.0f}s in session",
                            symbol=symbol,
                            silent_s=round(silent, 1),
                        )
        self._gaps.set(gapped)

    # -- ticks → bars -------------------------------------------------------------------

    def _assigned_consumer(self, role: str) -> AIOKafkaConsumer:
        """A consumer that assigns itself every partition and keeps its offsets in the
        group ``{group_id}.{role}`` (no group membership: a takeover waits for no session
        timeout); partitions without a committed offset start at the end."""
        return AIOKafkaConsumer(
            **consumer_options(
                self.kafka,
                f"{self.kafka.client_id}-dm-{role}",
                background=True,
                group_id=f"{self.settings.group_id}.{role}",
                auto_offset_reset="latest",
            ),
        )

    async def _retry(self, op: Any, stop: asyncio.Event, what: str) -> Any:
        """Run ``op()`` until it succeeds or ``stop``; None if stopped first."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while not stop.is_set():
            try:
                return await op()
            except Exception as e:
                delay = backoff.next_delay()
                log.warning(f"{what} failed, retrying", extra=kv(error=repr(e)[:300], retry_in_s=round(delay, 2)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        return None

    async def _resume_bars(self, stop: asyncio.Event) -> None:
        """Load today's stored bars into the aggregator (ticks then continue them)."""
        store = self.store
        if store is None:
            self.bars_resumed.set()
            return
        now = utcnow()
        days = {trading_day(m, now) for m in Market}

        async def load() -> int:
            return self.bars.restore(await store.resume_rows(days))

        restored = await self._retry(load, stop, "resume bars from clickhouse")
        log.info("bars resumed from clickhouse", extra=kv(symbols=restored, days=sorted(str(d) for d in days)))
        self.bars_resumed.set()

    async def _consume_ticks(self, stop: asyncio.Event) -> None:
        await self._resume_bars(stop)
        consumer = self._assigned_consumer("bars")
        await consumer.start()
        ch = self.config.livedata.clickhouse
        flush_every = ch.flush_interval_ms / 1000.0
        max_pending = ch.max_pending_bars
        positions: dict[TopicPartition, int] = {}
        next_flush = time.time() + flush_every
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        skew = self.settings.max_clock_skew_s
        market_data = self.topics.market_data
        try:
            await _pin_start(consumer, await assign_all(consumer, market_data))
            self.ticks_ready.set()
            while not stop.is_set():
                self.loops.beat("ticks")
                store = self.store
                if store is not None and len(store.pending) > max_pending:
                    # storage is away and the buffer is full: stop fetching until it drains
                    if not await self._flush_bars(consumer, positions):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=backoff.next_delay())
                        continue
                    backoff.reset()
                batches = await fetch(consumer, timeout_ms=200, max_records=10_000)
                now = time.time()
                if batches:
                    await self._fold(batches, now + skew, now)
                    for tp, records in batches.items():
                        if records:
                            positions[tp] = records[-1].offset + 1
                if now >= next_flush:
                    next_flush = now + flush_every
                    if positions or (store is not None and store.pending):
                        await self._flush_bars(consumer, positions)
            await self._flush_bars(consumer, positions)
        finally:
            self.loops.retire("ticks")
            await consumer.stop()

    async def _fold(self, batches: Batches, clock_limit: float, now: float) -> None:
        """Fold one fetch into the bars; any failure of one record dead-letters that record."""
        bars = self.bars
        bars.clock_limit = clock_limit
        on_tick = bars.on_tick
        rejected: dict[str, int] = {}
        newest: dict[str, float] = {}  # per source: its newest tick's provider time
        for tp, records in batches.items():
            part = tp.partition
            rare = 0
            for rec in records:
                try:
                    msg = decode(rec.value or b"")
                except DecodeError:
                    msg = None
                if type(msg) is not PriceUpdate:
                    rare += 1
                    if type(msg) is TradeCorrection:
                        try:
                            reason = bars.on_correction(msg)
                        except Exception as e:
                            await self._failed_record(rec, e)
                            continue
                        if reason is not None:
                            rejected[reason] = rejected.get(reason, 0) + 1
                        continue
                    await self.inbox.decode({tp: [rec]})  # dead-letters or ignores it
                    continue
                try:
                    reason = on_tick(msg, part, rec.offset)
                except Exception as e:
                    await self._failed_record(rec, e)
                    continue
                if reason is not None:
                    rejected[reason] = rejected.get(reason, 0) + 1
                else:
                    newest[msg.source] = msg.timestamp.timestamp()
            self.metrics.messages_in.labels(tp.topic).inc(len(records) - rare)
        for source, ts in newest.items():  # one latency sample per source per fetch
            self._latency.labels(source).observe(max(now - ts, 0.0))
        for reason, n in rejected.items():
            self._rejected.labels(reason).inc(n)
        if bars.flags:
            for symbol, price, prev in bars.flags:
                self._flagged.inc()
                if self._gate.allow("price_limit", symbol, now):
                    self.events.alert(
                        "price_limit",
                        f"{symbol} at {price} is beyond its board's limit from the previous close {prev}",
                        symbol=symbol,
                        price=price,
                        prev_close=prev,
                    )
            bars.flags.clear()

    async def _flush_bars(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> bool:
        """Store changed bars (and latest prices), then commit the ticks that fed them."""
        latest = self.bars.latest_ticks()
        rows = self.bars.drain()
        if latest:
            try:
                await self.state.save_latest(latest)
            except Exception as e:  # a convenience for snapshot-on-subscribe: logged, not fatal
                log.warning("saving latest prices failed", extra=kv(error=repr(e)))
        store = self.store
        if store is not None:
            store.add(rows)
            if not await store.flush():
                return False
        await self.dead.flush()  # the letters of rejected records before their offsets
        # False: the next flush commits again
        return not positions or await commit(consumer, dict(positions))

    # -- commands -------------------------------------------------------------------------

    async def _consume_commands(self, stop: asyncio.Event) -> None:
        consumer = self._assigned_consumer("commands")
        await consumer.start()
        ttl = self.settings.command_freshness_s * 2
        skew = self.settings.max_clock_skew_s
        try:
            await _pin_start(consumer, await assign_all(consumer, self.topics.control_commands))
            self.commands_ready.set()
            while not stop.is_set():
                self.loops.beat("commands")
                batches = await fetch(consumer, timeout_ms=200, max_records=100)
                if not batches:
                    continue
                for rec, msg in await self.inbox.decode(batches):
                    cmd: ControlCommand = msg  # type: ignore[assignment]
                    try:
                        if cmd.timestamp.timestamp() > time.time() + skew:
                            # a command from the future would run now (never stale): refused
                            raise ValueError(f"timestamp {cmd.timestamp.isoformat()} is ahead of the receive clock")
                        why_not = self.desk.should_run(cmd)
                        if why_not is None and not await self._claim(cmd.correlation_id, ttl):
                            why_not = "answered_by_another_instance"
                        if why_not is not None:
                            if why_not != "other_target":
                                log.info(
                                    "command ignored",
                                    extra=kv(
                                        command=cmd.command[:64], correlation_id=cmd.correlation_id[:64], reason=why_not
                                    ),
                                )
                            continue
                        result = await self.desk.execute(cmd)
                        log.info(
                            "command done",
                            extra=kv(command=cmd.command[:64], ok=result.ok, duration_ms=result.duration_ms),
                        )
                        await self.publisher.publish(self.topics.system_events, result, key=self.name)
                        await self.state.command_answered(cmd.correlation_id, ttl)
                    except Exception as e:
                        await self._failed_record(rec, e)
                await self.dead.flush()  # their letters first, then the offsets
                await commit(consumer)
        finally:
            self.loops.retire("commands")
            await consumer.stop()

    async def _claim(self, correlation_id: str, ttl: float) -> bool:
        """Claim answering a command; a claim left unanswered by a predecessor that died on
        this host (SIGKILL between claim and answer) is taken over, not skipped."""
        holder = await self.state.claim_command(correlation_id, self.instance_id, ttl)
        if holder is not None and holder != ANSWERED and _gone_local_holder(holder):
            # it may have died after publishing the answer, before marking it: look first
            if await self._answer_published(correlation_id, ttl):
                await self.state.command_answered(correlation_id, ttl)
                return False
            log.warning(
                "command claimed by a process that is gone, unanswered: answering it",
                extra=kv(correlation_id=correlation_id, holder=holder),
            )
            await self.state.drop_command_claim(correlation_id, holder)
            holder = await self.state.claim_command(correlation_id, self.instance_id, ttl)
        return holder is None

    async def _answer_published(self, correlation_id: str, within_s: float) -> bool:
        """Whether a command_result for ``correlation_id`` is on system.events (read from
        ``within_s`` ago to the end; rare: only for a claim a dead predecessor left)."""
        consumer = AIOKafkaConsumer(**consumer_options(self.kafka, f"{self.kafka.client_id}-dm-answers"))
        await consumer.start()
        try:
            tps = await assign_all(consumer, self.topics.system_events)
            ends = await consumer.end_offsets(tps)
            since = int((time.time() - within_s) * 1000)
            starts = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
            needle = correlation_id.encode()
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                if not batches:
                    break
                for records in batches.values():
                    for rec in records:
                        if rec.value and needle in rec.value:
                            msg = decode(rec.value)
                            if isinstance(msg, CommandResult) and msg.correlation_id == correlation_id:
                                return True
            return False
        except Exception as e:  # cannot tell: answering again beats not answering
            log.warning("could not look for a published answer", extra=kv(error=repr(e)))
            return False
        finally:
            await consumer.stop()

    async def _bar_snapshot(self, cmd: ControlCommand) -> dict[str, Any]:
        """Publish the bars of every subscribed symbol (params: market, date, period)."""
        p = cmd.params
        unknown = set(p) - {"market", "date", "period"}
        if unknown:
            raise ValueError(f"bar_snapshot: unknown params {sorted(unknown)}")
        period = p.get("period", "1d")
        if period not in ("1d", "1m"):
            raise ValueError(f"bar_snapshot: params.period must be '1d' or '1m', got {period!r}")
        markets = list(Market)
        if p.get("market"):
            try:
                markets = [Market(str(p["market"]).upper())]
            except ValueError:
                raise ValueError(f"bar_snapshot: params.market {p['market']!r} is not CN, HK or US") from None
        day: date | None = None
        if p.get("date"):
            try:
                day = date.fromisoformat(str(p["date"]))
            except ValueError:
                raise ValueError(f"bar_snapshot: params.date {p['date']!r} is not YYYY-MM-DD") from None
        now = utcnow()
        items: list[tuple[str, Bar]] = []
        missing = 0
        per_market: dict[str, int] = {}
        from_store = 0
        store_error: str | None = None
        for market in markets:
            want_day = day or trading_day(market, now)
            symbols = sorted(self.registry.market_symbols(market))
            stored: dict[str, dict[int, Bar]] = {}
            if self.store is not None and symbols:
                try:
                    for r in await self.store.read(want_day, period, symbols):
                        stored.setdefault(r.symbol, {})[r.start_ms] = row_bar(r)
                        from_store += 1
                except Exception as e:  # answer from memory, and say so
                    store_error = repr(e)[:200]
            for symbol in symbols:
                found = stored.get(symbol, {})
                # what this process holds is at least as new as what is stored
                if period == "1d":
                    bar = self.bars.daily_bar(symbol, want_day)
                    mem = [bar] if bar is not None else []
                else:
                    mem = self.bars.minute_bars(symbol, want_day)
                for b in mem:
                    found[round(b.timestamp.timestamp() * 1000)] = b
                if not found:
                    missing += 1
                    continue
                items.extend((symbol, found[k]) for k in sorted(found))
                per_market[market.value] = per_market.get(market.value, 0) + len(found)
        await self.publisher.publish_many(self.topics.market_data, items)
        out: dict[str, Any] = {"bars": len(items), "missing": missing, "period": period, "markets": per_market}
        if self.store is not None:
            out["from_store"] = from_store
            if store_error:
                out["store_error"] = store_error
        return out

    async def _status(self, cmd: ControlCommand) -> dict[str, Any]:
        return {**self.health(), "rejected": dict(self.bars.rejected), "failed_records": dict(self.failed_records)}


def _process_home() -> str:
    """This host and pid namespace: where a pid in a lease holder's id can be checked."""
    try:
        ns = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:  # no /proc: never judge another holder's liveness
        ns = uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}-{ns}"


_HOME = _process_home()


def _gone_local_holder(holder: str) -> bool:
    """Whether a lease holder's id names a process of this host and pid namespace that no
    longer exists (pid reuse by a live process errs on the safe side: it looks alive)."""
    if not holder.startswith(_HOME + "-"):
        return False
    pid_s = holder[len(_HOME) + 1 :].partition("-")[0]
    if not pid_s.isdigit() or int(pid_s) == os.getpid():
        return False
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, not ours to signal
        return False
    return False


async def _pin_start(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Resolve each partition's start and commit it where the group had no offset yet, so
    a crash before the first regular commit resumes here instead of at the end."""
    fresh: dict[TopicPartition, int] = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        position = await consumer.position(tp)
        if committed is None:
            fresh[tp] = position
    if fresh:
        await consumer.commit(fresh)
