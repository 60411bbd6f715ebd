"""Takes tick batches off the queue and publishes them to market data, keyed by symbol."""

from __future__ import annotations

from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import encode
from shared.kafka import Delivery, KafkaPublisher


class TickPublisher:
    """Encodes each batch once and hands it to the producer while the previous batch's
    acks are awaited (at most two batches in flight). A failed batch is resent before
    the next is confirmed, so per-symbol order holds except across a failure. While it
    waits, the queue fills, so batches grow with load."""

    def __init__(self, queue: ConflatingTickQueue, publisher: KafkaPublisher, topic: str, batch_max: int) -> None:
        self._queue = queue
        self._publisher = publisher
        self._topic = topic
        self._batch_max = batch_max
        self.published = 0
        self._keys: dict[str, bytes] = {}

    async def run(self) -> None:
        """Publish until the queue is closed and drained."""
        keys = self._keys
        queue = self._queue
        in_flight: Delivery | None = None
        while True:
            if in_flight is not None and not len(queue):
                await self._confirm(in_flight)  # nothing new to send meanwhile
                in_flight = None
            batch = await queue.get_batch(self._batch_max)
            if not batch:
                break
            items = []
            for t in batch:
                key = keys.get(t.symbol)
                if key is None:
                    key = keys[t.symbol] = t.symbol.encode()
                items.append((key, encode(t)))
            sent = await self._publisher.send(self._topic, items)
            if in_flight is not None:
                await self._confirm(in_flight)
            in_flight = sent
        if in_flight is not None:
            await self._confirm(in_flight)

    async def _confirm(self, delivery: Delivery) -> None:
        self.published += await self._publisher.confirm(delivery)
