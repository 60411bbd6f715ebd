"""A real Redis server for the tests that need one, started on first use per session.

``REDIS_URL`` names an existing server instead. Each test gets its own key prefix
(``redis_prefix``) so tests never see each other's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from services.ops.servers import RedisServer
from tests.plugins.servers import session_server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """The session's Redis process (None when ``REDIS_URL`` names an external one)."""
    yield from session_server("REDIS_URL", lambda: RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log"))


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return redis_server.url if redis_server is not None else os.environ["REDIS_URL"]


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client; the test's keys (``redis_prefix*``) are deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
