"""Recovery targets of the streaming feeders against their simulators, each under its market's watchdog.

Alpaca, EastMoney SSE and EastMoney poll: a drop → every symbol ticking again within
2 s; a ban → nothing sent during the hold, the next request after it, ticks within 5 s of
the ban's end; a watchdog-driven restart (a silent stream, frozen polls) → ``restarted``,
then ``resubscribed`` and a ``gap`` naming the last tick before the hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.base import Feeder, FeederContext, FeederMetrics
from services.feeder_gateway.feeders.eastmoney.feeder import EastMoneyFeeder, EastMoneyPollFeeder
from services.feeder_gateway.feeders.wanted import WantedSymbols
from services.feeder_gateway.market_feed import MarketFeed
from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import PriceUpdate, Status
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.service.test_gateway_watchdog import RecordingEvents as WatchdogEvents
from tests.simulators.alpaca import AlpacaSimulator
from tests.simulators.eastmoney import SNAPSHOT_PATH, SSE_PATH, EastMoneySimulator

ALPACA_FAST = {
    "key": "test-key",
    "secret": "test-secret",
    "backoff_base_s": 0.2,
    "backoff_cap_s": 1.0,
    "connect_timeout_s": 2.0,
    "auth_timeout_s": 2.0,
    "close_timeout_s": 0.5,
}
EASTMONEY_FAST = {
    "min_request_interval_s": 0.05,
    "request_jitter_s": 0.05,
    "backoff_base_s": 0.2,
    "backoff_cap_s": 1.0,
    "ban_hold_s": 1.2,
    "ban_jitter_cap_s": 0.3,
}
POLL_FAST = {**EASTMONEY_FAST, "poll_interval_s": 0.1, "poll_jitter_s": 0.0, "min_poll_gap_s": 0.0, "timeout_s": 1.0}
US = frozenset({"AAPL", "MSFT", "TSLA"})
CN = frozenset({"600000.SH", "000001.SZ", "00700.HK"})


class RecordingEvents(WatchdogEvents):
    def statuses(self, component: str) -> list[Status]:
        return [e for e in self.seen if isinstance(e, Status) and e.component == component]


class Market1:
    """One market with one source under its watchdog; every published tick recorded."""

    def __init__(self, feeder_type: type[Feeder[Any]], market: Market, settings: dict[str, Any]) -> None:
        self.wanted = WantedSymbols()
        self.events = RecordingEvents()
        self.component = f"feeder.{feeder_type.type_name}.{market.value}"
        ctx = FeederContext(
            name=feeder_type.type_name,
            market=market,
            emit_status=lambda state, detail: self.events.status(self.component, state, **detail),
            metrics=FeederMetrics(ServiceMetrics("test")),
            wanted=self.wanted.view(),
        )
        self.feeder = feeder_type(feeder_type.settings_model.model_validate(settings), ctx)
        self.queue = ConflatingTickQueue(100_000)
        self.feed = MarketFeed(market, [self.feeder], self.wanted, self.queue, self.events, stale_in_session_only=False)
        self.ticks: list[tuple[float, PriceUpdate]] = []  # (monotonic time taken, tick)

    async def drain(self) -> None:
        while batch := await self.queue.get_batch(10_000):
            now = time.monotonic()
            self.ticks += [(now, t) for t in batch]

    def symbols_since(self, since: float) -> set[str]:
        return {t.symbol for at, t in self.ticks if at >= since}

    def states(self) -> list[str]:
        return self.events.states(self.component)

    def details(self, state: str) -> list[dict[str, Any]]:
        return [s.detail for s in self.events.statuses(self.component) if s.state == state]


@contextlib.asynccontextmanager
async def market(
    feeder_type: type[Feeder[Any]], market_: Market, symbols: frozenset[str], **settings: Any
) -> AsyncIterator[Market1]:
    m = Market1(feeder_type, market_, settings)
    stop = asyncio.Event()
    run = asyncio.create_task(m.feed.run(stop), name="test.market_feed")
    drain = asyncio.create_task(m.drain(), name="test.drain")
    m.feed.set_symbols(symbols)
    try:
        yield m
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)
        m.queue.close()
        await asyncio.wait_for(drain, 5)


async def ticking_again(m: Market1, symbols: frozenset[str], since: float, timeout_s: float) -> float:
    """Seconds from ``since`` until every symbol ticked again."""
    await eventually(lambda: m.symbols_since(since) >= symbols, timeout_s, what="every symbol ticking again")
    first: dict[str, float] = {}
    for at, t in m.ticks:
        if at >= since:
            first.setdefault(t.symbol, at)
    return max(first[s] for s in symbols) - since


def assert_gap_after(m: Market1, mark: int, before: datetime) -> None:
    """After the status at ``mark``: resubscribed, and a gap naming the last tick before the hole."""
    after = m.states()[mark:]
    assert "resubscribed" in after and "gap" in after, after
    gap = m.details("gap")[-1]
    assert gap["last_tick"] is not None and datetime.fromisoformat(gap["last_tick"]) >= before


def eastmoney_quotes(sim: EastMoneySimulator) -> None:
    sim.set_quote("1.600000", f2=1052, f5=356812, f59=2, f124=1709518503)
    sim.set_quote("0.000001", f2=1034, f5=812345, f59=2, f124=1709518503)
    sim.set_quote("116.00700", f2=382400, f5=9876543, f59=3, f124=1709518503)


def newest_tick(m: Market1) -> datetime:
    return max(t.timestamp for _, t in m.ticks)


# ---- drop ---------------------------------------------------------------------------------------


async def test_alpaca_drop_all_symbols_ticking_again_within_2s() -> None:
    async with AlpacaSimulator() as sim, market(AlpacaFeeder, Market.US, US, url=sim.url, **ALPACA_FAST) as m:
        await eventually(lambda: m.symbols_since(0) == US, what="ticks")
        mark = len(m.states())
        dropped = time.monotonic()
        sim.drop_all()
        took = await ticking_again(m, US, dropped, 3)
        assert took <= 2.0 and m.states()[mark:].count("disconnected") == 1
        assert "resubscribed" in m.states()[mark:]
        print(f"alpaca drop: all symbols ticking again after {took:.2f}s")


async def test_eastmoney_sse_drop_all_symbols_ticking_again_within_2s() -> None:
    async with EastMoneySimulator(heartbeat_interval_s=0.1) as sim:
        eastmoney_quotes(sim)
        async with market(EastMoneyFeeder, Market.CN, CN, base_url=sim.url, **EASTMONEY_FAST) as m:
            await eventually(lambda: m.symbols_since(0) == CN, what="ticks")
            dropped = time.monotonic()
            sim.drop_streams(reset=True)
            took = await ticking_again(m, CN, dropped, 3)  # a reopen starts with a full event
            assert took <= 2.0 and len(sim.requested(SSE_PATH)) == 2
            print(f"eastmoney SSE drop: all symbols ticking again after {took:.2f}s")


async def test_eastmoney_poll_drop_all_symbols_ticking_again_within_2s() -> None:
    async with EastMoneySimulator() as sim:
        eastmoney_quotes(sim)
        async with market(EastMoneyPollFeeder, Market.CN, CN, base_url=sim.url, **POLL_FAST) as m:
            await eventually(lambda: m.symbols_since(0) == CN, what="ticks")
            dropped = time.monotonic()
            sim.reset_next = 2  # aiohttp retries a reset keep-alive request once by itself
            await eventually(lambda: "disconnected" in m.states(), 3, what="the drop seen")
            took = await ticking_again(m, CN, dropped, 3)  # a new connection emits the whole snapshot
            assert took <= 2.0 and "banned" not in m.states()
            print(f"eastmoney poll drop: all symbols ticking again after {took:.2f}s")


# ---- ban ----------------------------------------------------------------------------------------


async def test_alpaca_throttled_upgrade_is_held_then_ticks_within_5s_of_its_end() -> None:
    async with AlpacaSimulator() as sim, market(AlpacaFeeder, Market.US, US, url=sim.url, **ALPACA_FAST) as m:
        await eventually(lambda: m.symbols_since(0) == US, what="ticks")
        loop = asyncio.get_running_loop()
        sim.reject_upgrade = (429, {"Retry-After": "1"})
        ban_ends = time.monotonic() + 1.0
        loop.call_later(1.0, setattr, sim, "reject_upgrade", None)
        upgrades = sim.upgrades
        sim.drop_all()
        limited = await eventually(lambda: m.details("rate_limited"), what="429 seen")
        assert limited[0]["retry_in_s"] >= 1.0
        took = await ticking_again(m, US, ban_ends, 6)
        assert took <= 5.0
        assert sim.upgrades - upgrades == 2  # the refused one, then the one after the hold
        print(f"alpaca 429 hold: ticking {took:.2f}s after it ended")


async def _eastmoney_ban(feeder_type: type[Feeder[Any]], settings: dict[str, Any], path: str) -> float:
    async with EastMoneySimulator(heartbeat_interval_s=0.1) as sim:
        eastmoney_quotes(sim)
        async with market(feeder_type, Market.CN, CN, base_url=sim.url, **settings) as m:
            await eventually(lambda: m.symbols_since(0) == CN, what="ticks")
            n = len(sim.requests)
            await eventually(lambda: len(sim.requests) >= n + 3 or path == SSE_PATH, what="a healthy run")
            before = newest_tick(m)
            sim.ban(1.0)
            ban_ends = time.monotonic() + 1.0
            sim.drop_streams()
            banned = await eventually(lambda: m.details("banned"), what="ban seen")
            assert banned[0]["retry_in_s"] >= 1.2
            took = await ticking_again(m, CN, ban_ends, 6)
            refused = [r for r in sim.requests if r.outcome == "banned"]
            assert len(refused) == 1  # nothing during the hold
            after = [r for r in sim.requests if r.at > refused[0].at]
            assert after[0].outcome == "ok" and after[0].at >= ban_ends  # the next request: after the hold
            assert_gap_after(m, m.states().index("banned"), before)
            assert took <= 5.0
            return took


async def test_eastmoney_sse_ban_held_then_ticks_within_5s_of_its_end() -> None:
    took = await _eastmoney_ban(EastMoneyFeeder, EASTMONEY_FAST, SSE_PATH)
    print(f"eastmoney SSE ban: ticking {took:.2f}s after it ended")


async def test_eastmoney_poll_ban_held_then_ticks_within_5s_of_its_end() -> None:
    took = await _eastmoney_ban(EastMoneyPollFeeder, POLL_FAST, SNAPSHOT_PATH)
    print(f"eastmoney poll ban: ticking {took:.2f}s after it ended")


async def test_two_eastmoney_sources_of_one_host_share_the_pacer() -> None:
    async with EastMoneySimulator() as sim:
        eastmoney_quotes(sim)
        paced = {**POLL_FAST, "min_request_interval_s": 0.2, "request_jitter_s": 0.0, "poll_interval_s": 0.01}
        async with (
            market(EastMoneyPollFeeder, Market.CN, CN, base_url=sim.url, **paced),
            market(EastMoneyPollFeeder, Market.HK, frozenset({"00700.HK"}), base_url=sim.url, **paced),
        ):
            await eventually(lambda: len(sim.requests) >= 8, what="requests of both")
            times = [r.at for r in sim.requests]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.19  # together, never faster than one pacer allows
            assert {frozenset(r.secids) for r in sim.requests} == {
                frozenset({"0.000001", "1.600000", "116.00700"}),
                frozenset({"116.00700"}),
            }


# ---- watchdog-driven restarts --------------------------------------------------------------------


async def test_alpaca_silent_stream_is_restarted_by_the_watchdog_and_reports_its_gap() -> None:
    settings = {**ALPACA_FAST, "stale_trades_quotes_s": 0.6}
    async with AlpacaSimulator() as sim, market(AlpacaFeeder, Market.US, US, url=sim.url, **settings) as m:
        await eventually(lambda: m.symbols_since(0) == US, what="ticks")
        first = sim.live()
        mark = len(m.states())
        before = newest_tick(m)
        silent_at = time.monotonic()
        sim.go_silent()  # open, pings answered, no data
        await eventually(lambda: "restarted" in m.events.states("feed.US"), 3, what="restart")
        assert "stale" in m.events.states("feed.US")  # said before the restart
        took = await ticking_again(m, US, silent_at, 4)
        assert_gap_after(m, mark, before)
        assert first not in sim.sessions and 406 not in sim.error_codes()  # closed cleanly: no hold
        print(f"alpaca silent stream: ticking again {took:.2f}s after it went silent (stale after 0.6s)")


async def test_eastmoney_sse_silent_stream_is_restarted_by_the_watchdog_and_reports_its_gap() -> None:
    settings = {**EASTMONEY_FAST, "stale_after_s": 0.6}
    async with (
        EastMoneySimulator(heartbeat_interval_s=0.1, tick_interval_s=0.05) as sim,
        market(EastMoneyFeeder, Market.CN, CN, base_url=sim.url, **settings) as m,
    ):
        await eventually(lambda: m.symbols_since(0) == CN, what="ticks")
        mark = len(m.states())
        before = newest_tick(m)
        silent_at = time.monotonic()
        sim.silence_streams()  # heartbeats go on, data does not
        await eventually(lambda: "restarted" in m.events.states("feed.CN"), 3, what="restart")
        assert "stale" in m.events.states("feed.CN")
        took = await ticking_again(m, CN, silent_at, 4)
        assert_gap_after(m, mark, before)
        print(f"eastmoney SSE silent stream: ticking again {took:.2f}s after it went silent")


async def test_eastmoney_poll_frozen_quotes_restart_and_report_the_gap() -> None:
    async with EastMoneySimulator() as sim:
        eastmoney_quotes(sim)
        async with market(EastMoneyPollFeeder, Market.CN, CN, base_url=sim.url, frozen_after_s=0.6, **POLL_FAST) as m:
            await eventually(lambda: m.symbols_since(0) == CN, what="ticks")
            mark = len(m.states())
            before = newest_tick(m)
            await eventually(lambda: "frozen" in m.events.states("feed.CN"), 3, what="frozen")
            await eventually(lambda: "restarted" in m.events.states("feed.CN"), 3, what="restart")
            await eventually(lambda: "gap" in m.states()[mark:], 3, what="gap")
            assert_gap_after(m, mark, before)
