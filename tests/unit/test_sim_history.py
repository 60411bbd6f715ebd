"""The sim feeder's minute history: the minutes of exactly the ticks it generated, bounded, kept over restarts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.history import ALL_FIELDS
from services.feeder_gateway.feeders.sim.feeder import SimFeeder
from services.feeder_gateway.feeders.sim.history import SimMinutes
from services.feeder_gateway.feeders.sim.settings import SimSettings
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.symbols import Market

FAST = {"ticks_per_s_per_symbol": 1000.0, "interval_ms": 1.0}


def _feeder(**settings: float) -> SimFeeder:
    ctx = FeederContext(
        name="sim", market=Market.CN, emit_status=lambda s, d: None, metrics=FeederMetrics(ServiceMetrics("t"))
    )
    return SimFeeder(SimSettings(stale_after_s=None, **{**FAST, **settings}), ctx)


async def _run(feeder: SimFeeder, n: int) -> list[PriceUpdate]:
    got: list[PriceUpdate] = []
    gen = cast(AsyncGenerator[list[PriceUpdate], None], feeder.ticks())
    async with contextlib.aclosing(gen):
        async for batch in gen:
            got.extend(batch)
            if len(got) >= n:
                break
    return got


def _bars_of(ticks: list[PriceUpdate]) -> dict[datetime, tuple[float, float, float, float, float, float]]:
    """What the ticks make, minute by minute: o, h, l, c, traded size and turnover."""
    bars: dict[datetime, list[float]] = {}
    for t in ticks:
        start = t.timestamp.replace(second=0, microsecond=0)
        size = t.last_size or 0.0
        b = bars.get(start)
        if b is None:
            bars[start] = [t.price, t.price, t.price, t.price, size, size * t.price]
        else:
            b[1], b[2], b[3] = max(b[1], t.price), min(b[2], t.price), t.price
            b[4] += size
            b[5] += size * t.price
    return {k: (v[0], v[1], v[2], v[3], v[4], v[5]) for k, v in bars.items()}


async def test_history_is_the_minutes_of_the_generated_ticks() -> None:
    feeder = _feeder()
    feeder.set_symbols(frozenset({"600000.SH", "000001.SZ"}))
    ticks = await _run(feeder, 400)
    history = feeder.history()
    assert history is not None
    assert history.source == "sim" and history.fields == ALL_FIELDS
    now = datetime.now(UTC)
    got = await history.minute_bars(
        ["600000.SH", "000001.SZ", "UNKNOWN.SH"], now - timedelta(hours=1), now + timedelta(minutes=1)
    )
    assert got["UNKNOWN.SH"] == []
    for symbol in ("600000.SH", "000001.SZ"):
        want = _bars_of([t for t in ticks if t.symbol == symbol])
        bars = got[symbol]
        assert [b.start for b in bars] == sorted(want)
        for b in bars:
            o, h, low, c, v, a = want[b.start]
            assert (b.open, b.high, b.low, b.close, b.volume) == (o, h, low, c, v)
            assert b.amount == pytest.approx(a)
        # the window bounds: start inclusive, end exclusive
        first = bars[0].start
        assert (await history.minute_bars([symbol], first, first + timedelta(minutes=1)))[symbol] == bars[:1]
        assert (await history.minute_bars([symbol], first - timedelta(minutes=1), first))[symbol] == []


async def test_a_restart_keeps_the_minutes_and_merges_a_split_minute() -> None:
    feeder = _feeder()
    feeder.set_symbols(frozenset({"600000.SH"}))
    first = await _run(feeder, 100)
    second = await _run(feeder, 100)  # new walks: the price starts again from the seed's
    history = feeder.history()
    assert history is not None
    now = datetime.now(UTC)
    bars = (await history.minute_bars(["600000.SH"], now - timedelta(hours=1), now + timedelta(minutes=1)))["600000.SH"]
    assert sum(b.volume for b in bars) == sum(t.last_size or 0.0 for t in first + second)
    assert len({b.start for b in bars}) == len(bars)
    assert bars[-1].close == second[-1].price


async def test_unwanted_symbols_are_forgotten_and_the_store_is_bounded() -> None:
    feeder = _feeder()
    feeder.set_symbols(frozenset({"600000.SH", "000001.SZ"}))
    await _run(feeder, 50)
    feeder.set_symbols(frozenset({"600000.SH"}))
    await _run(feeder, 50)
    history = feeder.history()
    assert history is not None
    now = datetime.now(UTC)
    got = await history.minute_bars(["000001.SZ"], now - timedelta(hours=1), now + timedelta(minutes=1))
    assert got["000001.SZ"] == []

    store = SimMinutes("sim", keep=3, open_minute=lambda symbol: None)
    for i in range(10):
        store.add("X", (60.0 * i, 1.0, 1.0, 1.0, 1.0, 100.0, 100.0))
    bars = (await store.minute_bars(["X"], datetime.fromtimestamp(0, UTC), datetime.fromtimestamp(3600, UTC)))["X"]
    assert [b.start.timestamp() for b in bars] == [420.0, 480.0, 540.0]
    assert store._closed["X"].itemsize * len(store._closed["X"]) == 3 * 56  # 56 bytes a kept minute
    assert store.reaches(now - timedelta(minutes=3), now) and not store.reaches(now - timedelta(minutes=4), now)
