"""Trade corrections from the feeders to market data, keyed by symbol, never conflated.

Corrections and cancels (``TradeCorrection``) are rare and each one matters, so they do
not share the conflating tick queue: ``put`` never blocks (a feeder calls it from its
parser) and buffers up to ``maxsize``; past that a correction is dropped, counted and
logged (the broker has been away for a long time). A task publishes the buffer in
order, keyed by symbol like the ticks, so a symbol's corrections stay in order on its
partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from shared.dto import TradeCorrection
from shared.kafka import KafkaPublisher
from shared.logs import kv

log = logging.getLogger("gateway.corrections")


class CorrectionPublisher:
    """A bounded outbox of TradeCorrection messages for the market-data topic."""

    def __init__(self, publisher: KafkaPublisher, topic: str, maxsize: int = 10_000) -> None:
        self._publisher = publisher
        self._topic = topic
        self._maxsize = maxsize
        self._buffer: deque[TradeCorrection] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.published = 0
        self.dropped = 0

    def put(self, fix: TradeCorrection) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self._maxsize:
            self.dropped += 1
            log.error("correction dropped: outbox full", extra=kv(symbol=fix.symbol, dropped=self.dropped))
            return
        self._buffer.append(fix)
        self._ready.set()

    def close(self) -> None:
        """No more puts; ``run`` publishes what is left, then returns."""
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        while True:
            while not self._buffer:
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
            batch = list(self._buffer)
            self._buffer.clear()
            await self._publisher.publish_many(self._topic, [(fix.symbol, fix) for fix in batch])
            self.published += len(batch)
