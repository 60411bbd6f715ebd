"""A bounded outbox: ``put`` never blocks, one task publishes what is buffered, in order.

For messages that must not wait on the broker where they are made (a feeder's parser, any
code emitting a system event) and are few compared with ticks. Full, it drops by its
policy and counts: ``oldest`` for events (the newest describe the system best),
``newest`` for messages whose history matters (trade corrections), with a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from shared.dto import Message
from shared.kafka import KafkaPublisher
from shared.logs import kv

log = logging.getLogger("outbox")

M = TypeVar("M", bound=Message)


class Outbox(Generic[M]):
    """Messages for one topic, keyed by ``key(message)``; published by ``run``."""

    def __init__(
        self, topic: str, key: Callable[[M], str], maxsize: int, drop: Literal["oldest", "newest"] = "oldest"
    ) -> None:
        self.topic = topic
        self._key = key
        self._maxsize = maxsize
        self._drop = drop
        self._buffer: deque[M] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.published = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def put(self, message: M) -> None:
        """Buffer ``message`` (full: drop by the policy and count)."""
        if self._closed:
            return
        if len(self._buffer) >= self._maxsize:
            self.dropped += 1
            if self._drop == "newest":
                log.error("outbox full: message dropped", extra=kv(topic=self.topic, dropped=self.dropped))
                return
            self._buffer.popleft()
        self._buffer.append(message)
        self._ready.set()

    def close(self) -> None:
        """No more puts; ``run`` publishes what is left, then returns."""
        self._closed = True
        self._ready.set()

    async def run(self, publisher: KafkaPublisher) -> None:
        """Publish buffered messages until closed and drained (the publisher retries)."""
        key = self._key
        while True:
            while not self._buffer:
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
            batch = list(self._buffer)
            self._buffer.clear()
            await publisher.publish_many(self.topic, [(key(m), m) for m in batch])
            self.published += len(batch)
