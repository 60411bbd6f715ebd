"""The pure parts of the full-market benchmark, the soak and the scale-out judgement: pauses,
counters that restart on a rebalance, the lost-bar check, the regression check, the load's
shape and the symbol lists it uses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.dto import PriceUpdate, decode
from shared.symbols import Market, market_of
from tests.bench.full_market import (
    LATENCY_SYMBOLS,
    Arrivals,
    Scan,
    Series,
    _Last,
    compare,
    latency_symbols,
    longest_pause,
    new_symbols,
    rates,
    release_rate,
)
from tests.bench.harness import NotMeasured
from tests.bench.market_load import _Market, _rates
from tests.bench.universe import full_market
from tests.reliability.scale_out import StoredBar, judge


def test_longest_pause_is_the_longest_time_between_two_rises() -> None:
    samples = [(0.0, 0), (0.5, 1), (1.0, 1), (1.5, 1), (3.0, 2), (3.5, 3), (4.0, 3)]
    assert longest_pause(samples, 0.0, 4.0) == pytest.approx(2.5)  # 0.5 → 3.0
    assert longest_pause(samples, 3.2, 4.0) == pytest.approx(0.5)  # the window's start counts as a rise
    with pytest.raises(NotMeasured):
        longest_pause([(5.0, 1)], 0.0, 4.0)


def test_a_held_members_rate_is_its_share_over_release_to_done() -> None:
    samples = [(10.0, 0), (11.0, 70_000), (12.0, 70_000), (12.5, 150_000), (13.0, 200_000), (14.0, 200_000)]
    assert release_rate(samples, 200_000) == pytest.approx(200_000 / 3.0)
    with pytest.raises(NotMeasured):
        release_rate(samples, 250_000)
    with pytest.raises(NotMeasured):
        release_rate([(10.0, 0), (10.1, 5)], 5)


def test_a_counter_that_restarts_on_a_rebalance_still_grows() -> None:
    s = Series()
    for t, v in [(0, 0), (1, 100), (2, 250), (3, 20), (4, 70)]:
        s.add(t, v)
    assert [v for _, v in s.samples] == [0, 100, 250, 270, 320]


def test_arrivals_split_by_when_each_tick_was_created() -> None:
    a = Arrivals()
    t0 = 1_000.0

    def tick(created: float, source: str = "sim") -> PriceUpdate:
        return PriceUpdate(symbol="AAPL", price=1.0, timestamp=datetime.fromtimestamp(created, UTC), source=source)

    a.add([tick(t0 + 1), tick(t0 + 2)], t0 + 2.002)
    a.add([tick(t0 + 10, "load"), tick(t0 + 11, "load")], t0 + 11.05)
    a.add(
        [PriceUpdate(symbol="AAPL", price=1.0, timestamp=datetime.fromtimestamp(t0, UTC), source="x", snapshot=True)],
        t0 + 30,
    )
    report = a.report((t0, t0 + 10), (t0 + 10, t0 + 12), 5.0)
    assert report["steady"]["count"] == 2 and report["burst"]["count"] == 2
    assert report["burst"]["max"] == pytest.approx(1050, abs=1)
    assert report["received_by_source"] == {"sim": 2, "load": 2}  # a snapshot replay is no new tick


def test_compare_names_what_the_stored_bars_lack() -> None:
    last = {"A": _Last(0, 10, 500.0), "B": _Last(1, 7, 300.0), "C": _Last(2, 3, None)}
    minutes = {("A", 60_000), ("A", 120_000), ("B", 60_000), ("C", 60_000)}
    rows = [
        ("A", "1d", 0, 500.0, 0, 10),
        ("A", "1m", 60_000, 1.0, 0, 5),
        ("A", "1m", 120_000, 1.0, 0, 10),
        ("B", "1d", 0, 299.0, 1, 6),  # an older tick: short, and its volume is not the last
        ("B", "1m", 60_000, 1.0, 1, 6),
    ]
    got = compare(Scan(last=last, minutes=minutes), rows)
    assert got["symbols_without_daily_bar"] == 1  # C
    assert got["daily_bar_not_at_last_tick"] == 1 and got["daily_volume_not_cumulative"] == 1
    assert got["minutes_without_bar"] == 1  # C's minute


def test_judge_finds_lost_regressed_and_unversioned_bars() -> None:
    before = {
        ("A", "1d", 0): StoredBar(100.0, 10.0, 5),
        ("A", "1m", 0): StoredBar(10.0, 10.0, 5),
        ("B", "1d", 0): StoredBar(50.0, 9.0, 5),
        ("C", "1d", 0): StoredBar(50.0, 9.0, 5),
    }
    good = {
        ("A", "1d", 0): StoredBar(120.0, 10.5, 7),
        ("A", "1m", 0): StoredBar(10.0, 10.0, 5),
        ("A", "1m", 60_000): StoredBar(3.0, 10.5, 7),
        ("B", "1d", 0): StoredBar(50.0, 9.0, 5),
        ("B", "1m", 0): StoredBar(1.0, 9.0, 7),
        ("C", "1d", 0): StoredBar(51.0, 9.0, 6),
        ("C", "1m", 0): StoredBar(1.0, 9.0, 6),
    }
    assert judge(before, good, {"A", "B", "C"}).ok
    bad = dict(good)
    del bad[("A", "1m", 0)]
    bad[("B", "1d", 0)] = StoredBar(49.0, 9.0, 8)  # volume down
    bad[("C", "1d", 0)] = StoredBar(52.0, 9.0, 5)  # changed, same version
    v = judge(before, bad, {"A", "B", "C", "D"})
    assert v.lost == [("A", "1m", 0)] and len(v.regressed) == 1 and v.unversioned == [("C", "1d", 0)]
    assert v.without_daily == ["D"] and not v.ok


def test_the_full_market_load_shape() -> None:
    u = full_market()
    r = rates()
    assert r[Market.CN] == pytest.approx(5469 / 3) and r[Market.HK] == pytest.approx(2672 / 3)
    assert r[Market.US] == 20_000
    lat = latency_symbols()
    assert len(lat) == sum(LATENCY_SYMBOLS.values()) == len(set(lat))
    for m, n in LATENCY_SYMBOLS.items():
        assert sum(market_of(s) is m for s in lat) == n
    fresh = new_symbols(30)
    taken = {s for group in u.values() for s in group}
    assert len(set(fresh)) == 30 and not set(fresh) & taken
    assert {market_of(s) for s in fresh} == set(Market)


def test_the_load_generator_spreads_a_rate_round_robin_and_shapes_ticks_by_market() -> None:
    assert _rates(["US=20000", "cn=1823.5"], "--rate") == {Market.US: 20_000.0, Market.CN: 1823.5}
    with pytest.raises(SystemExit):
        _rates(["XX=1"], "--rate")
    us = _Market(Market.US, ["AAPL", "MSFT"])
    assert sum(us.due(20_000, 0.01) for _ in range(100)) == 20_000  # 1 s of 10 ms steps
    now = datetime.now(UTC)
    trade = decode(us.tick(0, now))
    assert isinstance(trade, PriceUpdate) and trade.volume is None and trade.last_size == 100.0
    assert trade.sequence == 1 and trade.source == "load"
    cn = _Market(Market.CN, ["600000.SH"])
    first, second = decode(cn.tick(0, now)), decode(cn.tick(0, now))
    assert isinstance(first, PriceUpdate) and isinstance(second, PriceUpdate)
    assert first.volume is not None and second.volume is not None and second.volume > first.volume  # cumulative
