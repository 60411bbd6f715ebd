"""Takes tick batches off the queue and publishes them to market data, keyed by symbol."""

from __future__ import annotations

from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import encode
from shared.kafka import KafkaPublisher


class TickPublisher:
    """Encodes each batch once and hands it to the producer; waits for the batch's acks
    before the next, so per-symbol order holds across retries. While it waits the queue
    fills, so the next batch is larger: batches grow with load."""

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
        while True:
            batch = await self._queue.get_batch(self._batch_max)
            if not batch:
                return
            items = []
            for t in batch:
                key = keys.get(t.symbol)
                if key is None:
                    key = keys[t.symbol] = t.symbol.encode()
                items.append((key, encode(t)))
            await self._publisher.publish_raw(self._topic, items)
            self.published += len(batch)
