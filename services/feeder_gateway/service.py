"""The feeder-gateway service: subscriptions in, feeders run per market, ticks out."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import Histogram

from services.feeder_gateway.feeders.base import CorrectionCallback, Feeder, FeederContext, FeederMetrics
from services.feeder_gateway.feeders.catalog import validate_sources
from services.feeder_gateway.feeders.registry import FEEDER_TYPES
from services.feeder_gateway.feeders.wanted import WantedSymbols
from services.feeder_gateway.market_feed import HoleCallback, MarketFeed
from services.feeder_gateway.repair import RepairWorker
from services.feeder_gateway.tick_publisher import TickPublisher
from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.config import AppConfig, GatewaySettings
from shared.dto import ControlCommand, Subscription, TradeCorrection
from shared.events import SystemEvents
from shared.kafka import DeadLetters, Inbox, follow_topic
from shared.logs import kv
from shared.metrics import add_callback_metric
from shared.outbox import Outbox
from shared.runtime import Service
from shared.signing import verifier_from_config
from shared.subscriptions import SubscriptionWatcher
from shared.symbols import Market

log = logging.getLogger("feeder-gateway")

class FeederGateway(Service):
    """Owns provider connections; publishes normalized ticks keyed by symbol."""

    name = "feeder-gateway"

    settings: GatewaySettings

    def __init__(self, config: AppConfig) -> None:
        super().__init__(config, config.livedata.gateway)
        live = config.livedata
        self.queue = ConflatingTickQueue(self.settings.queue_size)
        self.feeder_metrics = FeederMetrics(self.metrics)
        # trade corrections and cancels: rare and each one matters, so not through the
        # conflating tick queue; keyed by symbol like the ticks, dropped (counted) only when full
        self.corrections: Outbox[TradeCorrection] = Outbox(
            self.topics.market_data, lambda fix: fix.symbol, maxsize=10_000, drop="newest"
        )
        self.feeds: dict[Market, MarketFeed] = self._build_feeds()
        self.repair = RepairWorker(
            self.feeds,
            self.publisher,
            self.topics.market_data,
            self.events,
            self.metrics,
            self.settings.repair,
            shard=self.settings.shard,
            verifier=verifier_from_config(config),
            require_signed=live.security.require_signed,
        )
        self.inbox = inbox = Inbox(
            DeadLetters(self.publisher, self.topics, self.name, self.metrics),
            self.metrics,
            accepts={self.topics.subscriptions: (Subscription,), self.topics.control_commands: (ControlCommand,)},
        )
        self.watcher = SubscriptionWatcher(
            live.kafka,
            self.topics.subscriptions,
            inbox,
            self._apply,
            f"{live.kafka.client_id}-{self.name}-subs",
            self.metrics,
            self.settings.shard,
        )
        self.tick_publisher = TickPublisher(
            self.queue, self.publisher, self.topics.market_data, self.settings.publish_batch_max
        )
        m = self.metrics
        add_callback_metric(
            m, "gauge", "livedata_gateway_queue_depth", "Ticks waiting to be published", lambda: len(self.queue)
        )
        add_callback_metric(
            m, "counter", "livedata_gateway_ticks_in", "Ticks accepted from feeders", lambda: self.queue.accepted
        )
        add_callback_metric(
            m, "counter", "livedata_gateway_ticks_out", "Ticks published", lambda: self.tick_publisher.published
        )
        add_callback_metric(
            m,
            "counter",
            "livedata_gateway_ticks_conflated",
            "Ticks replaced by a newer tick of the same symbol",
            lambda: self.queue.conflated,
        )
        self.alarm(
            "ticks_conflated",
            "ticks conflated (the broker or the publisher falls behind)",
            lambda: self.queue.conflated,
            self.settings.conflation_alert_per_s,
        )
        add_callback_metric(
            m,
            "counter",
            "livedata_gateway_failovers",
            "Source switches",
            lambda: sum(f.switches for f in self.feeds.values()),
        )
        add_callback_metric(
            m,
            "counter",
            "livedata_gateway_corrections_published",
            "Trade corrections and cancels published",
            lambda: self.corrections.published,
        )
        add_callback_metric(
            m,
            "counter",
            "livedata_gateway_corrections_dropped",
            "Trade corrections dropped because their outbox was full",
            lambda: self.corrections.dropped,
        )

    def _build_feeds(self) -> dict[Market, MarketFeed]:
        latency = self.metrics.histogram(
            "livedata_feed_latency_seconds", "Provider time → gateway receive time (newest tick of each batch)"
        )
        return build_feeds(
            self.config, self.queue, self.events, self.feeder_metrics, latency, self.corrections.put, self._hole
        )

    def _hole(self, market: Market, symbols: frozenset[str], since: Any, until: Any, why: str) -> None:
        self.repair.hole(market, symbols, since, until, why)

    def _apply(self, market: Market, symbols: frozenset[str]) -> None:
        feed = self.feeds.get(market)
        if feed is None:
            if symbols:
                log.debug("market not served by this instance", extra=kv(market=market.value))
            return
        log.info("subscription", extra=kv(market=market.value, symbols=len(symbols)))
        feed.set_symbols(symbols)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        feeds = {
            m.value: {"source": f.active_feeder.ctx.name, "connected": f.connected, "symbols": len(f.symbols)}
            for m, f in self.feeds.items()
        }
        # a market with symbols needs its active feeder connected; an idle one needs nothing
        feeders_ok = all(f.connected or not f.symbols for f in self.feeds.values())
        ready = self.broker_ok and self.watcher.caught_up.is_set() and feeders_ok
        return ready, {
            "broker": self.broker_ok,
            "subscriptions_loaded": self.watcher.caught_up.is_set(),
            "feeders_connected": feeders_ok,
            "feeds": feeds,
        }

    def health(self) -> dict[str, Any]:
        return {"service": self.name, "queue_depth": len(self.queue), "conflated": self.queue.conflated}

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.start_kafka(stop):
            await self.stop_kafka()
            return  # stopped before the broker answered
        self.events.status(self.name, "started", markets=[m.value for m in self.feeds])
        feed_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name=f"{self.name}.events")
                publish_task = tg.create_task(self.tick_publisher.run(), name=f"{self.name}.publish")
                corrections_task = tg.create_task(self.corrections.run(self.publisher), name=f"{self.name}.corrections")
                watcher_task = tg.create_task(self.watcher.run(feed_stop), name=f"{self.name}.subscriptions")
                repair_task = tg.create_task(self.repair.run(feed_stop), name=f"{self.name}.repair")
                commands_task = tg.create_task(
                    follow_topic(
                        self.config.livedata.kafka,
                        f"{self.config.livedata.kafka.client_id}-{self.name}-commands",
                        self.topics.control_commands,
                        self.inbox,
                        self.repair.on_records,
                        feed_stop,
                        from_beginning=False,
                    ),
                    name=f"{self.name}.commands",
                )
                feed_tasks = [
                    tg.create_task(feed.run(feed_stop), name=f"{self.name}.feed.{m.value}")
                    for m, feed in self.feeds.items()
                ]
                await stop.wait()
                # Ordered drain: feeders → queue → producer flush.
                feed_stop.set()
                await asyncio.gather(*feed_tasks, watcher_task, repair_task, commands_task)
                self.queue.close()
                self.corrections.close()
                await asyncio.gather(publish_task, corrections_task)
                self.events.status(self.name, "stopped", published=self.tick_publisher.published)
                self.events.close()
                await events_task
        finally:
            await self.stop_kafka()
        log.info("drained", extra=kv(published=self.tick_publisher.published, conflated=self.queue.conflated))


def _feeder_status(events: SystemEvents, market: Market, source: str) -> Any:
    def emit(state: str, detail: dict[str, Any]) -> None:
        events.status(f"feeder.{source}.{market.value}", state, **detail)

    return emit


def _feeder_alert(events: SystemEvents, market: Market, source: str) -> Any:
    def alert(code: str, message: str, detail: dict[str, Any]) -> None:
        events.alert(code, message, severity="error", market=market.value, source=source, **detail)

    return alert


def build_feeds(
    config: AppConfig,
    queue: ConflatingTickQueue,
    events: SystemEvents,
    feeder_metrics: FeederMetrics,
    latency: Histogram | None = None,
    emit_correction: CorrectionCallback | None = None,
    on_hole: HoleCallback | None = None,
) -> dict[Market, MarketFeed]:
    """One MarketFeed per served market from data_sources.yml (sim everywhere if empty).

    The sources are checked by the catalog's ``validate_sources`` (the check every daemon
    runs at start), then each becomes its registry feeder. ``emit_correction`` receives
    the feeders' trade corrections (published on market data); ``on_hole`` each hole in a
    market's ticks (the repair worker).

    Raises ConfigError naming data_sources.yml and the key of a bad source.
    """
    feeds: dict[Market, MarketFeed] = {}
    for market, plan in validate_sources(config).items():
        wanted = WantedSymbols()
        feeders: list[Feeder[Any]] = []
        for source in plan.sources:
            ctx = FeederContext(
                name=source.name,
                market=market,
                emit_status=_feeder_status(events, market, source.name),
                metrics=feeder_metrics,
                wanted=wanted.view(),
                emit_alert=_feeder_alert(events, market, source.name),
                emit_correction=emit_correction,
            )
            feeders.append(FEEDER_TYPES[source.type](source.settings, ctx))
        feeds[market] = MarketFeed(
            market,
            feeders,
            wanted,
            queue,
            events,
            failback_after_s=plan.config.failback_after_s,
            stale_in_session_only=plan.config.stale_watchdog == "in_session",
            latency=latency,
            on_hole=on_hole,
        )
    return feeds
