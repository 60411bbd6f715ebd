"""The stores over TLS: Debian's redis-server 7 (``--tls-port``) and clickhouse-server 18.16
(``<tcp_port_secure>``) with a throwaway CA, reached through the code the services run.

- Redis: ``shared.coordination.redis_client`` on ``rediss://...?ssl_ca_certs=<CA>`` takes a
  lease and a once-only claim (what the datamanager and the tasktimer do); the server has
  no plain-text port, so it cannot have gone in clear.
- ClickHouse: the datamanager's ``ClickHouseBars`` on ``clickhouses://...?ca_certs=<CA>``
  (and the ``?secure=true&verify=true`` form) stores a bar and reads it back.
- A CA that did not sign the server's certificate fails the handshake with the
  certificate error; the password in the URL appears in no error and no log line.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.exceptions
from asynch import Connection

from services.datamanager.bars import BarRow
from services.datamanager.barstore import ClickHouseBars
from services.ops.servers import ClickHouseServer, RedisServer
from services.ops.servers.base import TLSFiles
from shared.coordination import ClaimState, RedisClaims, RedisLease, redis_client
from tests.plugins.tls import make_ca

PASSWORD = "tls-test-Pw-4f1c"  # in the wrong-CA URLs: it must show up nowhere


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def server_tls(tls_dir: Path) -> TLSFiles:
    return make_ca(tls_dir, "stores")


@pytest.fixture(scope="module")
def other_ca(tls_dir: Path) -> Path:
    """A CA that did not sign the servers' certificate."""
    return make_ca(tls_dir, "other").ca


@pytest.fixture(scope="module")
def redis_tls(server_tls: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(log_path=tmp_path_factory.mktemp("redis-tls") / "redis.log", tls=server_tls) as server:
        yield server


@pytest.fixture(scope="module")
def clickhouse_tls(server_tls: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with ClickHouseServer(data_dir=tmp_path_factory.mktemp("clickhouse-tls"), tls=server_tls) as server:
        yield server


def _ca_query(name: str, ca: Path) -> str:
    return f"{name}={quote(str(ca), safe='/')}"


# -- Redis ------------------------------------------------------------------------------------


async def test_a_lease_and_a_claim_over_rediss(redis_tls: RedisServer) -> None:
    assert redis_tls.url.startswith("rediss://") and "ssl_ca_certs=" in redis_tls.url
    prefix = f"test:{uuid.uuid4().hex[:10]}"
    client = redis_client(redis_tls.url)
    try:
        lease = RedisLease(client, f"{prefix}:lease")
        assert await lease.acquire("a", 5)
        assert not await lease.acquire("b", 5)
        assert await lease.holder() == "a"
        claims = RedisClaims(client, f"{prefix}:c:")
        assert (await claims.claim("cmd-1", "a", 5)).state is ClaimState.CLAIMED
        assert (await claims.claim("cmd-1", "b", 5)).state is ClaimState.HELD
        await claims.complete("cmd-1", 60, "done")
        assert await claims.record("cmd-1") == "done"
        await lease.release("a")
        assert await lease.holder() is None
    finally:
        await client.aclose()


async def test_the_tls_redis_has_no_plain_text_port(redis_tls: RedisServer) -> None:
    client = redis_client(f"redis://{redis_tls.address}/0", timeout_s=1.0)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()


async def test_a_wrong_ca_fails_the_redis_handshake_without_the_password(
    redis_tls: RedisServer, other_ca: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rediss://livedata:{PASSWORD}@{redis_tls.address}/0?{_ca_query('ssl_ca_certs', other_ca)}"
    client = redis_client(url, timeout_s=2.0)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await RedisLease(client, "test:tls:lease").acquire("a", 5)
    finally:
        await client.aclose()
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert PASSWORD not in text and PASSWORD not in caplog.text
    assert url not in text


# -- ClickHouse --------------------------------------------------------------------------------


def _bar(day: date) -> BarRow:
    return BarRow(
        symbol="600000.SH",
        period="1m",
        start_ms=1_767_231_000_000,
        trading_day=day,
        open=10.0,
        high=10.5,
        low=9.9,
        close=10.2,
        volume=1200.0,
        amount=12_240.0,
        prev_close=9.8,
        source="test",
        last_tick_ms=1_767_231_059_000,
        tick_partition=0,
        tick_offset=42,
        cum_volume=1200.0,
        cum_amount=12_240.0,
    )


async def _drop(clickhouse: ClickHouseServer, database: str) -> None:
    conn = Connection(dsn=clickhouse.plain_url)
    await conn.connect()
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        await conn.close()


@pytest.mark.parametrize("form", ["clickhouses", "secure_query"])
async def test_bars_are_stored_and_read_over_tls(clickhouse_tls: ClickHouseServer, form: str) -> None:
    assert clickhouse_tls.tls is not None
    if form == "clickhouses":
        url = clickhouse_tls.secure_url
    else:
        ca = _ca_query("ca_certs", clickhouse_tls.tls.ca)
        url = f"clickhouse://default:@{clickhouse_tls.host}:{clickhouse_tls.tls_port}/default?secure=true&verify=true&{ca}"
    database = f"test_{uuid.uuid4().hex[:10]}"
    store = ClickHouseBars(url, database)
    day = date(2026, 1, 1)
    try:
        assert await store.start()
        store.add([_bar(day)])
        assert await store.flush()
        assert await store.read(day, "1m") == [_bar(day)]
        assert store.stored == 1 and store.failures == 0
    finally:
        await store.stop()
        await _drop(clickhouse_tls, database)


async def test_a_wrong_ca_fails_the_clickhouse_handshake_without_the_password(
    clickhouse_tls: ClickHouseServer, other_ca: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    where = f"{clickhouse_tls.host}:{clickhouse_tls.tls_port}"
    url = f"clickhouses://default:{PASSWORD}@{where}/default?{_ca_query('ca_certs', other_ca)}"
    store = ClickHouseBars(url, "never_created", timeout_s=2.0)
    try:
        assert not await store.start()
        with pytest.raises(Exception) as caught:
            await store.execute("SELECT 1")
    finally:
        await store.stop()
    cause = caught.value.__cause__
    assert "CERTIFICATE_VERIFY_FAILED" in str(cause), repr(caught.value)
    text = f"{caught.value} {caught.value!r} {cause!r}"
    assert PASSWORD not in text and PASSWORD not in caplog.text
    assert url not in text
    assert store.failures == 2 and not store.healthy
