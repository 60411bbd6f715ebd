"""Reads the ``subscriptions`` topic from the beginning: the desired symbols per market.

The gateway follows it to drive its feeders, a partitioned datamanager's members to know
the subscribed symbols (the lease holder publishes them). Every reader reads the whole
topic with ``assign()`` (no consumer group), so each rebuilds the full desired state and
keeps its share: the markets it serves and, with a ``shard``, the symbols in its hash
range. Last value per market wins. A symbol that
belongs to no market, or to another market than its message's, is rejected here
(counted, logged once per message), so it never reaches a feeder.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Sequence

from aiokafka import ConsumerRecord

from shared.config import KafkaSettings, SymbolShard
from shared.dto import Message, Subscription
from shared.kafka import Inbox, follow_topic
from shared.logs import kv
from shared.metrics import ServiceMetrics
from shared.symbols import Market, SymbolError, market_of

log = logging.getLogger("subscriptions")

ApplyCallback = Callable[[Market, frozenset[str]], None]


def shard_of(symbol: str, count: int) -> int:
    """The stable shard of a canonical symbol (the same in every process and run)."""
    return zlib.crc32(symbol.encode()) % count


def accepted_symbols(
    market: Market, symbols: Sequence[str], shard: SymbolShard | None
) -> tuple[frozenset[str], list[str]]:
    """→ (the symbols of ``market`` in ``shard``, the symbols that belong to no market or
    to another market). Pure."""
    keep: set[str] = set()
    rejected: list[str] = []
    for sym in symbols:
        try:
            ok = market_of(sym) is market
        except SymbolError:
            ok = False
        if not ok:
            rejected.append(sym)
        elif shard is None or shard_of(sym, shard.count) == shard.index:
            keep.add(sym)
    return frozenset(keep), rejected


class SubscriptionWatcher:
    """Follows the subscriptions topic and calls ``apply(market, symbols)`` on each change."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        inbox: Inbox,
        apply: ApplyCallback,
        client_id: str,
        metrics: ServiceMetrics,
        shard: SymbolShard | None = None,
        rejected_metric: str = "livedata_gateway_symbols_rejected",
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._inbox = inbox
        self._apply = apply
        self._client_id = client_id
        self._shard = shard
        self._rejected = metrics.counter(
            rejected_metric, "Subscribed symbols that map to no market (or another)", ["market"]
        )
        self.desired: dict[Market, frozenset[str]] = {}
        self.caught_up = asyncio.Event()

    def market_symbols(self, market: Market) -> frozenset[str]:
        """The subscribed symbols of ``market`` (this reader's share), as last published."""
        return self.desired.get(market, frozenset())

    async def run(self, stop: asyncio.Event) -> None:
        loaded = asyncio.create_task(self._say_loaded())
        try:
            await follow_topic(
                self._kafka,
                self._client_id,
                self._topic,
                self._inbox,
                self._on_records,
                stop,
                from_beginning=True,
                caught_up=self.caught_up,
            )
        finally:
            loaded.cancel()

    async def _say_loaded(self) -> None:
        await self.caught_up.wait()
        log.info("subscriptions loaded", extra=kv(markets=len(self.desired)))

    async def _on_records(self, records: Sequence[tuple[ConsumerRecord[bytes, bytes], Message]]) -> None:
        latest: dict[Market, frozenset[str]] = {}
        last: dict[Market, ConsumerRecord[bytes, bytes]] = {}
        for rec, m in records:
            if not isinstance(m, Subscription):
                continue
            try:
                market = Market(m.market)
            except ValueError:
                await self._inbox.reject(rec, f"subscription for unknown market {m.market[:20]!r}")
                continue
            symbols, rejected = accepted_symbols(market, m.symbols, self._shard)
            if rejected:
                self._rejected.labels(market.value).inc(len(rejected))
                log.warning(
                    "subscribed symbols of no market (or another) rejected",
                    extra=kv(market=market.value, count=len(rejected), symbols=rejected[:20]),
                )
            latest[market] = symbols
            last[market] = rec
        for market, symbols in latest.items():
            if self.desired.get(market) != symbols:
                self.desired[market] = symbols
                try:
                    self._apply(market, symbols)
                except Exception as e:  # one market's change must never stop the watcher
                    log.exception("applying a subscription failed", extra=kv(market=market.value))
                    await self._inbox.reject(last[market], f"applying failed: {type(e).__name__}: {e}")
