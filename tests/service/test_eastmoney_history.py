"""EastMoney minute history against its simulator: the market's truth, kline → trends2, bans, outages, pacing."""

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
from services.feeder_gateway.feeders.eastmoney.feeder import EastMoneyPollFeeder
from services.feeder_gateway.feeders.eastmoney.history import EastMoneyHistory
from services.feeder_gateway.feeders.eastmoney.request import pacer_for
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyPollSettings
from services.feeder_gateway.feeders.history import (
    HistoryConfigError,
    HistoryOutOfReach,
    HistoryUnavailable,
    MinuteBar,
)
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.sessions import is_trading_weekday, trading_day
from shared.symbols import MARKET_TIMEZONES, Market
from tests.helpers import eventually
from tests.simulators.eastmoney import KLINE_PATH, SNAPSHOT_PATH, TRENDS_PATH, EastMoneySimulator

FAST: dict[str, Any] = {
    "min_request_interval_s": 0.0,
    "request_jitter_s": 0.0,
    "ban_hold_s": 0.5,
    "ban_jitter_cap_s": 0.0,
    "timeout_s": 2.0,
    "history_timeout_s": 2.0,
    "poll_jitter_s": 0.0,
    "min_poll_gap_s": 0.0,
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.2,
}


def feeder(sim: EastMoneySimulator, market: Market = Market.CN, **settings: Any) -> EastMoneyPollFeeder:
    ctx = FeederContext(
        name="eastmoney_poll",
        market=market,
        emit_status=lambda state, detail: None,
        metrics=FeederMetrics(ServiceMetrics("test")),
    )
    merged = {"base_url": sim.url, "history_base_url": sim.url, **FAST, **settings}
    return EastMoneyPollFeeder(EastMoneyPollSettings.model_validate(merged), ctx)


def history_of(f: EastMoneyPollFeeder) -> EastMoneyHistory:
    h = f.history()
    assert isinstance(h, EastMoneyHistory)
    return h


def local(market: Market, day: date, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=MARKET_TIMEZONES[market]).astimezone(UTC)


def trade(sim: EastMoneySimulator, secid: str, at: datetime, price: int, lots: int) -> None:
    """One trade on the simulator's market (through the live path's update)."""
    q = sim.security(secid)
    assert q is not None
    unit = 100 if q["f13"] in (0, 1) else 1
    amount = lots * unit * price / 10 ** q["f59"]
    sim.update(secid, f2=price, f5=q["f5"] + lots, f6=q["f6"] + amount, f124=int(at.timestamp()))


def bars_equal_truth(
    bars: list[MinuteBar],
    truth: dict[datetime, tuple[float, float, float, float, float, float]],
    lo: datetime,
    hi: datetime,
) -> None:
    want = {t: v for t, v in truth.items() if lo <= t < hi}
    assert [b.start for b in bars] == sorted(want)
    for b in bars:
        o, h, low, c, v, a = want[b.start]
        assert (b.open, b.high, b.low, b.close, b.volume) == (o, h, low, c, v), b.start
        assert b.amount == pytest.approx(a, abs=0.01)


def a_cn_day(sim: EastMoneySimulator, secid: str, day: date, base: int = 1050) -> None:
    """Trades through one CN day: the opening auction, continuous minutes with gaps, the close."""
    trade(sim, secid, local(Market.CN, day, 9, 25), base, 3061)  # opening call auction
    for mm, ss, dp, lots in ((30, 10, 1, 120), (30, 50, 3, 80), (31, 5, -2, 45), (33, 59, 0, 10), (34, 0, 4, 7)):
        trade(sim, secid, local(Market.CN, day, 9, mm, ss), base + dp, lots)
    trade(sim, secid, local(Market.CN, day, 11, 29, 30), base + 6, 33)
    trade(sim, secid, local(Market.CN, day, 13, 0, 1), base + 5, 21)
    trade(sim, secid, local(Market.CN, day, 14, 56, 40), base + 2, 18)
    trade(sim, secid, local(Market.CN, day, 15, 0, 0), base + 1, 5200)  # closing call auction


@pytest.fixture
async def sim() -> AsyncIterator[EastMoneySimulator]:
    async with EastMoneySimulator(heartbeat_interval_s=0.1) as s:
        yield s


