"""Test helpers: await a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NoReturn, Self, TypeVar

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


# -- config directories ----------------------------------------------------------------

import os  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

OVERRIDE_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL", "GINKGO_LOG_LEVEL")


def write_config_dir(
    parent: Path, kafka: dict[str, Any], prefix: str, livedata: dict[str, Any] | None = None, **files: Any
) -> Path:
    """Write livedata.yml (kafka settings, topic prefix, HTTP on free ports, ``livedata``
    sections merged over that) and any other ``name=content`` files into a new directory."""
    d = parent / f"config-{prefix.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    live: dict[str, Any] = {
        "kafka": kafka,
        "topics": {"prefix": prefix},
        "gateway": {"http": {"port": 0}},
        "datamanager": {"http": {"port": 0}},
        "tasktimer": {"http": {"port": 0}},
    }
    for section, values in (livedata or {}).items():
        live[section] = {**live.get(section, {}), **values}
    (d / "livedata.yml").write_text(yaml.safe_dump(live))
    for name, content in files.items():
        if content is not None:
            (d / f"{name}.yml").write_text(yaml.safe_dump(content))
    return d


def env_without_overrides() -> dict[str, str]:
    """This process's environment without the variables that override config files."""
    return {k: v for k, v in os.environ.items() if k not in OVERRIDE_VARS}


# -- Kafka helpers ---------------------------------------------------------------------

import contextlib  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord  # noqa: E402

from shared.dto import DecodeError, Message, decode, encode  # noqa: E402
from shared.kafka import assign_all  # noqa: E402
from shared.runtime import Service  # noqa: E402


class TopicFollower:
    """Reads a topic from the beginning in the background (every partition, no group) and
    hands each fetched batch to ``on_batch(records, received_at)`` (``time.time()``)."""

    def __init__(self, topic: str, consumer_options: dict[str, Any]) -> None:
        self.topic = topic
        self._options = consumer_options
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def on_batch(self, records: list[ConsumerRecord[bytes, bytes]], received_at: float) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._consumer = AIOKafkaConsumer(**self._options)
        await self._consumer.start()
        try:
            tps = await assign_all(self._consumer, self.topic, wait_s=10)
            await self._consumer.seek_to_beginning(*tps)
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._read(), name=f"follow.{self.topic}")
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        getmany = self._consumer.getmany
        while True:
            batches = await getmany(timeout_ms=200, max_records=10_000)
            if batches:
                self.on_batch([r for rs in batches.values() for r in rs], time.time())

    def check(self) -> None:
        """Raise the reader's exception if it failed."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            if exc is not None:
                raise exc

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            if self._consumer is not None:
                await self._consumer.stop()


class TopicReader(TopicFollower):
    """Follows a topic and keeps its records and decoded messages."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any] | None = None) -> None:
        """``security``: aiokafka security options (``shared.kafka_security.security_options``)."""
        options = {"bootstrap_servers": bootstrap, "enable_auto_commit": False, "fetch_max_wait_ms": 20}
        super().__init__(topic, {**options, **(security or {})})
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.messages: list[Message] = []

    def on_batch(self, records: list[ConsumerRecord[bytes, bytes]], received_at: float) -> None:
        for r in records:
            self.records.append(r)
            try:
                self.messages.append(decode(r.value or b""))
            except DecodeError:
                pass

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


async def publish(
    bootstrap: str,
    topic: str,
    message: Message | bytes,
    key: str | bytes | None = None,
    security: dict[str, Any] | None = None,
) -> None:
    """Send one message (a DTO or raw bytes) and wait for the ack (``security``: aiokafka
    security options, as for TopicReader)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **(security or {}))
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


def unavailable(why: str, forced_by: str | None = None) -> NoReturn:
    """A test's server or tool is missing: a skip on a developer machine, a failure in CI
    (``CI=true``) or where ``forced_by`` names an environment variable that is set."""
    if os.environ.get("CI") == "true" or (forced_by is not None and os.environ.get(forced_by)):
        pytest.fail(why)
    pytest.skip(why)
