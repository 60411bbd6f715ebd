"""A real ClickHouse server for the tests that need one, started on first use per session.

``CLICKHOUSE_URL`` names an existing server instead. Each test gets its own database
(``clickhouse_database``), dropped afterwards, so tests never see each other's bars.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from asynch import Connection

from services.ops.servers import ClickHouseServer
from tests.plugins.servers import session_server


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer | None]:
    """The session's ClickHouse process (None when ``CLICKHOUSE_URL`` names an external one)."""
    yield from session_server(
        "CLICKHOUSE_URL", lambda: ClickHouseServer(data_dir=tmp_path_factory.mktemp("clickhouse"))
    )


@pytest.fixture(scope="session")
def clickhouse_url(clickhouse_server: ClickHouseServer | None) -> str:
    return clickhouse_server.url if clickhouse_server is not None else os.environ["CLICKHOUSE_URL"]


@pytest.fixture
async def clickhouse_database(clickhouse_url: str) -> AsyncIterator[str]:
    """A database name of this test's own (created by the code under test), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    conn = Connection(dsn=clickhouse_url)
    await conn.connect()
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        await conn.close()