async def test_kline_minutes_equal_the_markets_truth(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    a_cn_day(sim, "1.600000", today)
    truth = sim.truth("600000.SH")
    # the auctions sit where the live auction ticks fall: 09:25 and 15:00
    assert local(Market.CN, today, 9, 25) in truth and local(Market.CN, today, 15, 0) in truth
    h = history_of(feeder(sim))
    lo, hi = local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30)
    got = await h.minute_bars(["600000.SH", "12345.SH"], lo, hi)  # the second has no secid
    assert set(got) == {"600000.SH"}
    bars_equal_truth(got["600000.SH"], truth, lo, hi)
    assert h.last_endpoints == {"600000.SH": "kline"}
    assert sim.requested(KLINE_PATH) == [("1.600000",)] and not sim.requested(TRENDS_PATH)
    params = sim.requests[-1].params
    assert (params["klt"], params["fqt"], params["beg"], params["end"]) == ("1", "0", *[today.strftime("%Y%m%d")] * 2)
    # a window inside the day: bounds are minute starts, end exclusive
    lo2, hi2 = local(Market.CN, today, 9, 30), local(Market.CN, today, 9, 34)
    inner = (await h.minute_bars(["600000.SH"], lo2, hi2))["600000.SH"]
    bars_equal_truth(inner, truth, lo2, hi2)
    assert [b.start for b in inner] == [lo2, lo2 + timedelta(minutes=1), lo2 + timedelta(minutes=3)]


async def test_hk_shares_and_the_pre_opening_auction(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.HK, datetime.now(UTC))
    trade(sim, "116.00700", local(Market.HK, today, 9, 20, 5), 380_200, 120_000)
    trade(sim, "116.00700", local(Market.HK, today, 9, 30, 1), 380_600, 4_000)
    trade(sim, "116.00700", local(Market.HK, today, 15, 59, 59), 381_000, 2_500)
    h = history_of(feeder(sim, Market.HK))
    lo, hi = local(Market.HK, today, 9, 0), local(Market.HK, today, 16, 10)
    bars = (await h.minute_bars(["00700.HK"], lo, hi))["00700.HK"]
    bars_equal_truth(bars, sim.truth("00700.HK"), lo, hi)
    assert bars[0].start == local(Market.HK, today, 9, 20) and bars[0].volume == 120_000


async def test_trends2_answers_when_kline_is_down_or_does_not_reach(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    a_cn_day(sim, "0.000001", today, base=1200)
    truth = sim.truth("000001.SZ")
    h = history_of(feeder(sim))
    lo, hi = local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30)
    for outage in ("http", "rc", "reset"):
        sim.history_outage[KLINE_PATH] = outage
        bars = (await h.minute_bars(["000001.SZ"], lo, hi))["000001.SZ"]
        bars_equal_truth(bars, truth, lo, hi)
        assert h.last_endpoints["000001.SZ"] == "trends2", outage
    assert [r.params.get("ndays") for r in sim.requests if r.path == TRENDS_PATH] == ["1", "1", "1"]
    sim.history_outage.clear()
    sim.kline_days = 0  # kline answers, without a line of the day
    bars_equal_truth((await h.minute_bars(["000001.SZ"], lo, hi))["000001.SZ"], truth, lo, hi)
    assert h.last_endpoints["000001.SZ"] == "trends2"
    sim.kline_days = None
    await h.minute_bars(["000001.SZ"], lo, hi)
    assert h.last_endpoints["000001.SZ"] == "kline"


def previous_trading_day(day: date) -> date:
    day -= timedelta(days=1)
    while not is_trading_weekday(Market.CN, day):
        day -= timedelta(days=1)
    return day


async def test_an_earlier_day_without_kline_is_unavailable_or_out_of_reach(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    before = previous_trading_day(today)
    a_cn_day(sim, "1.600036", before, base=3300)
    a_cn_day(sim, "1.600036", today, base=3400)
    h = history_of(feeder(sim))
    lo, hi = local(Market.CN, before, 9, 0), local(Market.CN, before, 15, 30)
    bars_equal_truth((await h.minute_bars(["600036.SH"], lo, hi))["600036.SH"], sim.truth("600036.SH"), lo, hi)
    sim.history_outage[KLINE_PATH] = "http"
    with pytest.raises(HistoryUnavailable, match="no open"):
        await h.minute_bars(["600036.SH"], lo, hi)  # trends2 has that day, but without opens
    sim.history_outage.clear()
    sim.kline_days = 1  # kline keeps only today
    with pytest.raises(HistoryOutOfReach, match="no open"):
        await h.minute_bars(["600036.SH"], lo, hi)
    # today's window is fine from kline still
    lo, hi = local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30)
    bars_equal_truth((await h.minute_bars(["600036.SH"], lo, hi))["600036.SH"], sim.truth("600036.SH"), lo, hi)
    assert h.reaches(datetime.now(UTC) - timedelta(days=6), datetime.now(UTC))
    assert not h.reaches(datetime.now(UTC) - timedelta(days=8), datetime.now(UTC))


