"""Test helpers: await a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value, and return that value;
    fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


# -- Kafka helpers ---------------------------------------------------------------------

import contextlib  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord  # noqa: E402

from shared.dto import DecodeError, Message, decode, encode  # noqa: E402
from shared.kafka import assign_all  # noqa: E402
from shared.runtime import Service  # noqa: E402


class TopicReader:
    """Reads a topic from the beginning in the background; keeps records and messages."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.messages: list[Message] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self._consumer.start()
        try:
            tps = await assign_all(self._consumer, self.topic, wait_s=10)
            await self._consumer.seek_to_beginning(*tps)
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            for recs in (await self._consumer.getmany(timeout_ms=100)).values():
                for r in recs:
                    self.records.append(r)
                    try:
                        self.messages.append(decode(r.value or b""))
                    except DecodeError:
                        pass

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def of_type(self, cls: type[T]) -> list[T]:
        return [m for m in self.messages if isinstance(m, cls)]

    async def wait_for(
        self, cls: type[T], check: Callable[[T], bool] = lambda m: True, timeout_s: float = 10.0, what: str = ""
    ) -> T:
        def found() -> T | None:
            for m in self.messages:
                if isinstance(m, cls) and check(m):
                    return m
            return None

        result: T = await eventually(found, timeout_s, what=what or f"{cls.__name__} on {self.topic}")
        return result


async def publish(bootstrap: str, topic: str, message: Message | bytes, key: str | bytes | None = None) -> None:
    """Send one message (a DTO or raw bytes) and wait for the ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        value = message if isinstance(message, bytes) else encode(message)
        k = key.encode() if isinstance(key, str) else key
        await producer.send_and_wait(topic, value, key=k)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(service: Service, timeout_s: float = 10.0) -> AsyncIterator[asyncio.Event]:
    """Run a service in this process; on exit, stop it and require a clean drain."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name=f"test.{service.name}")
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout_s)
