"""The tencent feeder against its simulator: GBK lines, delayed HK time, batching, faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from services.feeder_gateway.feeders.base import FeederConfigError, FeederContext, FeederMetrics
from services.feeder_gateway.feeders.tencent.feeder import TencentFeeder, TencentSettings
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.service import poller_helpers as poller
from tests.simulators.tencent import TencentSimulator

Make = Callable[..., poller.PollerHarness[TencentFeeder]]


@pytest.fixture
async def sim() -> AsyncIterator[TencentSimulator]:
    async with TencentSimulator() as s:
        yield s


@pytest.fixture
async def make(sim: TencentSimulator) -> AsyncIterator[Make]:
    async with poller.harnesses(TencentFeeder, "tencent", sim.url) as factory:
        yield factory


async def test_ticks_carry_the_quote_time_in_utc_and_are_delayed(
    sim: TencentSimulator, make: Make
) -> None:
    sim.set_quote(
        "r_hk00700",
        last=322.4,
        volume=12_345_678,
        amount=3_981_234_567.89,
        open=322.0,
        high=325.0,
        low=320.0,
        time="2024/03/04 16:08:10",
    )
    h = make()
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
    assert sim.requests[0] == ("r_hk00005", "r_hk00700")
    assert sim.paths[0] == "/q=r_hk00005,r_hk00700"
    by_symbol = {t.symbol: t for t in h.ticks}
    assert set(by_symbol) == {"00700.HK", "00005.HK"}
    t = by_symbol["00700.HK"]
    assert (t.price, t.volume, t.amount) == (322.4, 12_345_678, 3_981_234_567.89)
    assert (t.open_price, t.high_price, t.low_price) == (322.0, 325.0, 320.0)
    # field [30] 2024/03/04 16:08:10 Hong Kong → 08:08:10 UTC, never the local clock
    assert t.timestamp == datetime(2024, 3, 4, 8, 8, 10, tzinfo=UTC)
    assert all(tick.delayed for tick in h.ticks)
    # the simulator's default quotes are 15 minutes behind the wall clock
    hsbc = by_symbol["00005.HK"]
    assert hsbc.receive_time is not None
    assert 890 <= (hsbc.receive_time - hsbc.timestamp).total_seconds() <= 910
    assert h.states()[:3] == ["connected", "subscribed", "delayed"]
    n = len(sim.requests)
    sim.advance()
    await eventually(lambda: len(sim.requests) >= n + 3 and len(h.ticks) >= 4, 5, what="more polls")
    assert h.states().count("delayed") == 1
    delayed = dict(h.statuses)["delayed"]
    assert delayed["nominal_delay_s"] == 900 and delayed["observed_lag_s"] > 0


async def test_unchanged_quotes_are_not_re_emitted(sim: TencentSimulator, make: Make) -> None:
    h = make()
    await poller.only_changes_are_emitted(h, sim, "r_hk00700")
    assert h.ticks[-1].price == pytest.approx(sim.quotes["r_hk00700"].last)
    # volume alone changing (a trade at the same price, same second) is a new quote too
    sim.quotes["r_hk00005"].volume += 100
    await eventually(lambda: len(h.ticks) == 4, 5, what="volume-only change")
    assert h.ticks[-1].symbol == "00005.HK"
    assert h.ticks[-1].volume == sim.quotes["r_hk00005"].volume


async def test_more_than_sixty_codes_are_batched(sim: TencentSimulator, make: Make) -> None:
    symbols = {f"{i:05d}.HK" for i in range(1, 131)}
    h = make()
    h.start(*symbols)
    await eventually(lambda: len(h.ticks) >= 130, 5, what="all symbols")
    assert [len(r) for r in sim.requests[:3]] == [60, 60, 10]
    assert set().union(*sim.requests[:3]) == {f"r_hk{i:05d}" for i in range(1, 131)}
    assert h.symbols_seen() == symbols
    assert h.batches[0] == h.ticks[:130]  # one poll, one batch
    assert h.sample("livedata_feeder_frames_total") >= 3


async def test_subscribe_and_unsubscribe_change_the_polled_codes(
    sim: TencentSimulator, make: Make
) -> None:
    h = make(poll_interval_s=30.0)  # a new symbol must be polled at once, not in 30 s
    codes = (("r_hk00700", "r_hk09988"), ("r_hk09988",))
    await poller.symbols_added_and_removed(h, sim, ("00700.HK", "09988.HK"), codes)
    resub = [d for s, d in h.statuses if s == "subscription_changed"]
    assert resub == [
        {"symbols": 2, "added": ["09988.HK"], "removed": []},
        {"symbols": 1, "added": [], "removed": ["00700.HK"]},
    ]
    h.feeder.set_symbols(frozenset())
    n = len(sim.requests)
    h.feeder.set_symbols(frozenset({"00700.HK"}))  # re-added: emitted again at once
    await eventually(lambda: h.ticks[-1].symbol == "00700.HK", 3, what="re-added symbol")
    assert len(sim.requests) == n + 1


async def test_unknown_codes_are_counted_and_skipped(sim: TencentSimulator, make: Make) -> None:
    sim.unknown_codes = {"r_hk99999"}
    h = make()
    h.start("00700.HK", "99999.HK", "AAPL")
    await eventually(lambda: h.malformed("unknown_code") >= 2, 5, what="unknown counted")
    assert h.symbols_seen() == {"00700.HK"}
    assert h.malformed("unmappable_symbol") == 1  # not an HK symbol: never requested
    assert sim.requests[0] == ("r_hk00700", "r_hk99999")
    assert h.feeder.connected


async def test_utf8_variant(sim: TencentSimulator, make: Make) -> None:
    h = make(url=f"{sim.url}/utf8", encoding="utf-8")
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="tick from the utf8 path")
    assert sim.paths[0] == "/utf8/q=r_hk00700"
    assert h.malformed("bad_encoding") == 0


async def test_wrong_encoding_is_counted(sim: TencentSimulator, make: Make) -> None:
    h = make(encoding="utf-8")  # the GBK host read as UTF-8: names garble, numbers survive
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="tick despite the encoding")
    assert h.malformed("bad_encoding") >= 1


async def test_reconnects_after_drops_with_the_same_codes(
    sim: TencentSimulator, make: Make
) -> None:
    h = make(ban_after_resets=3)  # two failed polls are drops, not yet a ban
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: len(h.ticks) == 2, 5, what="first ticks")
    sim.drop_next = 4  # aiohttp retries a reset GET once itself: two failed polls
    sim.advance()
    await eventually(lambda: len(h.ticks) >= 4, 5, what="ticks after the drops")
    assert h.states().count("disconnected") == 2
    assert h.states()[-4:] == ["connected", "resubscribed", "gap", "delayed"]
    assert h.statuses[-2][1]["last_tick"] == max(t.timestamp for t in h.ticks[:2]).isoformat()
    assert all(r == ("r_hk00005", "r_hk00700") for r in sim.requests)
    assert h.sample("livedata_feeder_reconnects_total") == 2


async def test_silent_server_times_out_and_recovers(sim: TencentSimulator, make: Make) -> None:
    await poller.recovers_from_silence(make(timeout_s=0.3), sim, None)


async def test_generator_can_be_closed_and_restarted(sim: TencentSimulator, make: Make) -> None:
    h = make()
    await poller.restarts_with_the_snapshot(h)
    assert h.ticks[1].timestamp == h.ticks[0].timestamp
    assert h.states()[-4:] == ["connected", "resubscribed", "gap", "delayed"]


async def test_garbage_lines_are_counted_and_skipped(sim: TencentSimulator, make: Make) -> None:
    sim.garbage_lines = [
        "<html>系统繁忙</html>",
        'v_r_hk00700="100~腾讯控股~00700~322.4";',
        'v_r_hk00700="100~腾讯控股~00700',
    ]
    h = make()
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: h.malformed("bad_line") >= 4, 5, what="garbage counted")
    assert h.malformed("short_line") >= 2
    assert h.symbols_seen() == {"00700.HK", "00005.HK"}
    assert "disconnected" not in h.states()


async def test_garbage_body_counts_and_backs_off(sim: TencentSimulator, make: Make) -> None:
    await poller.garbage_body_backs_off(make(), sim)


async def test_ban_403_after_a_healthy_run_holds_then_recovers(sim: TencentSimulator, make: Make) -> None:
    h = make(ban_hold_s=1.1, healthy_after_s=0.2)
    recovered_s = await poller.ban_after_a_healthy_run_is_held_then_recovers(h, sim, sim.ban)
    assert "HTTP 403" in next(d for s, d in h.statuses if s == "banned")["error"]
    assert recovered_s <= 5.0
    print(f"tencent 403 ban: ticks {recovered_s:.2f}s after the ban ended")


async def test_connection_resets_count_as_a_ban(sim: TencentSimulator, make: Make) -> None:
    h = make(ban_hold_s=1.1, healthy_after_s=0.2, ban_after_resets=2)
    recovered_s = await poller.ban_after_a_healthy_run_is_held_then_recovers(h, sim, sim.reset_for)
    assert "resets in a row" in next(d for s, d in h.statuses if s == "banned")["error"]
    assert recovered_s <= 5.0
    print(f"tencent reset ban: ticks {recovered_s:.2f}s after the ban ended")


async def test_server_error_backs_off(sim: TencentSimulator, make: Make) -> None:
    sim.fail_status = 502
    h = make()
    h.start("00700.HK")
    await eventually(lambda: h.states().count("disconnected") >= 2, 5, what="failures")
    assert not h.ticks
    sim.fail_status = None
    await eventually(lambda: h.ticks, 5, what="recovery")
    assert h.states()[-3:] == ["connected", "subscribed", "delayed"]  # never up before: no gap


async def test_wrong_path_is_a_config_error_naming_the_setting(
    sim: TencentSimulator, make: Make
) -> None:
    h = make(url=f"{sim.url}/nowhere")
    h.start("00700.HK")
    assert h.task is not None
    with pytest.raises(FeederConfigError, match="base_url") as e:
        await asyncio.wait_for(h.task, 5)
    h.task = None
    assert "404" in str(e.value) and "'tencent'" in str(e.value)
    assert h.states() == ["config_error"]


def test_settings() -> None:
    s = TencentSettings()
    assert s.base_url == "http://qt.gtimg.cn" and s.encoding == "gbk"
    assert s.max_codes_per_request == 60 and s.poll_interval_s == 5.0
    with pytest.raises(ValueError, match="encoding"):
        TencentSettings(encoding="klingon")
    assert TencentSettings(encoding="UTF8").encoding == "utf-8"


def test_staleness_follows_poll_success_not_quote_age() -> None:
    ctx = FeederContext("tencent", Market.HK, lambda s, d: None, FeederMetrics(ServiceMetrics("t")))
    assert TencentFeeder(TencentSettings(), ctx).stale_after_s == 15.0
    assert TencentFeeder(TencentSettings(stale_after_s=0), ctx).stale_after_s is None
    assert TencentFeeder.follows_sessions is True


async def test_a_body_past_max_body_bytes_is_counted_and_fails_the_poll(sim: TencentSimulator, make: Make) -> None:
    """The answer is read in chunks up to ``max_body_bytes``: a larger one is a malformed
    answer (``body_too_large``) that fails the poll, and the feeder recovers once it fits."""
    symbols = [f"{i:05d}.HK" for i in range(1, 41)]
    h = make(max_body_bytes=1024)
    h.start(*symbols)
    await eventually(lambda: h.malformed("body_too_large") >= 1, 5, what="the oversized body counted")
    await eventually(lambda: "disconnected" in h.states(), 5, what="the poll failed")
    assert not h.ticks
    await h.stop()
    big = make(max_body_bytes=1_000_000)
    big.start(*symbols)
    await eventually(lambda: len(big.ticks) >= 40, 5, what="every quote once it fits")
    await big.stop()
