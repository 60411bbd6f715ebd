"""Alpaca's minute history against its simulator: the bars equal the tape's truth, pages,
429, outages, the recent-SIP refusal, and the simulator's own history protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.alpaca.history import AlpacaHistory
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.history import (
    HistoryConfigError,
    HistoryUnavailable,
    MinuteBar,
    MinuteBars,
    minute_floor,
)
from shared.dto import PriceUpdate, utcnow
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.simulators.alpaca import RECENT_SIP_MESSAGE, AlpacaSimulator, MinuteTruth

MINUTE = timedelta(minutes=1)
FAST = {
    "key": "test-key",
    "secret": "test-secret",
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.2,
    "connect_timeout_s": 2.0,
    "auth_timeout_s": 2.0,
    "close_timeout_s": 0.5,
    "history_requests_per_min": 6000.0,
    "history_timeout_s": 5.0,
}


def context(metrics: ServiceMetrics | None = None) -> FeederContext:
    metrics = metrics or ServiceMetrics("test")
    return FeederContext("alpaca", Market.US, lambda state, detail: None, FeederMetrics(metrics))


def feeder(sim: AlpacaSimulator, metrics: ServiceMetrics | None = None, **settings: Any) -> AlpacaFeeder:
    merged = {"url": sim.url, "history_url": sim.history_url, **FAST, **settings}
    return AlpacaFeeder(AlpacaSettings.model_validate(merged), context(metrics))


def history_of(sim: AlpacaSimulator, **settings: Any) -> AlpacaHistory:
    history = feeder(sim, **settings).history()
    assert isinstance(history, AlpacaHistory)
    return history


def assert_equals_truth(bars: list[MinuteBar], truth: dict[datetime, MinuteTruth]) -> None:
    """o, h, l, c, v exactly; the amount within 1e-6 (the provider's VWAP is rounded)."""
    assert [b.start for b in bars] == sorted(truth), "the same minutes"
    for b in bars:
        t = truth[b.start]
        assert (b.open, b.high, b.low, b.close, b.volume) == (t.open, t.high, t.low, t.close, t.volume), b.start
        assert b.amount == pytest.approx(t.amount, rel=1e-6), b.start


def window(truth: dict[datetime, MinuteTruth], start: datetime, end: datetime) -> dict[datetime, MinuteTruth]:
    return {m: t for m, t in truth.items() if start <= m < end}


def z(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%S}Z"


def now_minute() -> datetime:
    return minute_floor(utcnow())


async def clear_of_a_minute_end() -> datetime:
    """The current minute, once at least 5 s of it are left: a fast test that counts minutes
    back from now then sees no minute end."""
    await eventually(lambda: utcnow().second < 55, timeout_s=6.0, what="a minute with 5 s left")
    return now_minute()


def split_truth(
    sim: AlpacaSimulator, sym: str, start: datetime, end: datetime, iex_from: datetime
) -> dict[datetime, MinuteTruth]:
    """SIP minutes before ``iex_from``, IEX minutes from it on."""
    return {**window(sim.truth(sym, "sip"), start, iex_from), **window(sim.truth(sym, "iex"), iex_from, end)}


@contextlib.asynccontextmanager
async def streaming(f: AlpacaFeeder, symbols: set[str]) -> AsyncIterator[list[PriceUpdate]]:
    ticks: list[PriceUpdate] = []
    f.set_symbols(frozenset(symbols))

    async def consume() -> None:
        gen = f.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                ticks.extend(batch)

    task = asyncio.create_task(consume(), name="test.alpaca.consume")
    try:
        yield ticks
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_minute_bars_of_a_live_stream_equal_the_trades_it_streamed() -> None:
    symbols = {"AAPL": "AAPL", "MSFT": "MSFT", "BRK-B": "BRK.B"}
    async with AlpacaSimulator() as sim:
        f = feeder(sim, channels=["trades"])
        async with streaming(f, set(symbols)) as ticks:
            await eventually(lambda: {t.symbol for t in ticks} == set(symbols), what="trades of each symbol")
            began = {sym: minute_floor(min(t.timestamp for t in ticks if t.symbol == sym)) for sym in symbols}
            first_minute = min(began.values())
            # the minute each symbol's stream began in must end before the history has it
            await eventually(
                lambda: utcnow() >= max(began.values()) + MINUTE + timedelta(seconds=0.5),
                timeout_s=65.0,
                what="the first minutes' end",
            )
            history = f.history()
            assert history is not None
            until = await clear_of_a_minute_end()
            bars = await history.minute_bars(list(symbols), first_minute, until)
        assert sorted(bars) == sorted(symbols)
        for sym, wire in symbols.items():
            truth = window(sim.truth(wire, "iex"), first_minute, until)
            assert truth, f"{sym}: trades in the ended minutes"
            assert_equals_truth(bars[sym], truth)
            # the truth is the stream: the feeder's trades of the first minute make its bar
            streamed = [t for t in ticks if t.symbol == sym and minute_floor(t.timestamp) == began[sym]]
            bar = bars[sym][0]
            assert bar.start == began[sym]
            assert sum(t.last_size or 0.0 for t in streamed) == bar.volume
            assert (streamed[0].price, streamed[-1].price) == (bar.open, bar.close)
            assert max(t.price for t in streamed) == bar.high and min(t.price for t in streamed) == bar.low
        assert sim.history.answered(200, feed="iex") and not sim.history.answered(None, feed="sip")


async def test_pages_across_symbols_until_the_token_is_null() -> None:
    wire = {"AAPL": "AAPL", "MSFT": "MSFT", "BRK-B": "BRK.B"}
    async with AlpacaSimulator() as sim:
        now = await clear_of_a_minute_end()
        sim.backfill(wire.values(), minutes=30, per_minute=8, quiet=(3, 17))  # two minutes without a trade
        history = history_of(sim, history_page_limit=7)
        start = now - 30 * MINUTE + timedelta(seconds=20)  # the minute 30 back starts before start
        end = now - 2 * MINUTE - timedelta(seconds=10)  # the last minute is 3 back, and quiet
        bars = await history.minute_bars(list(wire), start, end)
        assert isinstance(bars, MinuteBars) and bars.note is None
        total = 0
        for sym, w in wire.items():
            truth = window(sim.truth(w, "iex"), now - 29 * MINUTE, now - 2 * MINUTE)
            assert len(truth) == 25  # minutes 29..4 back, without the quiet 17
            assert_equals_truth(bars[sym], truth)
            total += len(truth)
        log = sim.history.answered(200)
        assert len(log) == -(-total // 7) and sum(r.bars for r in log) == total
        assert all(r.bars <= 7 and r.params["limit"] == "7" for r in log)
        assert "page_token" not in log[0].params and all("page_token" in r.params for r in log[1:])
        assert {r.params["symbols"] for r in log} == {"AAPL,BRK.B,MSFT"}


async def test_429_is_unavailable_until_the_reset_and_the_next_call_waits_it_out() -> None:
    async with AlpacaSimulator(history_rate_per_min=2, history_rate_window_s=1.0) as sim:
        now = await clear_of_a_minute_end()
        sim.backfill(["AAPL"], minutes=5)
        history = history_of(sim)
        start, end = now - 5 * MINUTE, now
        truth = window(sim.truth("AAPL", "iex"), start, end)
        for _ in range(2):
            assert_equals_truth((await history.minute_bars(["AAPL"], start, end))["AAPL"], truth)
        with pytest.raises(HistoryUnavailable, match="429") as err:
            await history.minute_bars(["AAPL"], start, end)
        assert err.value.retry_after_s is not None and 0.0 < err.value.retry_after_s <= 2.0
        refused = sim.history.answered(429)
        assert len(refused) == 1
        # the caller retries after retry_after_s; the host's pacer holds every request until then too
        asked = time.monotonic()
        assert_equals_truth((await history.minute_bars(["AAPL"], start, end))["AAPL"], truth)
        assert time.monotonic() - asked >= err.value.retry_after_s - 0.05
        assert len(sim.history.answered(429)) == 1


async def test_an_outage_slow_answers_and_a_refused_connection_are_unavailable() -> None:
    async with AlpacaSimulator() as sim:
        now = await clear_of_a_minute_end()
        sim.backfill(["AAPL"], minutes=3)
        history = history_of(sim, history_timeout_s=0.3)
        start, end = now - 3 * MINUTE, now
        for status in (500, 503):
            sim.history_down = status
            with pytest.raises(HistoryUnavailable, match=f"HTTP {status}"):
                await history.minute_bars(["AAPL"], start, end)
        sim.history_down = None
        sim.history.slow_s = 1.0
        with pytest.raises(HistoryUnavailable, match="TimeoutError"):
            await history.minute_bars(["AAPL"], start, end)
        sim.history.slow_s = 0.0
        assert len((await history.minute_bars(["AAPL"], start, end))["AAPL"]) == 3
        url = sim.history_url
    closed = AlpacaHistory(AlpacaSettings.model_validate({**FAST, "history_url": url}), context(), "iex")
    with pytest.raises(HistoryUnavailable, match="request failed"):
        await closed.minute_bars(["AAPL"], start, end)


async def test_an_answer_over_the_body_cap_fails_and_is_counted() -> None:
    symbols = [f"S{i:02d}" for i in range(10)]
    metrics = ServiceMetrics("test")
    async with AlpacaSimulator() as sim:
        sim.backfill(symbols, minutes=80, per_minute=4)  # about 90 KB of IEX bars
        history = feeder(sim, metrics, history_max_body_bytes=65_536).history()
        assert history is not None
        with pytest.raises(HistoryUnavailable, match="history_max_body_bytes"):
            await history.minute_bars(symbols, now_minute() - 80 * MINUTE, now_minute())
        labels = {"source": "alpaca", "reason": "body_too_large"}
        assert metrics.registry.get_sample_value("livedata_feeder_malformed_total", labels) == 1.0


async def test_a_wrong_key_is_a_configuration_error_without_the_secret() -> None:
    async with AlpacaSimulator() as sim:
        history = history_of(sim, secret="not-the-secret")
        with pytest.raises(HistoryConfigError) as err:
            await history.minute_bars(["AAPL"], now_minute() - MINUTE, now_minute())
        assert "HTTP 403" in str(err.value) and "sources.alpaca.key" in str(err.value)
        assert "not-the-secret" not in str(err.value) and "test-key" not in str(err.value)


async def test_recent_sip_is_refused_on_the_free_plan_and_comes_from_iex(caplog: pytest.LogCaptureFixture) -> None:
    async with AlpacaSimulator() as sim:  # the plan: iex and delayed_sip, no real-time sip
        now = await clear_of_a_minute_end()
        sim.backfill(["AAPL", "MSFT"], minutes=40, per_minute=6)
        history = history_of(sim, feed="delayed_sip")  # the history asks for sip
        assert history.feed == "sip"
        start, end = now - 40 * MINUTE, now
        with caplog.at_level(logging.WARNING):
            bars = await history.minute_bars(["AAPL", "MSFT"], start, end)
            again = await history.minute_bars(["AAPL", "MSFT"], start, end)
        refused = sim.history.answered(403)
        assert len(refused) == 1 and refused[0].params["feed"] == "sip"  # later calls split at once
        answered = sim.history.answered(200)
        assert [r.params["feed"] for r in answered] == ["sip", "iex", "sip", "iex"]
        iex_from = datetime.fromisoformat(answered[1].params["start"])
        assert iex_from == minute_floor(now - timedelta(minutes=16))  # sip up to 16 minutes back
        assert bars.note is not None and "IEX-only" in bars.note and f"{iex_from:%H:%M}" in bars.note
        assert again.note == bars.note
        for sym in ("AAPL", "MSFT"):
            expected = split_truth(sim, sym, start, end, iex_from)
            assert len(expected) == 40
            assert_equals_truth(bars[sym], expected)
            assert_equals_truth(again[sym], expected)
            # iex is a part of the tape: its minutes are not the consolidated ones
            sip_volume = sum(t.volume for t in window(sim.truth(sym, "sip"), iex_from, end).values())
            assert sum(t.volume for m, t in expected.items() if m >= iex_from) < sip_volume
        assert sum("no SIP history of the last 15 minutes" in r.getMessage() for r in caplog.records) == 1


async def test_simulator_history_protocol() -> None:
    async with AlpacaSimulator() as sim, aiohttp.ClientSession() as http:
        now = await clear_of_a_minute_end()
        sim.backfill(["AAPL"], minutes=3, per_minute=2)
        url = sim.history_url + "/v2/stocks/bars"
        auth = {"APCA-API-KEY-ID": "test-key", "APCA-API-SECRET-KEY": "test-secret"}
        m1, m0 = now - 2 * MINUTE, now - MINUTE

        async def get(params: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
            async with http.get(url, params=params, headers=auth if headers is None else headers) as resp:
                return resp.status, await resp.json(), resp.headers

        base = {"symbols": "AAPL,NONE", "timeframe": "1Min", "feed": "iex"}
        status, body, _ = await get(base, headers={})
        assert (status, body) == (401, {"message": "unauthorized."})
        status, body, headers = await get({**base, "start": z(m1), "end": z(m0)})
        assert status == 200 and list(body["bars"]) == ["AAPL"] and body["next_page_token"] is None
        assert [b["t"] for b in body["bars"]["AAPL"]] == [z(m1), z(m0)]  # end inclusive
        assert set(body["bars"]["AAPL"][0]) == {"t", "o", "h", "l", "c", "v", "n", "vw"}
        assert headers["X-RateLimit-Limit"] == "200" and int(headers["X-RateLimit-Remaining"]) == 199
        assert int(headers["X-RateLimit-Reset"]) >= time.time()
        # the minute in progress is never served, even when it has trades
        sim.history.advance("AAPL")
        status, body, _ = await get({**base, "start": z(m1)})
        assert [b["t"] for b in body["bars"]["AAPL"]][-1] == z(m0)
        for bad in ({"timeframe": "1Hour"}, {"limit": "10001"}, {"feed": "otc"}, {"page_token": "%%%"}, {"start": "x"}):
            status, body, _ = await get({**base, **bad})
            assert status == 400 and body["message"], bad
        status, body, _ = await get({**base, "feed": "sip"})  # end: now, within 15 minutes
        assert (status, body) == (403, {"message": RECENT_SIP_MESSAGE})
        status, body, _ = await get({**base, "feed": "sip", "end": z(utcnow() - timedelta(minutes=15, seconds=5))})
        assert status == 200


async def test_the_tape_trades_on_while_the_stream_is_down() -> None:
    async with AlpacaSimulator() as sim:
        f = feeder(sim, channels=["trades"])
        async with streaming(f, {"AAPL"}) as ticks:
            await eventually(lambda: ticks, what="ticks")
            n = len(ticks)
            sim.go_down(for_s=1.0)
            await eventually(lambda: not sim.sessions and sim.refused_while_down, what="upgrades refused while down")
            await eventually(lambda: not sim.down and len(ticks) > n + 5, timeout_s=5.0, what="ticks after the drop")
        assert len(sim.all_sessions) == 2 and sim.refused_while_down >= 1
        last_before, first_after = max(t.timestamp for t in ticks[:n]), ticks[-5].timestamp
        streamed = {t.timestamp for t in ticks}
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        iex = [epoch + timedelta(microseconds=m["t"] // 1000) for m in sim.tape_since(0) if m["x"] == "V"]
        missed = [t for t in iex if last_before < t < first_after and t not in streamed]
        assert len(missed) >= 10  # the tape traded through the drop: the hole is in the truth, not the stream
