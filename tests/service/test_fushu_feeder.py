"""The fushu feeder against its simulator: auth, polling diffs, splits, faults, bad items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from services.feeder_gateway.feeders.base import FeederConfigError
from services.feeder_gateway.feeders.fushu.feeder import FushuFeeder, FushuSettings
from tests.helpers import eventually
from tests.service import poller_helpers as poller
from tests.simulators.fushu import FushuSimulator

KEY = "test-key"

Make = Callable[..., poller.PollerHarness[FushuFeeder]]


@pytest.fixture
async def sim() -> AsyncIterator[FushuSimulator]:
    async with FushuSimulator(KEY) as s:
        yield s


@pytest.fixture
async def make(sim: FushuSimulator) -> AsyncIterator[Make]:
    async with poller.harnesses(FushuFeeder, "fushu", sim.url, api_key=KEY) as factory:
        yield factory


async def test_ticks_for_the_subscribed_symbols_with_bearer_auth(sim: FushuSimulator, make: Make) -> None:
    sim.set_quote(
        "00700.HK",
        price=322.4,
        volume=12_345_678,
        timestamp="2024-03-04T16:08:10.250+08:00",
        bid_price=322.2,
        ask_price=322.6,
        bid_volume=12_000,
        ask_volume=8_000,
    )
    sim.set_quote("00005.HK", price=61.25, volume=20_456_800, timestamp="2024-03-04T16:08:09")
    h = make()
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
    assert sim.requests[0] == ("00005.HK", "00700.HK")
    assert set(sim.auth_headers) == {f"Bearer {KEY}"}
    by_symbol = {t.symbol: t for t in h.ticks}
    assert set(by_symbol) == {"00700.HK", "00005.HK"}
    t = by_symbol["00700.HK"]
    assert (t.price, t.volume, t.bid_price, t.ask_price) == (322.4, 12_345_678, 322.2, 322.6)
    assert (t.bid_volume, t.ask_volume) == (12_000, 8_000)
    assert t.timestamp == datetime(2024, 3, 4, 8, 8, 10, 250_000, tzinfo=UTC)
    assert t.source == "fushu" and t.receive_time is not None and not t.delayed
    # naive timestamps are Hong Kong local time
    assert by_symbol["00005.HK"].timestamp == datetime(2024, 3, 4, 8, 8, 9, tzinfo=UTC)
    assert h.states()[0] == "connected" and h.feeder.connected
    assert h.sample("livedata_feeder_ticks_total") == 2


async def test_unchanged_quotes_are_not_re_emitted(sim: FushuSimulator, make: Make) -> None:
    h = make()
    await poller.only_changes_are_emitted(h, sim, "00700.HK")
    assert h.ticks[-1].price == sim.quotes["00700.HK"]["price"]


async def test_subscribe_and_unsubscribe_change_the_polled_set(sim: FushuSimulator, make: Make) -> None:
    h = make(poll_interval_s=30.0)  # a new symbol must be polled at once, not in 30 s
    both, remaining = ("00005.HK", "00700.HK"), ("00005.HK",)
    await poller.symbols_added_and_removed(h, sim, ("00700.HK", "00005.HK"), (both, remaining))
    resub = [d for s, d in h.statuses if s == "subscription_changed"]
    assert resub[-1] == {"symbols": 1, "added": [], "removed": ["00700.HK"]}
    # re-adding a symbol emits its (unchanged) quote again at once
    n = len(h.ticks)
    h.feeder.set_symbols(frozenset({"00005.HK", "00700.HK"}))
    await eventually(lambda: len(h.ticks) > n, 3, what="re-added symbol")
    assert h.ticks[-1].symbol == "00700.HK"


async def test_large_sets_are_split(sim: FushuSimulator, make: Make) -> None:
    symbols = {f"{i:05d}.HK" for i in range(1, 26)}
    h = make(max_symbols_per_request=10)
    h.start(*symbols)
    await eventually(lambda: len(h.ticks) >= 25, 5, what="all symbols")
    assert [len(r) for r in sim.requests[:3]] == [10, 10, 5]
    assert set().union(*sim.requests[:3]) == symbols
    assert h.symbols_seen() == symbols
    assert h.sample("livedata_feeder_frames_total") >= 3


async def test_reconnects_after_drops_with_the_same_symbols(sim: FushuSimulator, make: Make) -> None:
    h = make(ban_after_resets=3)  # two failed polls are drops, not yet a ban
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="first tick")
    sim.drop_next = 4
    sim.advance("00700.HK")
    await eventually(lambda: len(h.ticks) >= 2, 5, what="tick after the drops")
    # aiohttp itself retries an idempotent request once after a reset, so four resets
    # make two failed polls
    assert h.states().count("disconnected") == 2
    assert len(sim.requests) >= 6  # first poll, four resets, the poll that got through
    assert h.states()[-3:] == ["connected", "resubscribed", "gap"]
    gap = h.statuses[-1][1]
    assert gap["last_tick"] == h.ticks[0].timestamp.isoformat()
    assert all(r == ("00700.HK",) for r in sim.requests)
    assert h.sample("livedata_feeder_reconnects_total") >= 2


async def test_silent_server_times_out_and_recovers(sim: FushuSimulator, make: Make) -> None:
    h = make(timeout_s=0.3)
    await poller.recovers_from_silence(h, sim, "00700.HK")
    assert "TimeoutError" in next(d for s, d in h.statuses if s == "disconnected")["error"]


async def test_generator_can_be_closed_and_restarted(sim: FushuSimulator, make: Make) -> None:
    h = make()
    await poller.restarts_with_the_snapshot(h)  # a fresh generator emits the current snapshot again
    assert h.states()[-3:] == ["connected", "resubscribed", "gap"]  # and reports the hole


async def test_slow_answers_within_the_timeout_are_fine(sim: FushuSimulator, make: Make) -> None:
    sim.slow_s = 0.2
    h = make(timeout_s=1.0)
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="slow tick")
    assert "disconnected" not in h.states()


async def test_bad_items_are_counted_and_skipped(sim: FushuSimulator, make: Make) -> None:
    sim.bad_items = [
        {"symbol": "00700.HK", "price": "n/a", "timestamp": "2024-03-04T16:08:10"},
        {"symbol": "00700.HK", "price": 70.1, "timestamp": "yesterday"},
        "garbage",
    ]
    h = make()
    h.start("00700.HK")
    await eventually(
        lambda: h.sample("livedata_feeder_malformed_total", reason="bad_item") >= 4,
        5,
        what="bad items counted",
    )
    assert h.symbols_seen() == {"00700.HK"}
    assert h.sample("livedata_feeder_malformed_total", reason="bad_timestamp") >= 1
    assert h.feeder.connected


async def test_garbage_body_counts_and_backs_off(sim: FushuSimulator, make: Make) -> None:
    await poller.garbage_body_backs_off(make(), sim)


@pytest.mark.parametrize("status", [503, 429])
async def test_server_errors_back_off_and_recover(sim: FushuSimulator, make: Make, status: int) -> None:
    sim.fail_status = status
    sim.retry_after = "0.05" if status == 429 else None
    state = "rate_limited" if status == 429 else "disconnected"
    h = make()
    h.start("00700.HK")
    await eventually(lambda: h.states().count(state) >= 2, 5, what="failures reported")
    detail = next(d for s, d in h.statuses if s == state)
    assert f"HTTP {status}" in detail["error"] and detail["retry_in_s"] >= 0
    assert not h.ticks
    sim.fail_status = None
    await eventually(lambda: h.ticks, 5, what="recovery")


async def test_wrong_key_is_a_config_error_naming_the_setting(sim: FushuSimulator, make: Make) -> None:
    h = make(api_key="wrong")
    h.start("00700.HK")
    assert h.task is not None
    with pytest.raises(FeederConfigError) as e:
        await asyncio.wait_for(h.task, 5)
    h.task = None
    assert "401" in str(e.value)
    assert "'api_key' in secure.yml under 'fushu'" in str(e.value)
    assert sim.auth_headers == ["Bearer wrong"]
    assert h.states() == ["config_error"]
    assert "wrong" not in repr(h.feeder.settings)  # the key never shows


async def test_403_after_a_long_healthy_run_is_a_ban_not_a_config_error(sim: FushuSimulator, make: Make) -> None:
    h = make(ban_hold_s=1.1, healthy_after_s=0.2)
    recovered_s = await poller.ban_after_a_healthy_run_is_held_then_recovers(h, sim, sim.ban)
    assert recovered_s <= 5.0
    print(f"fushu 403 ban: ticks {recovered_s:.2f}s after the ban ended")


async def test_403_before_any_answer_is_a_config_error(sim: FushuSimulator, make: Make) -> None:
    sim.ban(5.0)
    h = make()
    h.start("00700.HK")
    assert h.task is not None
    with pytest.raises(FeederConfigError, match=r"403.*api_key"):
        await asyncio.wait_for(h.task, 5)
    h.task = None


async def test_missing_key_is_a_config_error(make: Make) -> None:
    h = make(api_key=None)
    h.start("00700.HK")
    assert h.task is not None
    with pytest.raises(FeederConfigError, match=r"api_key.*secure\.yml"):
        await asyncio.wait_for(h.task, 5)
    h.task = None


def test_settings() -> None:
    s = FushuSettings.model_validate({"base_url": "http://h:1/", "api_key": "k"})
    assert s.base_url == "http://h:1" and s.poll_interval_s == 5.0 and s.timeout_s == 10.0
    with pytest.raises(ValueError, match="extra"):
        FushuSettings.model_validate({"base_url": "http://h", "bogus": 1})
    with pytest.raises(ValueError, match="http"):
        FushuSettings.model_validate({"base_url": "h:1"})
