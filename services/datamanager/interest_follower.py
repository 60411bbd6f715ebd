"""Interest following: subscribers' interest in, per-market subscriptions out.

Resumes the registry from the state store, then follows the interest topic from the
stored offsets (a partition with none from its beginning). Each change of a market's
union publishes that market's full symbol set with a revision that only moves forward,
across restarts and takeovers. What was read is saved with its offsets in one write, so
a restart resumes where the state ends. Leases that end drop their symbols (``expire``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.datamanager.admission import Admission
from services.datamanager.interest import InterestRegistry
from services.datamanager.metrics import RecordFailures
from services.datamanager.state import DatamanagerState
from shared.alarms import LoopHeartbeats
from shared.config import DatamanagerSettings, KafkaSettings
from shared.dto import InterestUpdate, Message, Subscription, utcnow
from shared.kafka import DeadLetters, Inbox, KafkaPublisher, assign_all, at_end, consumer_options, fetch
from shared.logs import kv
from shared.symbols import Market
from shared.tasks import retry_until_stopped
from shared.topics import Topics

log = logging.getLogger("datamanager.interest")

SnapshotSender = Callable[[set[str]], Awaitable[None]]


class InterestFollower:
    """Owns the interest registry and the subscriptions published from it.

    ``run(stop)`` follows the topic; ``loaded`` is set once the topic was read to its end
    and every market's subscription published; ``expire(now)`` and
    ``publish_subscriptions(markets)`` are for the housekeeping loop and the broker's return.
    New symbols of a subscriber are handed to ``on_added`` (snapshot-on-subscribe).
    """

    def __init__(
        self,
        settings: DatamanagerSettings,
        kafka: KafkaSettings,
        topics: Topics,
        state: DatamanagerState,
        publisher: KafkaPublisher,
        inbox: Inbox,
        dead: DeadLetters,
        failures: RecordFailures,
        loops: LoopHeartbeats,
        on_added: SnapshotSender,
        admission: Admission,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._topics = topics
        self._state = state
        self._publisher = publisher
        self._inbox = inbox
        self._dead = dead
        self._failures = failures
        self._loops = loops
        self._on_added = on_added
        self.admission = admission
        self.registry = InterestRegistry(settings.default_lease_s, settings.max_lease_s, settings.limits)
        self.loaded = asyncio.Event()
        self._revision: dict[Market, int] = {}
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Resume interest from the store, then follow the topic from the stored offsets."""
        self.loaded.clear()
        loaded = await retry_until_stopped(self._state.load_interest, stop, "loading interest failed", log)
        if loaded is None:
            return
        async with self._lock:
            self.registry.load(loaded.subscribers)
        self._revision = {Market(k): v for k, v in loaded.revisions.items() if k in Market.__members__}
        consumer = AIOKafkaConsumer(
            **consumer_options(self._kafka, f"{self._kafka.client_id}-dm-interest", background=True)
        )
        await consumer.start()
        try:
            tps = await assign_all(consumer, self._topics.interest_updates)
            fresh = [tp for tp in tps if tp.partition not in loaded.offsets]
            for tp in tps:
                if tp.partition in loaded.offsets:
                    consumer.seek(tp, loaded.offsets[tp.partition])
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            while not stop.is_set():
                self._loops.beat("interest")
                batches = await fetch(consumer, *tps, timeout_ms=200, max_records=5000)
                changed, added = await self._apply(await self._inbox.decode(batches))
                offsets = {tp.partition: records[-1].offset + 1 for tp, records in batches.items() if records}
                if not self.loaded.is_set():
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
                        await self.publish_subscriptions(set(Market))
                        await self.save(offsets, stop)
                        self.loaded.set()
                        continue
                elif changed:
                    await self.publish_subscriptions(changed)
                # resumed at stored offsets, what is read while loading is new too
                if added and (self.loaded.is_set() or loaded.offsets):
                    await self._on_added(added)
                if offsets or self.registry.dirty:
                    await self.save(offsets, stop)
        finally:
            self.loaded.clear()  # no longer following: nothing to expire, publish or save from here
            self._loops.retire("interest")
            await consumer.stop()

    async def _apply(self, records: list[tuple[ConsumerRecord[bytes, bytes], Message]]) -> tuple[set[Market], set[str]]:
        """Apply decoded updates; one that fails its checks is dead-lettered. Returns the
        markets whose union changed and the symbols subscribers added.

        Admission (key, ids, lease, signature, limits) refuses with a counted reason. A
        signature's freshness is judged by now when following the topic, by the time the
        broker stamped the record while the history loads (else the history of a signed
        system would never load again)."""
        changed: set[Market] = set()
        added: set[str] = set()
        now = time.time()
        limit = now + self._settings.max_clock_skew_s
        live = self.loaded.is_set()
        for rec, msg in records:
            assert isinstance(msg, InterestUpdate)
            try:
                if msg.timestamp.timestamp() > limit:
                    raise ValueError(f"timestamp {msg.timestamp.isoformat()} is ahead of the receive clock")
                symbols = frozenset(self.registry.validate(msg))
                judged_at = now if live else min(now, rec.timestamp / 1000.0)
                problem = self.admission.interest_problem(rec, msg, judged_at) or self.registry.over_limit(msg, symbols)
                if problem is not None:
                    await self.admission.reject(rec, problem)
                    continue
                changed |= self.registry.apply(msg, rec.offset)
                added |= self.registry.last_added
            except Exception as e:
                await self._failures.failed(rec, e)
        return changed, added

    async def save(self, offsets: dict[int, int], stop: asyncio.Event) -> None:
        """Save changed subscribers with the offsets read (their dead letters go first)."""
        await self._dead.flush()
        async with self._lock:
            dirty = self.registry.take_dirty()
            revisions = {m.value: r for m, r in self._revision.items()}

            async def save() -> bool:
                await self._state.save_interest(dirty, offsets, revisions)
                return True

            await retry_until_stopped(save, stop, "saving interest failed", log)

    async def expire(self, now: float, stop: asyncio.Event) -> None:
        """Drop subscribers whose lease ended; publish and save what that changed."""
        if not self.loaded.is_set():
            return
        changed, gone = self.registry.expire(now)
        if gone:
            log.info("leases expired", extra=kv(subscribers=[f"{p}/{n}" for p, n in gone]))
        if changed:
            await self.publish_subscriptions(changed)
        if gone:
            await self.save({}, stop)

    async def publish_subscriptions(self, markets: set[Market]) -> None:
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
        await self._publisher.publish_many(self._topics.subscriptions, items)
