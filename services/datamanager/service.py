"""The datamanager service: interest → subscriptions, ticks → bars, commands → answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import date
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.datamanager.bars import BarAggregator
from services.datamanager.commands import CommandDesk
from services.datamanager.interest import InterestRegistry
from shared.config import AppConfig, DatamanagerSettings
from shared.dto import Bar, ControlCommand, InterestUpdate, PriceUpdate, Subscription, utcnow
from shared.kafka import DeadLetters, Inbox, assign_all, at_end, consumer_options
from shared.logs import kv
from shared.metrics import add_callback_metric
from shared.runtime import Service
from shared.sessions import trading_day
from shared.symbols import Market, SymbolError

log = logging.getLogger("datamanager")


class DataManager(Service):
    """Owns interest and data: subscriptions per market, bars, bar_snapshot."""

    name = "datamanager"

    settings: DatamanagerSettings

    def __init__(self, config: AppConfig) -> None:
        super().__init__(config, config.livedata.datamanager)
        dead = DeadLetters(self.publisher, self.topics, self.name, self.metrics)
        self.inbox = Inbox(
            dead,
            self.metrics,
            accepts={
                self.topics.interest_updates: (InterestUpdate,),
                self.topics.control_commands: (ControlCommand,),
                self.topics.market_data: (PriceUpdate,),
            },
            ignores={self.topics.market_data: (Bar,)},
        )
        self.dead = dead
        self.registry = InterestRegistry(self.settings.default_lease_s)
        self.bars = BarAggregator()
        self.desk = CommandDesk(self.name, self.settings.command_freshness_s)
        self.desk.register("bar_snapshot", self._bar_snapshot)
        self.desk.register("status", self._status)
        self.interest_loaded = asyncio.Event()
        self.ticks_ready = asyncio.Event()  # the bars consumer group has its partitions
        self.commands_ready = asyncio.Event()
        self._revision: dict[Market, int] = {}
        m = self.metrics
        self._rejected = m.counter(
            "livedata_datamanager_ticks_rejected", "Ticks dropped by data-quality checks", ["reason"]
        )
        add_callback_metric(
            m, "counter", "livedata_datamanager_ticks_aggregated", "Ticks folded into bars", lambda: self.bars.ticks
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
        self._latency = m.histogram("livedata_tick_latency_seconds", "Provider time → datamanager receive time")

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        parts = {
            "broker": self.broker_ok,
            "interest_loaded": self.interest_loaded.is_set(),
            "ticks_consumer": self.ticks_ready.is_set(),
            "commands_consumer": self.commands_ready.is_set(),
        }
        return all(parts.values()), parts

    def health(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "subscribers": self.registry.subscriber_count,
            "symbols": len(self.registry.all_symbols()),
            "bar_symbols": self.bars.symbol_count,
        }

    async def run(self, stop: asyncio.Event) -> None:
        await self.start_kafka()
        self.events.status("datamanager", "started")
        intake_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name="dm.events")
                intake = [
                    tg.create_task(self._follow_interest(intake_stop), name="dm.interest"),
                    tg.create_task(self._consume_ticks(intake_stop), name="dm.ticks"),
                    tg.create_task(self._consume_commands(intake_stop), name="dm.commands"),
                    tg.create_task(self._timers(intake_stop), name="dm.timers"),
                ]
                await stop.wait()
                # stop consuming → finish in-flight → commit (in each loop) → close
                intake_stop.set()
                await asyncio.gather(*intake)
                self.events.status("datamanager", "stopped")
                self.events.close()
                await events_task
        finally:
            await self.stop_kafka()

    # -- interest ---------------------------------------------------------------------

    async def _follow_interest(self, stop: asyncio.Event) -> None:
        """Rebuild interest from the whole topic, then follow it (state survives restarts)."""
        topic = self.topics.interest_updates
        consumer = AIOKafkaConsumer(
            **consumer_options(self.kafka, f"{self.kafka.client_id}-dm-interest", background=True)
        )
        await consumer.start()
        try:
            tps = await assign_all(consumer, topic)
            await consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                batches = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
                changed: set[Market] = set()
                for rec, msg in await self.inbox.decode(batches):
                    assert isinstance(msg, InterestUpdate)
                    try:
                        self.registry.validate(msg)
                    except SymbolError as e:
                        await self.dead.send(rec, str(e))
                        continue
                    changed |= self.registry.apply(msg)
                if not self.interest_loaded.is_set():
                    if await at_end(consumer, tps):
                        self.registry.expire(time.time())
                        log.info(
                            "interest loaded",
                            extra=kv(
                                subscribers=self.registry.subscriber_count, symbols=len(self.registry.all_symbols())
                            ),
                        )
                        await self._publish_subscriptions(set(Market))
                        self.interest_loaded.set()
                elif changed:
                    await self._publish_subscriptions(changed)
        finally:
            await consumer.stop()

    async def _publish_subscriptions(self, markets: set[Market]) -> None:
        now = utcnow()
        items = []
        for market in sorted(markets):
            rev = self._revision[market] = self._revision.get(market, 0) + 1
            symbols = tuple(sorted(self.registry.market_symbols(market)))
            items.append(
                (market.value, Subscription(market=market.value, symbols=symbols, timestamp=now, revision=rev))
            )
            log.info("subscription published", extra=kv(market=market.value, symbols=len(symbols), revision=rev))
        await self.publisher.publish_many(self.topics.subscriptions, items)

    async def _timers(self, stop: asyncio.Event) -> None:
        """Once a second: expire leases, close minute bars that have ended."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            self.bars.close_due(utcnow())
            if self.interest_loaded.is_set():
                changed, gone = self.registry.expire(time.time())
                if gone:
                    log.info("leases expired", extra=kv(subscribers=[f"{p}/{n}" for p, n in gone]))
                if changed:
                    await self._publish_subscriptions(changed)

    # -- ticks → bars -------------------------------------------------------------------

    def _group_consumer(self, topic: str, role: str) -> AIOKafkaConsumer:
        """A consumer-group member for ``role`` that starts at the end of a new group."""
        return AIOKafkaConsumer(
            topic,
            **consumer_options(
                self.kafka,
                f"{self.kafka.client_id}-dm-{role}",
                background=True,
                group_id=f"{self.settings.group_id}.{role}",
                auto_offset_reset="latest",
            ),
        )

    async def _consume_ticks(self, stop: asyncio.Event) -> None:
        consumer = self._group_consumer(self.topics.market_data, "bars")
        await consumer.start()
        rejected: dict[str, int] = {}
        next_commit = 0.0
        uncommitted = False
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                await _mark_ready(consumer, self.ticks_ready)
                if not batches:
                    if uncommitted:
                        await consumer.commit()
                        uncommitted = False
                    continue
                now = time.time()
                on_tick = self.bars.on_tick
                ticks = await self.inbox.messages(batches)
                for tick in ticks:
                    reason = on_tick(tick)  # type: ignore[arg-type]
                    if reason is not None:
                        rejected[reason] = rejected.get(reason, 0) + 1
                if ticks:  # one latency sample per batch: its newest tick
                    self._latency.observe(max(now - ticks[-1].timestamp.timestamp(), 0.0))
                for reason, n in rejected.items():
                    self._rejected.labels(reason).inc(n)
                rejected.clear()
                # committing once a second (and on stop) saves a broker round trip per fetch;
                # ticks redelivered after a crash are older than the bars' state (dropped as
                # time_backwards) or exact repeats (dropped as duplicate)
                uncommitted = True
                if now >= next_commit:
                    await consumer.commit()
                    uncommitted = False
                    next_commit = now + 1.0
            if uncommitted:
                await consumer.commit()
        finally:
            await consumer.stop()

    # -- commands -------------------------------------------------------------------------

    async def _consume_commands(self, stop: asyncio.Event) -> None:
        consumer = self._group_consumer(self.topics.control_commands, "commands")
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=100)
                await _mark_ready(consumer, self.commands_ready)
                if not batches:
                    continue
                for msg in await self.inbox.messages(batches):
                    cmd: ControlCommand = msg  # type: ignore[assignment]
                    why_not = self.desk.should_run(cmd)
                    if why_not is not None:
                        if why_not != "other_target":
                            log.info(
                                "command ignored",
                                extra=kv(command=cmd.command, correlation_id=cmd.correlation_id, reason=why_not),
                            )
                        continue
                    result = await self.desk.execute(cmd)
                    log.info(
                        "command done", extra=kv(command=cmd.command, ok=result.ok, duration_ms=result.duration_ms)
                    )
                    await self.publisher.publish(self.topics.system_events, result, key=self.name)
                await consumer.commit()
        finally:
            await consumer.stop()

    async def _bar_snapshot(self, cmd: ControlCommand) -> dict[str, Any]:
        """Publish today's bar of every subscribed symbol (params: market, date, period)."""
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
        for market in markets:
            want_day = day or trading_day(market, now)
            for symbol in sorted(self.registry.market_symbols(market)):
                if period == "1d":
                    bar = self.bars.daily_bar(symbol, want_day)
                    found = [bar] if bar is not None else []
                else:
                    found = self.bars.minute_bars(symbol, want_day)
                if not found:
                    missing += 1
                items.extend((symbol, b) for b in found)
                per_market[market.value] = per_market.get(market.value, 0) + len(found)
        await self.publisher.publish_many(self.topics.market_data, items)
        return {"bars": len(items), "missing": missing, "period": period, "markets": per_market}

    async def _status(self, cmd: ControlCommand) -> dict[str, Any]:
        return {**self.health(), "rejected": dict(self.bars.rejected)}


async def _mark_ready(consumer: AIOKafkaConsumer, ready: asyncio.Event) -> None:
    """Set ``ready`` once the group assigned partitions and their start offsets are known
    (a message sent after that is seen, even by a consumer that starts at the end)."""
    if ready.is_set():
        return
    assigned = consumer.assignment()
    if assigned:
        for tp in assigned:
            await consumer.position(tp)
        ready.set()
