"""Dead letters gathered per consumer batch and published together before its commit."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRecord

from shared.dto import DeadLetter, encode, utcnow
from shared.kafka import MAX_DEAD_LETTER_RAW, DeadLetters, KafkaPublisher, Record
from shared.logs import kv
from shared.metrics import ServiceMetrics
from shared.topics import Topics

log = logging.getLogger("deadletters")

MAX_REASON = 1000  # characters of the reason kept in a letter
MAX_QUEUED_BYTES = 4 * 2**20  # letters waiting for a flush (each raw value is cut at 64 KiB)


class PipelinedDeadLetters(DeadLetters):
    """DeadLetters whose ``send`` only queues the letter; ``flush()`` publishes what is
    queued in one batch and waits for the broker. A flood of bad records (10,000 in a
    row) is then dead-lettered at producer speed instead of one round trip each (~400/s
    measured before). Each consumer loop calls ``flush()`` before it commits past its
    records, so an offset is never committed ahead of its letter. The queue is bounded
    by ``MAX_QUEUED_BYTES``: past it ``send`` flushes first."""

    def __init__(self, publisher: KafkaPublisher, topics: Topics, service: str, metrics: ServiceMetrics) -> None:
        super().__init__(publisher, topics, service, metrics)
        self._out = publisher
        self._deadletter_topic = topics.deadletter
        self._name = service
        self._counter = metrics.dead_lettered
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._flushing = asyncio.Lock()

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        raw = (record.value or b"")[:MAX_DEAD_LETTER_RAW].decode("utf-8", errors="replace")
        # a decoder's message may quote the bad value whole (msgspec does, for a 1 MB
        # unknown tag): keep the letter small whatever came in
        reason = reason[:MAX_REASON]
        key = record.key.decode("utf-8", errors="replace") if record.key else None
        letter = DeadLetter(
            service=self._name,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            raw=raw,
            key=key,
            timestamp=utcnow(),
        )
        self._counter.labels(record.topic).inc()
        log.warning(
            "dead-lettered a message",
            extra=kv(topic=record.topic, offset=record.offset, reason=reason[:200], raw=repr(raw[:120])),
        )
        value = encode(letter)
        self._pending.append((record.topic.encode(), value))
        self._pending_bytes += len(value)
        if self._pending_bytes > MAX_QUEUED_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Publish every letter queued so far and wait until the broker has them (resending
        what failed). One flush at a time: a loop that finds another one flushing waits."""
        async with self._flushing:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            if pending:
                await self._out.publish_raw(self._deadletter_topic, pending)
