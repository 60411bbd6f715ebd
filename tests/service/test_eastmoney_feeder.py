"""The eastmoney feeder against its simulator: SSE deltas, reopen on change, poll, faults, bans."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from services.feeder_gateway.feeders.base import FeederConfigError, FeederContext, FeederMetrics
from services.feeder_gateway.feeders.eastmoney.feeder import EastMoneyFeeder, EastMoneyPollFeeder
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.simulators.eastmoney import SNAPSHOT_PATH, SSE_PATH, EastMoneySimulator

T0 = 1709518503  # 2024-03-04T02:15:03Z
FAST = {
    "min_request_interval_s": 0.0,
    "request_jitter_s": 0.0,
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.2,
    "ban_hold_s": 0.6,
    "ban_jitter_cap_s": 0.1,
}
SSE_FAST = {**FAST, "read_timeout_s": 2.0}
POLL_FAST = {**FAST, "timeout_s": 2.0, "poll_jitter_s": 0.0, "min_poll_gap_s": 0.0}


class Harness:
    """A feeder, its statuses and metrics, and a task draining its generator."""

    def __init__(self, sim: EastMoneySimulator, market: Market = Market.CN, mode: str = "sse", **settings: Any) -> None:
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.service_metrics = ServiceMetrics("test")
        self.metrics = FeederMetrics(self.service_metrics)
        ctx = FeederContext(
            name="eastmoney",
            market=market,
            emit_status=lambda state, detail: self.statuses.append((state, detail)),
            metrics=self.metrics,
        )
        feeder_type = EastMoneyPollFeeder if mode == "poll" else EastMoneyFeeder
        merged = {"base_url": sim.url, **(POLL_FAST if mode == "poll" else SSE_FAST), **settings}
        self.feeder: EastMoneyFeeder | EastMoneyPollFeeder = feeder_type(
            feeder_type.settings_model.model_validate(merged),  # type: ignore[arg-type]
            ctx,
        )
        self.ticks: list[PriceUpdate] = []
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        gen = self.feeder.ticks()
        async with contextlib.aclosing(gen):
            try:
                async for batch in gen:
                    self.ticks.extend(batch)
            except Exception as e:
                self.error = e

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="test.eastmoney.pump")

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def of(self, symbol: str) -> list[PriceUpdate]:
        return [t for t in self.ticks if t.symbol == symbol]

    def states(self) -> list[str]:
        return [s for s, _ in self.statuses]

    def sample(self, name: str, **labels: str) -> float:
        registry = self.service_metrics.registry
        got = registry.get_sample_value(name, {"source": "eastmoney", **labels})
        return got or 0.0


@contextlib.asynccontextmanager
async def running(sim: EastMoneySimulator, symbols: set[str], **settings: Any) -> AsyncIterator[Harness]:
    h = Harness(sim, **settings)
    h.feeder.set_symbols(frozenset(symbols))
    h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def sim() -> AsyncIterator[EastMoneySimulator]:
    async with EastMoneySimulator(heartbeat_interval_s=0.1) as s:
        s.set_quote(
            "1.600000",
            f2=1052,
            f5=356812,
            f6=375123456.0,
            f15=1058,
            f16=1046,
            f17=1049,
            f18=1048,
            f59=2,
            f124=T0,
        )
        s.set_quote("0.000001", f2=1034, f5=812345, f59=2, f124=T0)
        s.set_quote("0.430047", f2=1488, f5=12034, f19="-", f20="-", f59=2, f124=T0 - 3)
        s.set_quote("116.00700", f2=382400, f5=9876543, f15=385000, f16=380200, f17=381000, f59=3, f124=T0)
        yield s


def _secids_of(sim: EastMoneySimulator) -> list[set[str]]:
    return [set(s) for s in sim.stream_secids()]


# ---- SSE: ticks, scaling, deltas ----------------------------------------------------------------


async def test_sse_ticks_scaled_for_exactly_the_subscribed_symbols(sim: EastMoneySimulator) -> None:
    syms = {"600000.SH", "430047.BJ", "00700.HK"}
    async with running(sim, syms) as h:
        await eventually(lambda: {t.symbol for t in h.ticks} == syms, 5, what="first ticks")
        assert _secids_of(sim) == [{"1.600000", "0.430047", "116.00700"}]
        req = sim.requests[-1]
        assert req.path == SSE_PATH and req.referer == "https://quote.eastmoney.com/"
        assert "fltt" not in req.params and "f59" in req.fields and "f124" in req.fields
        pf = h.of("600000.SH")[0]
        assert (pf.price, pf.open_price, pf.high_price, pf.low_price) == (
            10.52,
            10.49,
            10.58,
            10.46,
        )
        assert pf.volume == 35_681_200.0 and pf.amount == 375_123_456.0  # lots → shares
        assert pf.timestamp == datetime(2024, 3, 4, 2, 15, 3, tzinfo=UTC)
        hk = h.of("00700.HK")[0]
        assert (hk.price, hk.high_price, hk.low_price, hk.open_price) == (
            382.4,
            385.0,
            380.2,
            381.0,
        )
        assert hk.volume == 9_876_543.0  # HK volume is already in shares
        assert h.of("430047.BJ")[0].price == 14.88
        assert h.feeder.connected
        assert h.states()[0] == "connected"

        # a delta carrying only f2/f124 of position 1 (430047.BJ), no f12/f13
        n = len(h.ticks)
        sim.update("0.430047", f2=1490, f124=T0 + 1)
        await eventually(lambda: len(h.ticks) > n, 5, what="delta tick")
        await eventually(lambda: sim.streams and sim.streams[0].events_sent >= 2, 5, what="sent")
        new = h.ticks[n:]
        assert [t.symbol for t in new] == ["430047.BJ"]
        assert new[0].price == 14.90 and new[0].volume == 1_203_400.0
        assert new[0].timestamp == datetime(2024, 3, 4, 2, 15, 4, tzinfo=UTC)

        # two securities change in one event: two ticks; HK keeps 3-decimal scaling
        sim.update_many({"116.00700": {"f2": 382600, "f124": T0 + 2}, "1.600000": {"f5": 356900}})
        await eventually(lambda: len(h.ticks) >= n + 3, 5, what="second delta")
        assert {t.symbol: t.price for t in h.ticks[n + 1 :]} == {
            "00700.HK": 382.6,
            "600000.SH": 10.52,
        }
        assert h.of("600000.SH")[-1].volume == 35_690_000.0
    assert frames(h) >= 3


def frames(h: Harness) -> float:
    return h.sample("livedata_feeder_frames_total")


async def test_fltt2_stream_uses_decimals(sim: EastMoneySimulator) -> None:
    async with running(sim, {"00700.HK"}, fltt=2) as h:
        await eventually(lambda: h.ticks, 5, what="tick")
        assert sim.requests[-1].params.get("fltt") == "2"
        assert h.ticks[0].price == 382.4 and h.ticks[0].high_price == 385.0


async def test_missing_price_is_no_tick(sim: EastMoneySimulator) -> None:
    sim.set_quote("1.600010", f2="-", f59=2)
    async with running(sim, {"600010.SH", "000001.SZ"}) as h:
        await eventually(lambda: h.ticks, 5, what="tick")
        assert {t.symbol for t in h.ticks} == {"000001.SZ"}
        sim.update("1.600010", f2=175, f124=T0)
        await eventually(lambda: h.of("600010.SH"), 5, what="tick after resume")
        assert h.of("600010.SH")[0].price == 1.75


# ---- subscription changes reopen the streams ----------------------------------------------------


async def test_set_symbols_reopens_stream_with_new_secids(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH", "000001.SZ"}) as h:
        await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
        h.feeder.set_symbols(frozenset({"000001.SZ", "00700.HK"}))
        await eventually(lambda: _secids_of(sim) == [{"0.000001", "116.00700"}], 5, what="reopen")
        await eventually(lambda: h.of("00700.HK"), 5, what="tick of the added symbol")
        assert [set(r) for r in sim.requested(SSE_PATH)] == [
            {"1.600000", "0.000001"},
            {"0.000001", "116.00700"},
        ]
        assert "subscription_changed" in h.states() and "resubscribed" not in h.states()
        assert len(sim.requested(SSE_PATH)) == 2  # one reopen, not a reconnect
        # the removed symbol gets no more ticks even if it moves
        n = len(h.of("600000.SH"))
        sim.update("1.600000", f2=1060)
        sim.update("0.000001", f2=1040)
        await eventually(lambda: h.of("000001.SZ")[-1].price == 10.40, 5, what="kept symbol")
        assert len(h.of("600000.SH")) == n

        h.feeder.set_symbols(frozenset())
        await eventually(lambda: not sim.streams, 5, what="all streams closed")


async def test_large_sets_split_and_only_changed_chunks_reopen(sim: EastMoneySimulator) -> None:
    syms = {"600000.SH", "000001.SZ", "430047.BJ", "00700.HK", "600519.SH"}
    async with running(sim, syms, max_secids_per_request=2) as h:
        await eventually(lambda: {t.symbol for t in h.ticks} == syms, 5, what="all ticks")
        assert sorted(map(len, sim.stream_secids())) == [1, 2, 2]
        before = {frozenset(s) for s in sim.stream_secids()}
        # sorted plan: (00700.HK, 000001.SZ) (430047.BJ, 600000.SH) (600519.SH); drop 430047.BJ
        h.feeder.set_symbols(frozenset(syms - {"430047.BJ"}))
        await eventually(
            lambda: (
                {frozenset(s) for s in sim.stream_secids()}
                == {
                    frozenset({"116.00700", "0.000001"}),
                    frozenset({"1.600000"}),
                    frozenset({"1.600519"}),
                }
            ),
            5,
            what="only the changed chunk reopened",
        )
        assert len(sim.requested(SSE_PATH)) == 4  # 3 opens + 1 reopen
        assert frozenset({"116.00700", "0.000001"}) in before


# ---- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True])
async def test_reconnect_after_drop_resumes_same_secids(sim: EastMoneySimulator, reset: bool) -> None:
    async with running(sim, {"600000.SH", "00700.HK"}) as h:
        await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
        sim.drop_streams(reset=reset)
        await eventually(lambda: len(sim.requested(SSE_PATH)) == 2 and sim.streams, 5, what="reopen")
        first, second = sim.requested(SSE_PATH)
        assert set(first) == set(second) == {"1.600000", "116.00700"}
        await eventually(lambda: "gap" in h.states(), 5, what="gap status")
        assert "disconnected" in h.states() and "banned" not in h.states()
        gap = next(d for s, d in h.statuses if s == "gap")
        assert gap["last_tick"] == "2024-03-04T02:15:03+00:00"
        assert ("resubscribed", {"symbols": 2}) in h.statuses
        assert h.sample("livedata_feeder_reconnects_total") == 1
        n = len(h.ticks)
        sim.update("1.600000", f2=1055)
        await eventually(lambda: len(h.ticks) > n and h.ticks[-1].price == 10.55, 5, what="tick after")


async def test_silent_stream_is_detected_and_replaced(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH"}, read_timeout_s=0.4) as h:
        await eventually(lambda: h.ticks, 5, what="first tick")
        # heartbeats every 0.1 s keep a quiet stream open past the silence timeout
        await eventually(lambda: sim.streams and sim.streams[0].events_sent >= 8, 5, what="heartbeats")
        assert len(sim.requested(SSE_PATH)) == 1
        sim.silence_streams()
        await eventually(lambda: len(sim.requested(SSE_PATH)) == 2, 5, what="reopen after silence")
        error = next(d["error"] for s, d in h.statuses if s == "disconnected")
        assert "Timeout" in error
        n = len(h.ticks)
        sim.update("1.600000", f2=1057)
        await eventually(lambda: len(h.ticks) > n and h.ticks[-1].price == 10.57, 5, what="tick after")


async def test_garbage_events_are_counted_and_skipped(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH", "000001.SZ"}) as h:
        await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
        sim.send_garbage()
        sim.send_garbage(b'data: {"rc":0,"full":0,"data":{"diff":{"9":{"f2":1}}}}\n\n')
        sim.send_garbage(b'data: {"rc":0,"full":0,"data":{"diff":{"0":{"f2":"x"}}}}\n\n')
        sim.update("0.000001", f2=1036)
        await eventually(lambda: h.ticks[-1].price == 10.36, 5, what="tick after garbage")
        assert h.sample("livedata_feeder_malformed_total", reason="bad_envelope") == 1
        assert h.sample("livedata_feeder_malformed_total", reason="bad_position") == 1
        assert h.sample("livedata_feeder_malformed_total", reason="bad_f2") == 1
        assert len(sim.requested(SSE_PATH)) == 1  # no reconnect for bad frames
        assert h.error is None


async def test_nonzero_rc_backs_off_then_recovers(sim: EastMoneySimulator) -> None:
    sim.rc = 102
    async with running(sim, {"600000.SH"}) as h:
        await eventually(lambda: len(sim.requested(SSE_PATH)) >= 2, 5, what="retries")
        assert not h.ticks
        assert any("rc=102" in d.get("error", "") for s, d in h.statuses if s == "disconnected")
        sim.rc = 0
        await eventually(lambda: h.ticks, 5, what="recovery")


async def test_wrong_base_url_is_a_config_error(sim: EastMoneySimulator) -> None:
    h = Harness(sim, base_url=sim.url + "/nope")
    h.feeder.set_symbols(frozenset({"600000.SH"}))
    gen = h.feeder.ticks()
    async with contextlib.aclosing(gen):
        with pytest.raises(FeederConfigError, match="'base_url'"):
            async with asyncio.timeout(5):
                await anext(gen)


async def test_unmappable_symbol_is_reported_once(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH", "12345.SZ"}) as h:
        await eventually(lambda: h.ticks, 5, what="tick")
        assert h.sample("livedata_feeder_malformed_total", reason="unmappable_symbol") == 1
        assert _secids_of(sim) == [{"1.600000"}]


async def test_generator_closes_cleanly_and_restarts(sim: EastMoneySimulator) -> None:
    h = Harness(sim)
    h.feeder.set_symbols(frozenset({"600000.SH"}))
    for _ in range(2):
        h.start()
        await eventually(lambda: sim.streams and h.feeder.connected, 5, what="stream up")
        await h.stop()
        assert not h.feeder.connected
        await eventually(lambda: not sim.streams, 5, what="server saw the close")
    assert len(sim.requested(SSE_PATH)) == 2


# ---- bans ---------------------------------------------------------------------------------------


async def test_ban_403_holds_requests_then_recovers(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH"}) as h:
        await eventually(lambda: h.ticks, 5, what="first tick")
        sim.ban(0.4)
        sim.drop_streams()
        await eventually(lambda: "banned" in h.states(), 5, what="banned status")
        await eventually(lambda: len(sim.requested(SSE_PATH)) == 2, 5, what="recovered stream")
        refused = [r for r in sim.requests if r.outcome == "banned"]
        ok_after = [r for r in sim.requests if r.outcome == "ok"][-1]
        assert len(refused) == 1  # no hammering while banned
        assert ok_after.at - refused[0].at >= 0.6  # ban_backoff_base_s
        banned = next(d for s, d in h.statuses if s == "banned")
        assert "403" in banned["error"] and banned["retry_in_s"] >= 0.6
        n = len(h.ticks)
        sim.update("1.600000", f2=1061)
        await eventually(lambda: len(h.ticks) > n and h.ticks[-1].price == 10.61, 5, what="tick")


async def test_resets_before_answer_count_as_ban(sim: EastMoneySimulator) -> None:
    async with running(sim, {"600000.SH"}) as h:
        await eventually(lambda: h.ticks, 5, what="first tick")
        sim.ban(0.3, style="reset")
        sim.drop_streams()
        await eventually(lambda: "banned" in h.states(), 5, what="banned after resets")
        # the drop, then one reset taken as an ordinary failure, the second one as a ban
        # (aiohttp itself retries a reset on a reused keep-alive connection once, so the
        # server may count more resets than the feeder sees failures)
        errors = [d["error"] for s, d in h.statuses if s in ("disconnected", "banned")]
        assert len(errors) == 3 and "stream ended" in errors[0]
        assert all("reset" in e.lower() or "disconnect" in e.lower() for e in errors[1:])
        assert len([r for r in sim.requests if r.outcome == "reset"]) >= 2
        await eventually(lambda: sim.streams, 5, what="recovered stream")
        assert h.states().count("banned") == 1


async def test_rate_limit_ban_in_poll_mode(sim: EastMoneySimulator) -> None:
    sim.rate_limit_requests = 3
    sim.rate_limit_window_s = 0.5
    sim.ban_duration_s = 0.4
    async with running(sim, {"600000.SH"}, mode="poll", poll_interval_s=0.02) as h:
        await eventually(lambda: "banned" in h.states(), 5, what="rate-limit ban")
        assert sim.bans == 1
        first_refused = next(r for r in sim.requests if r.outcome == "banned")
        await eventually(
            lambda: any(r.outcome == "ok" and r.at > first_refused.at for r in sim.requests),
            5,
            what="recovery",
        )
        after = [r for r in sim.requests if r.at > first_refused.at]
        assert after[0].outcome == "ok" and after[0].at - first_refused.at >= 0.6
        # the simulator records the answer before the feeder has read it
        await eventually(lambda: h.states().count("connected") >= 2, 5, what="connected again")


# ---- polling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_list", [True, False])
async def test_poll_both_diff_shapes(sim: EastMoneySimulator, as_list: bool) -> None:
    syms = {"600000.SH", "430047.BJ", "00700.HK"}
    async with running(sim, syms, mode="poll", poll_interval_s=0.05, diff_as_list=as_list) as h:
        await eventually(lambda: {t.symbol for t in h.ticks} == syms, 5, what="first poll")
        req = sim.requests[-1]
        assert req.path == SNAPSHOT_PATH and req.params.get("fltt") == "2"
        assert (req.params.get("np") == "1") is as_list
        got = {t.symbol: t for t in h.ticks}
        assert got["600000.SH"].price == 10.52 and got["600000.SH"].volume == 35_681_200.0
        assert got["00700.HK"].price == 382.4 and got["00700.HK"].low_price == 380.2
        assert got["430047.BJ"].price == 14.88 and got["430047.BJ"].bid_price is None
        # unchanged snapshots yield nothing; a change yields one tick for that symbol
        polls = len(sim.requested(SNAPSHOT_PATH))
        await eventually(lambda: len(sim.requested(SNAPSHOT_PATH)) >= polls + 3, 5, what="polls")
        assert len(h.ticks) == 3
        sim.set_quote("116.00700", f2=383000, f124=T0 + 9)
        await eventually(lambda: len(h.ticks) == 4, 5, what="changed snapshot")
        assert h.ticks[-1].symbol == "00700.HK" and h.ticks[-1].price == 383.0
        # a subscription change reaches the next poll
        h.feeder.set_symbols(frozenset({"000001.SZ"}))
        await eventually(lambda: sim.requested(SNAPSHOT_PATH)[-1] == ("0.000001",), 5, what="new set")
        await eventually(lambda: h.of("000001.SZ"), 5, what="tick of new symbol")


async def test_poll_integer_form_scales_by_f59(sim: EastMoneySimulator) -> None:
    async with running(sim, {"00700.HK", "600000.SH"}, mode="poll", fltt=0, poll_interval_s=0.05) as h:
        await eventually(lambda: len(h.ticks) >= 2, 5, what="first poll")
        assert "fltt" not in sim.requests[-1].params
        got = {t.symbol: t for t in h.ticks}
        assert got["00700.HK"].price == 382.4 and got["600000.SH"].price == 10.52


async def test_slow_server_times_out_then_recovers(sim: EastMoneySimulator) -> None:
    sim.delay_s = 0.5
    async with running(sim, {"600000.SH"}, mode="poll", poll_interval_s=0.05, timeout_s=0.15) as h:
        await eventually(lambda: "disconnected" in h.states(), 5, what="timeout")
        assert not h.ticks and "Timeout" in h.statuses[0][1]["error"]
        sim.delay_s = 0.0
        await eventually(lambda: h.ticks, 5, what="recovery")
        assert "connected" in h.states()


async def test_poll_chunks_respect_max_secids(sim: EastMoneySimulator) -> None:
    syms = {"600000.SH", "000001.SZ", "430047.BJ"}
    async with running(sim, syms, mode="poll", poll_interval_s=0.05, max_secids_per_request=2) as h:
        await eventually(lambda: {t.symbol for t in h.ticks} == syms, 5, what="all")
        sizes = {len(r) for r in sim.requested(SNAPSHOT_PATH)}
        assert sizes == {1, 2}


# ---- the simulator's own realism ----------------------------------------------------------------


async def test_simulator_refuses_missing_referer(sim: EastMoneySimulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.url}{SNAPSHOT_PATH}?secids=1.600000&fields=f2,f12,f13"
        async with session.get(url) as resp:
            assert resp.status == 403 and resp.content_type == "text/html"
        headers = {"Referer": "https://quote.eastmoney.com/"}
        async with session.get(url + "&np=1", headers=headers) as resp:
            body = await resp.json()
            assert body["rc"] == 0 and body["data"]["diff"] == [{"f2": 1052, "f12": "600000", "f13": 1}]
        async with session.get(
            f"{sim.url}/api/qt/stock/get?secid=116.00700&fields=f43,f57,f59&fltt=2", headers=headers
        ) as resp:
            assert (await resp.json())["data"] == {"f43": 382.4, "f57": "00700", "f59": 3}


@pytest.mark.parametrize("decimals_key", ["f59", "f152", "f1"])
@pytest.mark.parametrize("mode", ["sse", "poll"])
async def test_decimal_places_under_whichever_key_the_server_returns(
    sim: EastMoneySimulator, decimals_key: str, mode: str
) -> None:
    sim.decimals_key = decimals_key
    fast_poll = {"poll_interval_s": 0.05} if mode == "poll" else {}
    async with running(sim, {"00700.HK", "600000.SH"}, mode=mode, fltt=0, **fast_poll) as h:
        await eventually(lambda: len({t.symbol for t in h.ticks}) == 2, 5, what="both quotes")
        got = {t.symbol: t for t in h.ticks}
        assert got["00700.HK"].price == 382.4 and got["600000.SH"].price == 10.52