async def test_both_endpoints_down_is_unavailable(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    a_cn_day(sim, "1.600000", today)
    h = history_of(feeder(sim))
    sim.history_outage = {KLINE_PATH: "http", TRENDS_PATH: "rc"}
    with pytest.raises(HistoryUnavailable, match=r"kline: HTTP 502.*trends2: .*rc=102"):
        await h.minute_bars(["600000.SH"], local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30))


async def test_a_ban_holds_the_hosts_pacer_live_requests_included(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    a_cn_day(sim, "1.600000", today)
    f = feeder(sim)
    h = history_of(f)
    lo, hi = local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30)
    sim.ban(duration_s=0.3)  # answered 403 with an HTML page, as the rate limit does
    with pytest.raises(HistoryUnavailable, match="banned") as caught:
        await h.minute_bars(["600000.SH"], lo, hi)
    assert caught.value.retry_after_s == 0.5
    held = time.monotonic()
    await pacer_for(f.settings).wait()  # a live request to the host waits the hold out
    assert time.monotonic() - held >= 0.4
    bars_equal_truth((await h.minute_bars(["600000.SH"], lo, hi))["600000.SH"], sim.truth("600000.SH"), lo, hi)
    # the rate limit bans by resets too: two in a row before an answer are a ban
    sim.ban(duration_s=0.3, style="reset")
    with pytest.raises(HistoryUnavailable, match="resets in a row"):
        await h.minute_bars(["600000.SH"], lo, hi)
    sim.ban_style = "403"
    # asking too fast trips the simulator's rate limit: the history says so, never hammers on
    sim.unban()
    sim.rate_limit_requests = 1
    with pytest.raises(HistoryUnavailable):
        await h.minute_bars(["600000.SH", "600000.SH", "600000.SH"], lo, hi)
    assert sim.bans >= 3


async def test_a_wrong_history_url_is_a_configuration_error(sim: EastMoneySimulator) -> None:
    h = history_of(feeder(sim, history_base_url=sim.url + "/nowhere"))
    now = datetime.now(UTC)
    with pytest.raises(HistoryConfigError, match="history_base_url"):
        await h.minute_bars(["600000.SH"], now - timedelta(minutes=5), now)


async def test_the_tape_trades_while_no_client_is_connected() -> None:
    async with EastMoneySimulator(tick_interval_s=0.02) as sim:
        sim.security("1.600000")  # known, never streamed
        await eventually(lambda: len(sim.requests) == 0 and sim.truth("600000.SH"), 5, what="tape trades")
        h = history_of(feeder(sim))
        now = datetime.now(UTC)
        current = now.replace(second=0, microsecond=0)
        bars = (await h.minute_bars(["600000.SH"], now - timedelta(minutes=10), current))["600000.SH"]
        bars_equal_truth(bars, sim.truth("600000.SH"), now - timedelta(minutes=10), current)


async def test_a_live_poll_is_not_delayed_by_a_history_fetch(sim: EastMoneySimulator) -> None:
    today = trading_day(Market.CN, datetime.now(UTC))
    symbols = [f"{600000 + i}.SH" for i in range(12)]
    for sym in symbols:
        a_cn_day(sim, f"1.{sym[:6]}", today)
    interval, spacing = 0.3, 0.05
    f = feeder(sim, poll_interval_s=interval, min_request_interval_s=spacing)
    f.set_symbols(frozenset(symbols[:2]))
    ticks: list[PriceUpdate] = []

    async def pump() -> None:
        gen = f.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                ticks.extend(batch)

    task = asyncio.create_task(pump(), name="eastmoney-history-test-pump")
    try:
        await eventually(lambda: len(ticks) >= 2, 5, what="first poll")
        started = time.monotonic()
        got = await history_of(f).minute_bars(symbols, local(Market.CN, today, 9, 0), local(Market.CN, today, 15, 30))
        took = time.monotonic() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert all(got[s] for s in symbols)
    polls = [r.at for r in sim.requests if r.path == SNAPSHOT_PATH and started <= r.at <= started + took]
    history = [r.at for r in sim.requests if r.path == KLINE_PATH]
    assert len(history) == 12 and len(polls) >= 2
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    # each poll within its interval (plus the pacer's spacing and scheduling slack)
    assert max(gaps) <= interval + spacing + 0.1, gaps
    # and the history took at most half the slots: background requests are spaced 2 x
    assert min(b - a for a, b in itertools.pairwise(history)) >= 2 * spacing - 0.01
