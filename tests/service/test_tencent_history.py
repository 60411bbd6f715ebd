"""Tencent minute history against its simulator: the market's truth, today only, throttles, outages, pacing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.history import (
    CLOSE_VOLUME_AMOUNT,
    HistoryConfigError,
    HistoryOutOfReach,
    HistoryUnavailable,
    MinuteBar,
)
from services.feeder_gateway.feeders.pacing import host_pacer
from services.feeder_gateway.feeders.tencent.feeder import TencentFeeder
from services.feeder_gateway.feeders.tencent.settings import TencentSettings
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.service.poller_helpers import FAST_POLLING
from tests.simulators.tencent import HK_TZ, TencentSimulator

FAST: dict[str, Any] = {**FAST_POLLING, "min_request_interval_s": 0.0, "ban_hold_s": 0.5, "ban_jitter_cap_s": 0.0}


def feeder(sim: TencentSimulator, **settings: Any) -> TencentFeeder:
    ctx = FeederContext(
        name="tencent",
        market=Market.HK,
        emit_status=lambda state, detail: None,
        metrics=FeederMetrics(ServiceMetrics("t")),
    )
    merged = {"base_url": sim.url, "history_base_url": sim.url, **FAST, **settings}
    return TencentFeeder(TencentSettings.model_validate(merged), ctx)


def hk(day: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=HK_TZ).astimezone(UTC)


def quote_day(sim: TencentSimulator) -> date:
    """The simulator's today: the HK date of the (delayed) quote time."""
    return (datetime.now(UTC) - timedelta(seconds=sim.quote_delay_s)).astimezone(HK_TZ).date()


def a_day(sim: TencentSimulator, code: str, day: date, base: float = 380.0) -> None:
    """Trades through one HK day: the pre-opening auction, minutes with gaps, after lunch."""
    sim.quote(code)
    for (hh, mm, ss), dp, size in (
        ((9, 20, 5), 0.0, 120_000),
        ((9, 30, 10), 0.2, 4_000),
        ((9, 30, 40), 0.4, 1_500),
        ((9, 31, 5), -0.2, 900),
        ((9, 35, 0), 0.6, 2_000),
        ((11, 59, 59), 1.0, 700),
        ((13, 0, 30), 0.8, 1_100),
    ):
        price = round(base + dp, 3)
        sim.record_trade(code, price, size, size * price, hk(day, hh, mm, ss))


def equal_truth(
    bars: list[MinuteBar],
    truth: dict[datetime, tuple[float, float, float, float, float, float]],
    lo: datetime,
    hi: datetime,
) -> None:
    """Close, volume and amount as the market made them; open = high = low = close."""
    want = {t: v for t, v in truth.items() if lo <= t < hi}
    assert [b.start for b in bars] == sorted(want)
    for b in bars:
        _o, _h, _l, c, v, a = want[b.start]
        assert (b.open, b.high, b.low, b.close, b.volume) == (c, c, c, c, v), b.start
        assert b.amount == pytest.approx(a, abs=0.01)


@pytest.fixture
async def sim() -> AsyncIterator[TencentSimulator]:
    async with TencentSimulator() as s:
        yield s


async def test_minutes_equal_the_markets_truth_close_volume_amount(sim: TencentSimulator) -> None:
    day = quote_day(sim)
    a_day(sim, "r_hk00700", day)
    h = feeder(sim).history()
    assert h is not None and h.fields == CLOSE_VOLUME_AMOUNT and h.max_symbols_per_request == 1
    lo, hi = hk(day, 9, 0), hk(day, 16, 10)
    got = await h.minute_bars(["00700.HK", "00005.HK", "600000.SH"], lo, hi)
    assert set(got) == {"00700.HK", "00005.HK"}  # the CN symbol has no Tencent HK code
    assert got["00005.HK"] == []  # known, never traded
    truth = sim.truth("00700.HK")
    equal_truth(got["00700.HK"], truth, lo, hi)
    assert got["00700.HK"][0].start == hk(day, 9, 20) and got["00700.HK"][0].volume == 120_000
    assert sim.history_requests[0][0] == "hk00700"
    assert sim.requests == []  # no quote request: the history has its own path
    lo2, hi2 = hk(day, 9, 30), hk(day, 9, 36)
    inner = (await h.minute_bars(["00700.HK"], lo2, hi2))["00700.HK"]
    equal_truth(inner, truth, lo2, hi2)
    assert [b.start for b in inner] == [hk(day, 9, 30), hk(day, 9, 31), hk(day, 9, 35)]


async def test_today_only(sim: TencentSimulator) -> None:
    day = quote_day(sim)
    a_day(sim, "r_hk00700", day)
    h = feeder(sim).history()
    assert h is not None
    now = datetime.now(UTC)
    assert h.reaches(hk(day, 0, 0), now)
    assert not h.reaches(hk(day, 0, 0) - timedelta(seconds=1), now)
    yesterday = day - timedelta(days=1)
    with pytest.raises(HistoryOutOfReach, match="only the minutes of"):
        await h.minute_bars(["00700.HK"], hk(yesterday, 9, 0), hk(yesterday, 16, 10))
    tomorrow = day + timedelta(days=1)
    assert (await h.minute_bars(["00700.HK"], hk(tomorrow, 9, 0), hk(tomorrow, 16, 10)))["00700.HK"] == []


