"""Reads the ``subscriptions`` topic from the beginning: the desired symbols per market.

Every gateway instance reads the whole topic with ``assign()`` (no consumer group), so
each rebuilds the full desired state and keeps the markets it serves. Last value per
market wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer

from shared.config import KafkaSettings
from shared.dto import Subscription
from shared.kafka import Inbox, assign_all, at_end, consumer_options
from shared.logs import kv
from shared.symbols import Market

log = logging.getLogger("subscriptions")

ApplyCallback = Callable[[Market, frozenset[str]], None]


class SubscriptionWatcher:
    """Follows the subscriptions topic and calls ``apply(market, symbols)`` on each change."""

    def __init__(self, kafka: KafkaSettings, topic: str, inbox: Inbox, apply: ApplyCallback, client_id: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._inbox = inbox
        self._apply = apply
        self._client_id = client_id
        self.desired: dict[Market, frozenset[str]] = {}
        self.caught_up = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(**consumer_options(self._kafka, self._client_id, background=True))
        await consumer.start()
        try:
            tps = await assign_all(consumer, self._topic)
            await consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                batches = await consumer.getmany(*tps, timeout_ms=200, max_records=1000)
                if batches:
                    self._on_messages(await self._inbox.messages(batches))
                if not self.caught_up.is_set() and await at_end(consumer, tps):
                    self.caught_up.set()
                    log.info("subscriptions loaded", extra=kv(markets=len(self.desired)))
        finally:
            await consumer.stop()

    def _on_messages(self, messages: Sequence[object]) -> None:
        latest: dict[Market, frozenset[str]] = {}
        for m in messages:
            if isinstance(m, Subscription):
                try:
                    market = Market(m.market)
                except ValueError:
                    log.warning("subscription for unknown market ignored", extra=kv(market=m.market))
                    continue
                latest[market] = frozenset(m.symbols)
        for market, symbols in latest.items():
            if self.desired.get(market) != symbols:
                self.desired[market] = symbols
                self._apply(market, symbols)
