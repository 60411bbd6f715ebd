"""A slow application loses nothing: the client pauses fetching while its buffer is full
(Kafka keeps the data), and with ``conflate_prices`` keeps only the latest price per symbol
but every bar."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from shared.client import Lag, LiveDataClient
from shared.config import KafkaSettings
from shared.dto import Bar, Message, PriceUpdate
from shared.kafka import KafkaPublisher
from shared.topics import Topics
from tests.helpers import eventually

SYMBOLS = ["600000.SH", "00700.HK", "AAPL"]
BARS = 60  # per symbol
PRICES = 600  # per symbol
BUFFER = 50
PER_ITEM_S = 0.001  # the application's own work per update: slower than the feed
T0 = datetime(2025, 12, 31, 1, 30, tzinfo=UTC)


def feed() -> list[tuple[str, Message]]:
    """Per symbol: PRICES price updates with a bar after every PRICES / BARS of them."""
    out: list[tuple[str, Message]] = []
    every = PRICES // BARS
    for i in range(PRICES):
        for s in SYMBOLS:
            t = T0 + timedelta(seconds=i)
            out.append((s, PriceUpdate(symbol=s, price=10 + i / 100, timestamp=t, source="test", sequence=i + 1)))
            if (i + 1) % every == 0:
                start = T0 + timedelta(minutes=i // every)
                bar = Bar(symbol=s, period="1m", open=1, high=2, low=1, close=2, volume=i, timestamp=start, source="t")
                out.append((s, bar))
    return out


async def consume_slowly(client: LiveDataClient, lags: list[Lag]) -> list[PriceUpdate | Bar]:
    """Take updates with the application's own per-item work until the last bar of each symbol."""
    got: list[PriceUpdate | Bar] = []
    last_bars: set[str] = set()
    while last_bars != set(SYMBOLS):
        for item in await asyncio.wait_for(client.next_batch(max_items=10), 10):
            got.append(item)
            if isinstance(item, Bar) and item.volume == PRICES - 1:
                last_bars.add(item.symbol)
            await asyncio.sleep(PER_ITEM_S)  # the application's work, not a wait for a condition
        lags.append(client.lag)
    return got


@pytest.mark.parametrize("conflate", [False, True], ids=["every-update", "conflated"])
async def test_slow_application_gets_every_bar(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture, conflate: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="client")
    client = LiveDataClient(
        kafka_bootstrap, "p1", "slow", topics=topics, lease_s=None, buffer_size=BUFFER, conflate_prices=conflate
    )
    items = feed()
    async with client, KafkaPublisher(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test-feed") as pub:
        await client.subscribe(SYMBOLS)
        await pub.publish_many(topics.market_data, items)
        lags: list[Lag] = []
        got = await consume_slowly(client, lags)
        await eventually(lambda: client.lag.buffered == 0 and not client.lag.paused, what="buffer empty")

    bars: dict[str, list[int]] = defaultdict(list)
    prices: dict[str, list[int]] = defaultdict(list)
    for u in got:
        if isinstance(u, Bar):
            bars[u.symbol].append(int(u.volume))
        else:
            assert u.sequence is not None
            prices[u.symbol].append(u.sequence)
    every = PRICES // BARS
    for s in SYMBOLS:
        assert bars[s] == [every * (k + 1) - 1 for k in range(BARS)], f"bars of {s}"
        if conflate:
            assert prices[s] == sorted(set(prices[s])) and prices[s][-1] == PRICES, f"prices of {s}"
        else:
            assert prices[s] == list(range(1, PRICES + 1)), f"prices of {s}"
    assert client.dropped == 0
    most = max(lags, key=lambda lag: lag.buffered)
    lag_lines = [r for r in caplog.records if "application lagging" in r.getMessage()]
    n_prices = sum(len(p) for p in prices.values())
    print(
        f"\nconflate={conflate}: published {len(items)} ({BARS * len(SYMBOLS)} bars), received {len(got)}"
        f" ({n_prices} prices, {client.conflated} conflated); lag episodes {client.lag_episodes},"
        f" log lines {len(lag_lines)}, most buffered {most.buffered} (behind {most.behind_s:.2f}s,"
        f" unfetched {max(lag.unfetched for lag in lags)})"
    )
    assert max(lag.buffered for lag in lags) <= BUFFER
    if conflate:
        assert client.conflated > 0 and n_prices + client.conflated == PRICES * len(SYMBOLS)
    else:
        assert client.conflated == 0
        assert client.lag_episodes >= 1 and any(lag.paused for lag in lags)
        assert any(lag.unfetched > 0 for lag in lags)  # Kafka held what the client did not fetch
        assert len(lag_lines) == 1  # one line however many episodes (rate-limited)