async def test_the_tape_trades_while_no_client_polls() -> None:
    async with TencentSimulator(tape_interval_s=0.02) as sim:
        sim.quote("r_hk00700")
        quiet = sim.quotes["r_hk00700"].time[11:16] in {f"09:{m}" for m in range(21, 30)}
        first = sim.quotes["r_hk00700"].last
        await eventually(
            lambda: sim.quotes["r_hk00700"].last != first and (quiet or bool(sim.truth("00700.HK"))), 5, what="tape"
        )
        assert sim.requests == []
        h = feeder(sim).history()
        assert h is not None
        at = datetime.now(UTC) - timedelta(seconds=sim.quote_delay_s)
        current = at.replace(second=0, microsecond=0)
        lo = current - timedelta(minutes=10)
        equal_truth((await h.minute_bars(["00700.HK"], lo, current))["00700.HK"], sim.truth("00700.HK"), lo, current)


async def test_outages_and_throttles_are_unavailable(sim: TencentSimulator) -> None:
    day = quote_day(sim)
    a_day(sim, "r_hk00700", day)
    f = feeder(sim)
    h = f.history()
    assert h is not None
    lo, hi = hk(day, 9, 0), hk(day, 16, 10)
    sim.history_outage = "http"
    with pytest.raises(HistoryUnavailable, match="HTTP 503"):
        await h.minute_bars(["00700.HK"], lo, hi)
    sim.history_outage = "code"
    with pytest.raises(HistoryUnavailable, match="code=-1"):
        await h.minute_bars(["00700.HK"], lo, hi)
    sim.history_outage = "reset"
    with pytest.raises(HistoryUnavailable, match="minute query"):
        await h.minute_bars(["00700.HK"], lo, hi)
    with pytest.raises(HistoryUnavailable, match="resets in a row") as ban:  # the second in a row: a ban
        await h.minute_bars(["00700.HK"], lo, hi)
    assert ban.value.retry_after_s == 0.5
    sim.history_outage = None
    held = time.monotonic()
    await host_pacer(sim.url, 0.0).wait()  # the quote host's pacer: live polls wait the ban out too
    assert time.monotonic() - held >= 0.4
    equal_truth((await h.minute_bars(["00700.HK"], lo, hi))["00700.HK"], sim.truth("00700.HK"), lo, hi)
    sim.history_rate_limit = 1
    with pytest.raises(HistoryUnavailable, match="429") as throttled:
        await h.minute_bars(["00700.HK", "00700.HK"], lo, hi)
    assert throttled.value.retry_after_s == 1.0 and sim.throttled == 1
    sim.ban(0.3)
    with pytest.raises(HistoryUnavailable, match="banned: HTTP 403"):
        await h.minute_bars(["00700.HK"], lo, hi)


async def test_a_wrong_history_url_is_a_configuration_error(sim: TencentSimulator) -> None:
    h = feeder(sim, history_base_url=sim.url + "/nowhere").history()
    assert h is not None
    now = datetime.now(UTC)
    with pytest.raises(HistoryConfigError, match="history_base_url"):
        await h.minute_bars(["00700.HK"], now - timedelta(minutes=5), now)


async def test_a_live_poll_is_not_delayed_by_a_history_fetch(sim: TencentSimulator) -> None:
    day = quote_day(sim)
    symbols = [f"{700 + i:05d}.HK" for i in range(12)]
    for sym in symbols:
        a_day(sim, f"r_hk{sym[:5]}", day)
    interval, spacing = 0.3, 0.05
    f = feeder(sim, poll_interval_s=interval, min_request_interval_s=spacing)
    f.set_symbols(frozenset(symbols[:2]))
    ticks: list[PriceUpdate] = []
    before = len(sim.requests)

    async def pump() -> None:
        gen = f.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                ticks.extend(batch)

    task = asyncio.create_task(pump(), name="tencent-history-test-pump")
    try:
        await eventually(lambda: len(sim.requests) > before, 5, what="first poll")
        started = time.monotonic()
        h = f.history()
        assert h is not None
        got = await h.minute_bars(symbols, hk(day, 9, 0), hk(day, 16, 10))
        took = time.monotonic() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert all(got[s] for s in symbols)
    history = [at for _, at in sim.history_requests]
    assert len(history) == 12
    polls = [at for at in sim.request_times if started <= at <= started + took]
    assert len(polls) >= 2
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert max(gaps) <= interval + spacing + 0.1, gaps  # each poll within its interval
    assert min(b - a for a, b in itertools.pairwise(history)) >= 2 * spacing - 0.01
