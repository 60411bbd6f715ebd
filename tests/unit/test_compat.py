"""shared/compat.py against the installed libraries: an upgrade that drops a private
attribute we read fails here, not in a daemon. Also the public aiohttp surface that
replaced a private one (the health server's bound port)."""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer

from shared.compat import producer_idempotent, refresh_metadata
from shared.config import HttpSettings
from shared.runtime import HealthServer

UNREACHABLE = "127.0.0.1:9"  # nothing is started: these tests read attributes, not a broker


def test_pinned_versions_are_the_ones_checked() -> None:
    # the pins of pyproject.toml this file vouches for; widen them only with this test green
    aiokafka = tuple(int(x) for x in metadata.version("aiokafka").split(".")[:2])
    aiohttp = tuple(int(x) for x in metadata.version("aiohttp").split(".")[:1])
    assert (0, 12) <= aiokafka < (0, 15)
    assert aiohttp == (3,)


async def test_producer_idempotent_reads_the_transaction_manager() -> None:
    for idempotent in (True, False):
        producer = AIOKafkaProducer(bootstrap_servers=UNREACHABLE, enable_idempotence=idempotent)
        try:
            assert producer_idempotent(producer) is idempotent
        finally:
            await producer.stop()


async def test_refresh_metadata_reaches_the_consumers_client() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=UNREACHABLE)
    try:
        client = consumer._client  # what refresh_metadata awaits on: the attribute and its method
        assert isinstance(client, AIOKafkaClient)
        assert callable(client.force_metadata_update)
        # never bootstrapped, so the refresh cannot complete: it must be pending, not fail
        task = asyncio.ensure_future(refresh_metadata(consumer))
        done, _ = await asyncio.wait({task}, timeout=0.05)
        assert not done
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await consumer.stop()


class _Quiet:
    """The one Service method /healthz calls."""

    def health(self) -> dict[str, Any]:
        return {"service": "compat-test"}


async def test_health_server_reports_the_port_it_bound() -> None:
    server = HealthServer(_Quiet(), HttpSettings(host="127.0.0.1", port=0))  # type: ignore[arg-type]
    await server.start()
    try:
        assert server.port and server.port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 200") and b"compat-test" in answer
    finally:
        await server.stop()
