"""The alpaca feeder against its simulator: ticks, diffs, limits, faults, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.alpaca.parse import parse_timestamp
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.base import FeederConfigError, FeederContext, FeederMetrics
from shared.dto import PriceUpdate, TradeCorrection
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.simulators.alpaca import AlpacaSimulator

FAST = {
    "key": "test-key",
    "secret": "test-secret",
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.2,
    "connect_timeout_s": 2.0,
    "auth_timeout_s": 2.0,
    "close_timeout_s": 0.5,
}


@dataclass
class Run:
    feeder: AlpacaFeeder
    metrics: ServiceMetrics
    statuses: list[tuple[str, dict[str, Any]]]
    corrections: list[TradeCorrection]
    ticks: list[PriceUpdate] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def states(self) -> list[str]:
        return [s for s, _ in self.statuses]

    def detail(self, state: str) -> dict[str, Any]:
        return [d for s, d in self.statuses if s == state][-1]

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"livedata_feeder_{name}_total", {"source": "alpaca", **labels})
        return value or 0.0

    def of(self, symbol: str, trades: bool | None = None) -> list[PriceUpdate]:
        return [t for t in self.ticks if t.symbol == symbol and (trades is None or (t.last_size is not None) == trades)]


def make_feeder(sim: AlpacaSimulator, **settings: Any) -> tuple[AlpacaFeeder, Run]:
    metrics = ServiceMetrics("test")
    statuses: list[tuple[str, dict[str, Any]]] = []
    corrections: list[TradeCorrection] = []
    ctx = FeederContext(
        name="alpaca",
        market=Market.US,
        emit_status=lambda state, detail: statuses.append((state, detail)),
        metrics=FeederMetrics(metrics),
        emit_correction=corrections.append,
    )
    feeder = AlpacaFeeder(AlpacaSettings.model_validate({"url": sim.url, **FAST, **settings}), ctx)
    return feeder, Run(feeder, metrics, statuses, corrections)


@contextlib.asynccontextmanager
async def running(sim: AlpacaSimulator, symbols: set[str], **settings: Any) -> AsyncIterator[Run]:
    feeder, run = make_feeder(sim, **settings)
    feeder.set_symbols(frozenset(symbols))

    async def consume() -> None:
        gen = feeder.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                run.ticks.extend(batch)

    run.task = asyncio.create_task(consume(), name="test.alpaca.consume")
    try:
        yield run
    finally:
        run.task.cancel()
        await asyncio.wait([run.task])


def sent_by_key(sim: AlpacaSimulator) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    """Sim data messages by (type, symbol, instant): every message has its own microsecond."""
    return {(m["T"], m["S"], parse_timestamp(m["t"])): m for _, m in sim.sent_data}


def assert_ticks_match_sent(run: Run, sim: AlpacaSimulator, wire: dict[str, str]) -> None:
    sent = sent_by_key(sim)
    for tick in run.ticks:
        if tick.last_size is not None:
            m = sent[("t", wire[tick.symbol], tick.timestamp)]
            assert (tick.price, tick.last_size) == (m["p"], float(m["s"]))
            assert tick.volume is None
        else:
            m = sent[("q", wire[tick.symbol], tick.timestamp)]
            assert (tick.bid_price, tick.ask_price) == (m["bp"], m["ap"])
            assert (tick.bid_volume, tick.ask_volume) == (m["bs"] * 100.0, m["as"] * 100.0)
        assert tick.timestamp.tzinfo is not None and tick.receive_time is not None
        assert tick.receive_time >= tick.timestamp


async def test_ticks_for_exactly_the_subscribed_symbols() -> None:
    wire = {"AAPL": "AAPL", "MSFT": "MSFT", "BRK-B": "BRK.B"}
    async with AlpacaSimulator() as sim, running(sim, set(wire)) as run:
        await eventually(lambda: all(len(run.of(s, trades=True)) >= 5 for s in wire), what="trades of each symbol")
        assert sim.subscription("trades") == sim.subscription("quotes") == set(wire.values())
        assert {t.symbol for t in run.ticks} == set(wire)
        assert_ticks_match_sent(run, sim, wire)
        # a quote's price is the symbol's last trade price once a trade was seen
        for sym in wire:
            ticks = run.of(sym)
            first_trade = next(i for i, t in enumerate(ticks) if t.last_size is not None)
            for prev, cur in zip(ticks[first_trade:], ticks[first_trade + 1 :], strict=False):
                if cur.last_size is None:
                    assert cur.price == prev.price
        assert run.counter("ticks") == len(run.ticks)
        assert run.counter("frames") >= 1
        assert run.feeder.connected
        assert run.states()[:2] == ["connected", "subscribed"]


async def test_subscribe_and_unsubscribe_diffs_reach_the_server() -> None:
    async with AlpacaSimulator(linger_s=0.3) as sim, running(sim, {"AAPL", "MSFT"}) as run:
        await eventually(lambda: sim.subscription() == {"AAPL", "MSFT"}, what="first subscription")
        await eventually(lambda: run.of("AAPL"), what="AAPL ticks")
        run.feeder.set_symbols(frozenset({"MSFT", "TSLA"}))
        await eventually(lambda: sim.subscription() == {"MSFT", "TSLA"}, what="diff applied")
        assert sim.subscription("quotes") == {"MSFT", "TSLA"}
        assert sim.requests("unsubscribe")[-1] == {"action": "unsubscribe", "trades": ["AAPL"], "quotes": ["AAPL"]}
        assert sim.requests("subscribe")[-1] == {"action": "subscribe", "trades": ["TSLA"], "quotes": ["TSLA"]}
        mark_ticks, mark_sent = len(run.ticks), len(sim.sent_data)
        # the server keeps sending AAPL briefly, as the real one does; none become ticks
        await eventually(lambda: any(m["S"] == "AAPL" for _, m in sim.sent_data[mark_sent:]), what="lingering AAPL")
        await eventually(lambda: run.of("TSLA"), what="TSLA ticks")
        lingering_sent_at = len(sim.sent_data)
        await eventually(lambda: len(sim.sent_data) > lingering_sent_at + 10, what="more data")
        await eventually(lambda: run.counter("frames") > 5, what="frames")
        assert not [t for t in run.ticks[mark_ticks:] if t.symbol == "AAPL"]
        assert len(sim.all_sessions) == 1  # diffs, not reconnects


async def test_reconnect_after_drop_resubscribes_and_reports_the_gap() -> None:
    async with AlpacaSimulator() as sim, running(sim, {"AAPL", "MSFT"}) as run:
        await eventually(lambda: len(run.of("AAPL")) >= 3, what="ticks")
        before = run.ticks[-1].timestamp
        first = sim.live()
        sim.drop_all()
        await eventually(
            lambda: sim.live() not in (None, first) and sim.subscription() == {"AAPL", "MSFT"},
            what="resubscribed on a new session",
        )
        await eventually(lambda: "gap" in run.states(), what="gap status")
        n = len(run.ticks)
        await eventually(lambda: len(run.ticks) > n + 4, what="ticks after the reconnect")
        assert run.states().count("disconnected") == 1
        assert "resubscribed" in run.states()
        gap = run.detail("gap")
        last_tick = datetime.fromisoformat(gap["last_tick"])
        assert last_tick >= before and last_tick in {t.timestamp for t in run.ticks}
        assert run.counter("reconnects") == 1
        resub = sim.requests("subscribe", sim.live().id)  # type: ignore[union-attr]
        assert resub == [{"action": "subscribe", "trades": ["AAPL", "MSFT"], "quotes": ["AAPL", "MSFT"]}]


async def test_garbage_frames_are_counted_and_skipped() -> None:
    async with AlpacaSimulator() as sim, running(sim, {"AAPL"}) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        await sim.send_garbage("[{not json")
        await sim.send_garbage(b"\x00\xff binary")
        await sim.send_garbage('{"T":"t"}')
        await sim.send_garbage('[{"T":"t","S":"AAPL","p":"x"}]')

        def malformed(reason: str) -> float:
            return run.counter("malformed", reason=reason)

        await eventually(lambda: malformed("undecodable_frame") == 2, what="undecodable counted")
        await eventually(lambda: malformed("frame_not_array") == 1, what="non-array counted")
        await eventually(lambda: malformed("bad_message") == 1, what="bad message counted")
        n = len(run.ticks)
        await eventually(lambda: len(run.ticks) > n + 3, what="ticks go on")
        assert run.counter("reconnects") == 0 and run.task is not None and not run.task.done()


@pytest.mark.parametrize(
    ("sim_kwargs", "settings", "words"),
    [
        ({}, {"secret": "wrong"}, ["402", "key/secret", "secure.yml", "'alpaca'"]),
        ({"feeds_in_plan": ["iex"]}, {"feed": "sip"}, ["409", "'feed'", "sip"]),
        (
            {"channels_off_feed": {"iex": {"dailyBars"}}},
            {"channels": ["trades", "dailyBars"]},
            ["410", "'channels'", "'feed'"],
        ),
        ({}, {"key": None}, ["secure.yml", "key"]),
    ],
)
async def test_configuration_errors_name_the_setting(
    sim_kwargs: dict[str, Any], settings: dict[str, Any], words: list[str]
) -> None:
    async with AlpacaSimulator(**sim_kwargs) as sim, running(sim, {"AAPL"}, **settings) as run:
        assert run.task is not None
        with pytest.raises(FeederConfigError) as err:
            await asyncio.wait_for(run.task, 5)
        for word in words:
            assert word in str(err.value)
        assert "config_error" in run.states()
        assert sim.upgrades <= 1  # never retried
        assert "wrong" not in str(err.value) and "test-secret" not in str(err.value)


async def test_large_symbol_list_is_split_across_subscribe_messages() -> None:
    symbols = {f"S{i:03d}" for i in range(250)}
    # one 250-symbol message would exceed the server's message size and be refused
    sim = AlpacaSimulator(symbol_limit=None, max_message_bytes=2500, interval_s=0.1)
    async with sim, running(sim, symbols, symbol_limit=None, max_symbols_per_message=100) as run:
        await eventually(lambda: sim.subscription() == symbols, what="all 250 subscribed")
        subs = sim.requests("subscribe")
        assert [len(m["trades"]) for m in subs] == [100, 100, 50]
        assert all(m["trades"] == m["quotes"] for m in subs)
        assert set().union(*(m["trades"] for m in subs)) == symbols
        await eventually(lambda: "subscribed" in run.states(), what="confirmed")
        assert "subscription_mismatch" not in run.states()
        await eventually(lambda: len({t.symbol for t in run.ticks}) == 250, what="ticks of all")


async def test_msgpack_end_to_end() -> None:
    wire = {"AAPL": "AAPL", "BRK-B": "BRK.B"}
    async with AlpacaSimulator() as sim, running(sim, set(wire), msgpack=True) as run:
        await eventually(lambda: all(len(run.of(s, trades=True)) >= 3 for s in wire), what="ticks")
        session = sim.live()
        assert session is not None and session.msgpack
        assert sim.requests("auth")[0]["key"] == "test-key"  # our messages were msgpack too
        assert_ticks_match_sent(run, sim, wire)
        assert run.counter("malformed", reason="undecodable_frame") == 0


async def test_connection_limit_406_waits_past_the_reap_window() -> None:
    sim = AlpacaSimulator(reap_window_s=0.8)
    settings = {"connection_limit_wait_s": 1.0, "connection_limit_jitter_s": 0.2}
    async with sim, running(sim, {"AAPL"}, **settings) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        sim.drop_all()  # a network drop: the server keeps the session for its reap window
        await eventually(lambda: 406 in sim.error_codes(), what="406 on the hasty reconnect")
        refused_at = next(t for _, code, t in sim.errors_sent if code == 406)
        await eventually(lambda: len(sim.authenticated_at) == 2, timeout_s=5, what="back in")
        assert sim.authenticated_at[1] - refused_at >= 1.0
        assert sim.error_codes().count(406) == 1  # no storm of retries inside the window
        held = run.detail("session_held")
        assert "connection limit" in held["error"] and held["class"] == "session_held"
        assert held["retry_in_s"] >= 1.0
        n = len(run.ticks)
        await eventually(lambda: len(run.ticks) > n, what="ticks again")


async def test_symbol_limit_405_keeps_the_allowed_symbols_flowing() -> None:
    symbols = {"AAA", "BBB", "CCC", "DDD", "EEE"}
    sim = AlpacaSimulator(symbol_limit=3)
    async with sim, running(sim, symbols, symbol_limit=None, max_symbols_per_message=2) as run:
        await eventually(lambda: "symbol_limit" in run.states(), what="limit reported")
        await eventually(lambda: {t.symbol for t in run.ticks} == {"AAA", "BBB", "EEE"}, what="ticks")
        assert sim.error_codes() == [405]
        assert sim.subscription() == {"AAA", "BBB", "EEE"}
        detail = run.detail("symbol_limit")
        assert detail["refused_by_server"] and detail["excess"] == ["CCC", "DDD"]
        await eventually(lambda: "subscribed" in run.states(), what="settled")
        assert "subscription_mismatch" not in run.states()
        # a new symbol does not fit the limit the server showed: not requested, reported
        n_requests = len(sim.requests("subscribe"))
        reported = run.states().count("symbol_limit")
        run.feeder.set_symbols(frozenset(symbols | {"FFF"}))
        await eventually(lambda: run.states().count("symbol_limit") > reported, what="new excess reported")
        assert run.detail("symbol_limit")["excess"] == ["CCC", "DDD", "FFF"]
        assert len(sim.requests("subscribe")) == n_requests
        # after a reconnect the refused symbols are not retried
        sim.drop_all()
        await eventually(lambda: len(sim.authenticated_at) == 2 and sim.subscription(), what="back")
        resub = sim.requests("subscribe", sim.live().id)  # type: ignore[union-attr]
        assert sorted(s for m in resub for s in m["trades"]) == ["AAA", "BBB", "EEE"]
        assert sim.error_codes() == [405]


async def test_own_symbol_limit_requests_no_more_and_reports_once() -> None:
    async with AlpacaSimulator() as sim, running(sim, {"AAA", "BBB", "CCC"}, symbol_limit=2) as run:
        await eventually(lambda: sim.subscription() == {"AAA", "BBB"}, what="two subscribed")
        await eventually(lambda: run.of("BBB"), what="ticks")
        assert run.states().count("symbol_limit") == 1
        assert run.detail("symbol_limit") == {
            "limit": 2,
            "excess_count": 1,
            "excess": ["CCC"],
            "refused_by_server": False,
        }
        assert all("CCC" not in m["trades"] for m in sim.requests("subscribe"))
        run.feeder.set_symbols(frozenset({"BBB", "CCC", "DDD"}))  # AAA leaves: CCC fits now
        await eventually(lambda: sim.subscription() == {"BBB", "CCC"}, what="CCC in")
        await eventually(lambda: run.states().count("symbol_limit") == 2, what="DDD reported")
        assert run.detail("symbol_limit")["excess"] == ["DDD"]


async def test_subscription_echo_mismatch_is_reported() -> None:
    sim = AlpacaSimulator()
    sim.unknown_symbols = {"NOPE"}
    async with sim, running(sim, {"AAPL", "NOPE"}) as run:
        await eventually(lambda: "subscription_mismatch" in run.states(), what="mismatch")
        channels = run.detail("subscription_mismatch")["channels"]
        assert channels["trades"] == {"missing": ["NOPE"], "extra": []}
        await eventually(lambda: run.of("AAPL"), what="AAPL still flows")


async def test_test_feed_streams_fakepaca() -> None:
    async with AlpacaSimulator() as sim, running(sim, {"FAKEPACA"}, feed="test") as run:
        await eventually(lambda: len(run.of("FAKEPACA")) >= 3, what="FAKEPACA ticks")
        assert run.detail("connected")["url"] == sim.url_for("test")
        assert sim.live().feed == "test"  # type: ignore[union-attr]


async def test_delayed_feed_marks_ticks_and_header_auth() -> None:
    settings = {"feed": "delayed_sip", "auth_in_headers": True}
    async with AlpacaSimulator() as sim, running(sim, {"AAPL"}, **settings) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        assert all(t.delayed for t in run.ticks)
        assert sim.requests("auth") == []  # authenticated by the upgrade headers


async def test_duplicate_trades_are_dropped() -> None:
    sim = AlpacaSimulator()
    sim.duplicate_trades = True
    async with sim, running(sim, {"AAPL", "MSFT"}, channels=["trades"]) as run:
        await eventually(lambda: len(run.ticks) >= 20, what="ticks")
        keys = [(t.symbol, t.timestamp) for t in run.ticks]
        assert len(keys) == len(set(keys))
        sent = [m for _, m in sim.sent_data if m["T"] == "t"]
        assert len({(m["S"], m["x"], m["i"]) for m in sent}) < len(sent)


async def test_bars_channels() -> None:
    channels = ["trades", "bars", "dailyBars"]
    async with AlpacaSimulator() as sim, running(sim, {"AAPL"}, channels=channels) as run:
        await eventually(lambda: any(t.volume is not None for t in run.ticks), what="daily bar")
        assert sim.subscription("dailyBars") == sim.subscription("bars") == {"AAPL"}
        daily = next(t for t in run.ticks if t.volume is not None)
        assert daily.open_price is not None and daily.high_price is not None
        assert run.feeder.stale_after_s == 90.0


async def test_slow_client_407_and_http_429_reconnect() -> None:
    async with AlpacaSimulator() as sim, running(sim, {"AAPL"}) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        sim.reject_upgrade = (429, {"Retry-After": "0"})
        await sim.inject_error(407, "slow client", close=True)
        await eventually(lambda: any("HTTP 429" in d.get("error", "") for _, d in run.statuses), what="429 seen")
        assert "407" in next(d for s, d in run.statuses if s == "disconnected")["error"]
        sim.reject_upgrade = None
        await eventually(lambda: len(sim.authenticated_at) == 2, what="back after 429")
        n = len(run.ticks)
        await eventually(lambda: len(run.ticks) > n, what="ticks again")


async def test_generator_close_is_clean_and_restartable() -> None:
    sim = AlpacaSimulator(reap_window_s=30.0)
    async with sim:
        async with running(sim, {"AAPL"}) as run:
            await eventually(lambda: run.of("AAPL"), what="ticks")
        assert not run.feeder.connected
        await eventually(lambda: not sim.sessions, what="server saw the close")
        # a clean close frees the plan's connection at once: no 406 on restart
        async with running(sim, {"AAPL"}) as again:
            await eventually(lambda: again.of("AAPL"), what="ticks after restart")
        assert 406 not in sim.error_codes()


async def test_no_connection_until_symbols_are_wanted() -> None:
    async with AlpacaSimulator() as sim:
        feeder, run = make_feeder(sim)
        gen = feeder.ticks()
        first = asyncio.ensure_future(gen.__anext__())
        try:
            done, _ = await asyncio.wait([first], timeout=0.3)  # nothing may happen meanwhile
            assert not done and sim.upgrades == 0
            feeder.set_symbols(frozenset({"AAPL"}))
            batch = await asyncio.wait_for(first, 5)
            assert {t.symbol for t in batch} == {"AAPL"}
            feeder.set_symbols(frozenset())
            rest = asyncio.ensure_future(gen.__anext__())  # the generator reads while we wait
            await eventually(lambda: sim.live() and not sim.subscription(), what="unsubscribed")
            assert len(sim.all_sessions) == 1 and not rest.done()  # connection kept, no ticks
            rest.cancel()
            await asyncio.wait([rest])
        finally:
            first.cancel()
            await gen.aclose()
        assert run.states()[:2] == ["connected", "subscribed"]


async def test_simulator_auth_timeout_and_order() -> None:
    async with AlpacaSimulator(auth_timeout_s=0.2) as sim:
        async with connect(sim.url_for("iex")) as ws:
            assert json.loads(await ws.recv()) == [{"T": "success", "msg": "connected"}]
            await ws.send(json.dumps({"action": "subscribe", "trades": ["AAPL"]}))
            assert json.loads(await ws.recv())[0]["code"] == 401
            async with asyncio.timeout(2):
                assert json.loads(await ws.recv())[0]["code"] == 404
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
        async with connect(sim.url_for("iex")) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "auth", "key": "test-key", "secret": "test-secret"}))
            assert json.loads(await ws.recv()) == [{"T": "success", "msg": "authenticated"}]
            await ws.send(json.dumps({"action": "auth", "key": "test-key", "secret": "test-secret"}))
            assert json.loads(await ws.recv())[0]["code"] == 403


async def consume_into(run: Run) -> asyncio.Task[None]:
    async def consume() -> None:
        gen = run.feeder.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                run.ticks.extend(batch)

    return asyncio.create_task(consume(), name="test.alpaca.consume")


async def test_corrections_and_cancels_become_trade_corrections_halts_and_luld_status_events() -> None:
    t = "2024-03-04T14:30:00.123456789Z"
    async with AlpacaSimulator() as sim, running(sim, {"AAPL"}) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        await sim.send_data(
            [
                {
                    "T": "c",
                    "S": "AAPL",
                    "x": "V",
                    "oi": 7,
                    "op": 170.1,
                    "os": 100,
                    "ci": 8,
                    "cp": 170.2,
                    "cs": 90,
                    "oc": [],
                    "cc": [],
                    "t": t,
                    "z": "C",
                },
                {"T": "x", "S": "AAPL", "x": "V", "i": 9, "p": 170.3, "s": 50, "a": "C", "t": t, "z": "C"},
                {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "rc": "T12", "rm": "News", "t": t, "z": "C"},
                {"T": "l", "S": "AAPL", "u": 180.5, "d": 160.25, "i": "B", "t": t, "z": "C"},
                {"T": "t", "S": 123, "i": 1, "x": "V", "p": 1.0, "s": 1, "c": [], "t": t, "z": "C"},
            ]
        )
        await eventually(lambda: "luld" in run.states() and len(run.corrections) == 2, what="trading events")
        fix, cancel = run.corrections
        at = parse_timestamp(t)
        assert fix == TradeCorrection(
            symbol="AAPL",
            original_id=7,
            original_price=170.1,
            original_size=100.0,
            corrected_price=170.2,
            corrected_size=90.0,
            exchange="V",
            timestamp=at,
            source="alpaca",
            receive_time=fix.receive_time,
        )
        assert (cancel.original_id, cancel.original_price, cancel.original_size) == (9, 170.3, 50.0)
        assert cancel.cancelled and cancel.corrected_price is None and cancel.exchange == "V"
        assert "trade_correction" not in run.states() and "trade_cancel" not in run.states()
        assert run.detail("trading_status")["status_code"] == "H"
        assert (run.detail("luld")["limit_up"], run.detail("luld")["limit_down"]) == (180.5, 160.25)
        # a numeric S is malformed, counted, never silently dropped
        assert run.counter("malformed", reason="bad_message") == 1


async def test_a_restart_of_the_same_feeder_reports_resubscribed_and_the_gap() -> None:
    async with AlpacaSimulator(reap_window_s=30.0) as sim:
        feeder, run = make_feeder(sim)
        feeder.set_symbols(frozenset({"AAPL"}))
        task = await consume_into(run)
        await eventually(lambda: run.of("AAPL"), what="ticks")
        task.cancel()  # what the market watchdog does to a stale source
        await asyncio.wait([task])
        last = run.ticks[-1].timestamp
        task = await consume_into(run)
        try:
            await eventually(lambda: "gap" in run.states(), what="the gap after the restart")
            assert "resubscribed" in run.states()
            assert run.detail("gap")["last_tick"] == last.isoformat()
        finally:
            task.cancel()
            await asyncio.wait([task])


async def test_406_hold_outlives_a_restart_of_the_generator() -> None:
    sim = AlpacaSimulator(reap_window_s=0.8)
    settings = {"connection_limit_wait_s": 1.6, "connection_limit_jitter_s": 0.2}
    async with sim:
        feeder, run = make_feeder(sim, **settings)
        feeder.set_symbols(frozenset({"AAPL"}))
        task = await consume_into(run)
        await eventually(lambda: run.of("AAPL"), what="ticks")
        dropped_at = asyncio.get_running_loop().time()
        sim.drop_all()
        await eventually(lambda: 406 in sim.error_codes(), what="406 on the first reconnect")
        refused_at = next(t for _, code, t in sim.errors_sent if code == 406)
        task.cancel()  # a watchdog restart inside the hold must not skip it
        await asyncio.wait([task])
        task = await consume_into(run)
        try:
            await eventually(lambda: len(sim.authenticated_at) == 2, timeout_s=5, what="back in")
            assert sim.authenticated_at[1] - refused_at >= 1.0
            assert sim.error_codes().count(406) == 1  # no storm
            n = len(run.ticks)
            await eventually(lambda: len(run.ticks) > n, what="ticks again")
            print(f"alpaca drop inside the hold: ticks again {asyncio.get_running_loop().time() - dropped_at:.2f}s")
        finally:
            task.cancel()
            await asyncio.wait([task])


async def test_drop_without_a_held_session_ticks_again_within_2s() -> None:
    sim = AlpacaSimulator(reap_window_s=0.0)  # the server frees a dropped session at once
    async with sim, running(sim, {"AAPL", "MSFT"}, backoff_base_s=1.0) as run:
        await eventually(lambda: run.of("AAPL") and run.of("MSFT"), what="ticks")
        n = len(run.ticks)
        dropped = asyncio.get_running_loop().time()
        sim.drop_all()
        await eventually(
            lambda: {t.symbol for t in run.ticks[n:]} == {"AAPL", "MSFT"} and "gap" in run.states(),
            timeout_s=3,
            what="both symbols ticking again",
        )
        recovered_s = asyncio.get_running_loop().time() - dropped
        assert recovered_s <= 2.0
        print(f"alpaca drop: all symbols ticking again after {recovered_s:.2f}s")


async def test_auth_waits_for_the_welcome_and_batched_control_messages_are_all_read() -> None:
    sim = AlpacaSimulator()
    sim.welcome_delay_s = 0.3  # a client that sends auth before reading the welcome shows here
    async with sim, running(sim, {"AAPL"}) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks")
        assert sim.early_messages == []
    sim = AlpacaSimulator()
    sim.batch_control = True  # [connected, authenticated] in one frame
    async with sim, running(sim, {"AAPL"}, auth_in_headers=True) as run:
        await eventually(lambda: run.of("AAPL"), what="ticks after a batched welcome")
        assert "disconnected" not in run.states()


async def test_an_error_queued_before_the_welcome_fails_by_its_code() -> None:
    sim = AlpacaSimulator()
    sim.before_welcome = [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
    sim.close_after_before_welcome = True
    settings = {"connection_limit_wait_s": 0.5, "connection_limit_jitter_s": 0.1}
    async with sim, running(sim, {"AAPL"}, **settings) as run:
        held = await eventually(lambda: [d for s, d in run.statuses if s == "session_held"], what="406 read")
        assert held[0]["retry_in_s"] >= 0.5 and "disconnected" not in run.states()
        sim.before_welcome = []
        await eventually(lambda: run.of("AAPL"), what="ticks after the hold")
        assert sim.upgrades == 2  # one refused connection, then the one after the hold
    sim = AlpacaSimulator()
    sim.batch_control = True  # [connected, error 402] in one frame
    async with sim, running(sim, {"AAPL"}, auth_in_headers=True, secret="wrong") as run:
        assert run.task is not None
        with pytest.raises(FeederConfigError, match="402"):
            await asyncio.wait_for(run.task, 5)
