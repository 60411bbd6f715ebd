"""The datamanager's composition root: builds its parts, wires them, owns the phases.

The parts, one job each: ``Leadership`` (the active lease), ``InterestFollower``
(interest in, subscriptions out), ``TickIntake`` (ticks → bars → ClickHouse, offsets),
``CommandIntake`` (commands answered once), ``Snapshots`` (``bar_snapshot`` and
snapshot-on-subscribe), ``GapWatch``, gap repair (``RepairFlow`` in the tick intake,
``RepairAnswers`` for ``repair_bars``, ``RepairTriggers`` asking the gateway) and
``DatamanagerMetrics``.

Phases, active/standby: start Kafka → wait for the lease (standby meanwhile) → an active
session runs the intakes until stop or the lease is lost → stop consuming, finish in
flight, commit (each intake does so as it returns) → release the lease, close the stores.
Becoming active rebuilds everything from the homes of the state: interest and latest
prices from Redis, bars from ClickHouse, positions from the committed offsets.
Partitioned: the tick and command intakes run from the start on this member's share of
market data (``Ownership``), and interest is followed only while holding the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from services.datamanager.admission import Admission
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.command_intake import CommandIntake
from services.datamanager.gap_watch import GapWatch
from services.datamanager.interest import SubscribedSymbols
from services.datamanager.interest_follower import InterestFollower
from services.datamanager.leadership import Leadership, Role
from services.datamanager.metrics import DatamanagerMetrics, RecordFailures
from services.datamanager.ownership import Ownership
from services.datamanager.repair_answers import RepairAnswers, RepairLedger
from services.datamanager.repair_flow import RepairFlow
from services.datamanager.repair_triggers import RepairTriggers
from services.datamanager.snapshots import Snapshots
from services.datamanager.state import open_homes
from services.datamanager.tick_intake import TickIntake
from shared.broker_watch import BrokerReturn
from shared.config import LIVEDATA_FILE, AppConfig, ConfigError, DatamanagerSettings
from shared.dto import Bar, ControlCommand, HistoryBars, InterestUpdate, PriceUpdate, Subscription, TradeCorrection
from shared.kafka import DeadLetters, Inbox
from shared.logs import kv
from shared.metrics import counter_total
from shared.runtime import Service
from shared.signing import signer_from_config, verifier_from_config
from shared.subscriptions import SubscriptionWatcher
from shared.symbols import Market
from shared.tasks import sleep_or_stop, wait_first

log = logging.getLogger("datamanager")


class DataManager(Service):
    """Owns interest and data: subscriptions per market, bars, bar_snapshot."""

    name = "datamanager"

    settings: DatamanagerSettings

    def __init__(self, config: AppConfig) -> None:
        super().__init__(config, config.livedata.datamanager)
        live, s, t = config.livedata, self.settings, self.topics
        if s.partitioned and (live.redis.url is None or live.clickhouse.url is None):
            # members hand partitions over through ClickHouse (bars) and Redis (lease, claims)
            raise ConfigError(f"{LIVEDATA_FILE}: datamanager.partitioned: needs redis.url and clickhouse.url")
        self.state, lease, claims = open_homes(live.redis.url, s.redis_key_prefix)
        ch = live.clickhouse
        store = ClickHouseBars(ch.url.get_secret_value(), ch.database, ch.connect_timeout_s) if ch.url else None
        self.dead = DeadLetters(self.publisher, t, self.name, self.metrics)
        inbox = Inbox(
            self.dead,
            self.metrics,
            accepts={
                t.interest_updates: (InterestUpdate,),
                t.control_commands: (ControlCommand,),
                t.market_data: (PriceUpdate, TradeCorrection, HistoryBars),
                t.subscriptions: (Subscription,),  # read when partitioned
            },
            ignores={t.market_data: (Bar,)},
        )
        sources = frozenset(e.source_name for ms in config.data_sources.markets.values() for e in ms.sources)
        self.dm_metrics = m = DatamanagerMetrics(self.metrics, sources)  # tick sources as labels
        self.failures = RecordFailures(self.dead, m)

        def admission() -> Admission:  # one per intake: each owns its replay memory
            return Admission(s.limits, live.security, verifier_from_config(config), self.dead, m)

        self.alarm(
            "input_rejected",
            "interest updates and commands refused (identity, signature, limits)",
            lambda: counter_total(m.input_rejected),
            s.limits.rejected_alert_per_s,
        )
        self.leadership = Leadership(lease, s.active_lease_s, self.events)
        self.ownership = own = Ownership()
        ledger = RepairLedger()
        repairs = RepairFlow(self.publisher, t.market_data, ledger, m)
        self.intake = TickIntake(
            s, ch, self.kafka, t, store, self.state, inbox, self.dead, self.failures, self.events, m, self.loops, own,
            repairs,
        )  # fmt: skip
        parts = (inbox, self.dead, self.failures)
        self.interest = InterestFollower(
            s, self.kafka, t, self.state, self.publisher, *parts, self.loops, self._added, admission=admission()
        )
        # partitioned, every member knows the subscribed symbols from the published subscriptions
        self.subscribed = SubscriptionWatcher(
            self.kafka, t.subscriptions, inbox, lambda market, symbols: None, f"{self.kafka.client_id}-dm-subs",
            self.metrics, rejected_metric="livedata_datamanager_symbols_rejected",
        )  # fmt: skip
        symbols: SubscribedSymbols = self.subscribed if s.partitioned else self.interest.registry
        bars = lambda: self.intake.bars  # noqa: E731 - a takeover replaces the aggregator
        self.snapshots = Snapshots(t, self.publisher, symbols, bars, store, self.state, own)
        me = self.leadership.instance_id
        self.commands = CommandIntake(
            self.name, me, s, self.kafka, t, claims, own, self.publisher, *parts, self.loops, admission=admission()
        )
        self.commands.desk.register("bar_snapshot", self.snapshots.bar_snapshot)
        self.commands.desk.register("status", self._status)
        answers = RepairAnswers(ledger, symbols, own, self.commands.desk.stopping)
        self.commands.desk.register("repair_bars", answers.repair_bars, waits=True)
        known = lambda: self.subscribed.caught_up if s.partitioned else self.interest.loaded  # noqa: E731
        self.repair_triggers = triggers = RepairTriggers(
            s, t, self.publisher, signer_from_config(config), symbols, bars, store, own, known, m
        )
        self.intake.when_resumed(triggers.resumed)
        self.gaps = GapWatch(
            s.gap_alert_s, s.alert_interval_s, symbols, bars, self.events, m, own, triggers.gaps_closed
        )
        m.read_parts(self.intake, self.interest.registry, self.leadership)

    async def _added(self, symbols: set[str]) -> None:
        await self.snapshots.latest_prices(symbols)

    @property
    def role(self) -> Role:
        return self.leadership.role

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        me: dict[str, Any] = {"role": self.role, "instance": self.leadership.instance_id}
        parts = {
            "broker": self.broker_ok,
            "ticks_consumer": self.intake.ready.is_set(),
            "commands_consumer": self.commands.ready.is_set(),
        }
        if self.settings.partitioned:  # every member serves its partitions; the leader also interest
            me["partitions"] = sorted(self.ownership.partitions)
            parts["subscriptions_loaded"] = self.subscribed.caught_up.is_set()
        elif self.role is not Role.ACTIVE:  # a standby answers 503: it serves nothing until it takes over
            return False, {**me, "broker": self.broker_ok}
        if self.role is Role.ACTIVE:
            parts["interest_loaded"] = self.interest.loaded.is_set()
        return all(parts.values()), {**me, **parts}

    def health(self) -> dict[str, Any]:
        registry, store = self.interest.registry, self.intake.store
        out: dict[str, Any] = {
            "service": self.name,
            "role": self.role,
            "instance": self.leadership.instance_id,
            "subscribers": registry.subscriber_count,
            "symbols": len(registry.all_symbols()),
            "bar_symbols": self.intake.bars.symbol_count,
        }
        if store is not None:
            out["clickhouse"] = {"healthy": store.healthy, "pending": len(store.pending)}
        return out

    async def _status(self, cmd: ControlCommand, partitions: frozenset[int]) -> dict[str, Any]:
        return {**self.health(), "rejected": dict(self.intake.bars.rejected), "failed_records": self.failures.by_reason}

    # -- phases ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.start_kafka(stop):
            await self.stop_kafka()
            return  # stopped before the broker answered
        self.broker.on_reconnect("republish-subscriptions", self._on_broker_back)
        if not self.state.durable:
            log.warning("redis.url is not set: interest and latest prices live in this process (one instance only)")
        if self.intake.store is None:
            log.warning("clickhouse.url is not set: today's bars live in memory and are lost on restart")
        me = self.leadership.instance_id
        self.events.status("datamanager", "started", instance=me)
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name="dm.events")
                if self.settings.partitioned:
                    await self._serve_partitions(stop)
                else:
                    while await self.leadership.acquire(stop):
                        await self._active_session(stop)
                self.events.status("datamanager", "stopped", instance=me)
                self.events.close()
                await events_task
        finally:
            await self.leadership.release()
            with contextlib.suppress(Exception):  # shutdown goes on
                await self.state.stop()
            if self.intake.store is not None:
                await self.intake.store.stop()
            await self.stop_kafka()

    async def _active_session(self, stop: asyncio.Event) -> None:
        """Serve as the active instance until ``stop`` or the lease is lost."""
        session_stop = asyncio.Event()
        async with self.leadership.held(stop) as lost, asyncio.TaskGroup() as tg:
            intake = [
                tg.create_task(self.interest.run(session_stop), name="dm.interest"),
                tg.create_task(self.intake.run(session_stop), name="dm.ticks"),
                tg.create_task(self.commands.run(session_stop), name="dm.commands"),
                tg.create_task(self._housekeeping(session_stop), name="dm.housekeeping"),
                tg.create_task(self.repair_triggers.run(session_stop), name="dm.repairs"),
            ]
            await wait_first(stop, lost)
            # stop consuming → finish in flight → commit (in each intake) → close
            session_stop.set()
            await asyncio.gather(*intake)

    async def _serve_partitions(self, stop: asyncio.Event) -> None:
        """Partitioned: serve this member's share of market data and answer every command for
        it from the start; follow interest and publish subscriptions while holding the lease."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.subscribed.run(stop), name="dm.subscriptions")
            tg.create_task(self.intake.run(stop), name="dm.ticks")
            tg.create_task(self.commands.run(stop), name="dm.commands")
            tg.create_task(self._housekeeping(stop), name="dm.housekeeping")
            tg.create_task(self.repair_triggers.run(stop), name="dm.repairs")
            while await self.leadership.acquire(stop):
                async with self.leadership.held(stop) as lost:
                    lead_stop = asyncio.Event()
                    follower = tg.create_task(self.interest.run(lead_stop), name="dm.interest")
                    await wait_first(stop, lost)
                    lead_stop.set()
                    await follower

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Once a second: close minute bars that have ended, expire leases, watch for gaps."""
        while not await sleep_or_stop(stop, 1.0):
            self.intake.close_due()
            now = time.time()
            await self.interest.expire(now, stop)
            known = self.subscribed.caught_up if self.settings.partitioned else self.interest.loaded
            if known.is_set():
                self.gaps.check(now, max(self.leadership.active_since, self.ownership.since))

    async def _on_broker_back(self, back: BrokerReturn) -> None:
        """After an outage republish every market's subscription: a broker that lost its
        topics (the embedded one) lost them too, and a gateway started now needs them."""
        if self.role is Role.ACTIVE and self.interest.loaded.is_set():
            log.info("broker back: republishing subscriptions", extra=kv(recreated=sorted(back.recreated)))
            await self.interest.publish_subscriptions(set(Market))
