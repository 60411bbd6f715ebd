"""Bar aggregation: cumulative vs trade volumes, minute and day boundaries, quality checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from services.datamanager.bars import BarAggregator
from shared.dto import PriceUpdate

# 2024-03-04 09:31:10 in Shanghai
T = datetime(2024, 3, 4, 1, 31, 10, tzinfo=UTC)


class At(NamedTuple):
    """Where a folded tick came from, as a consumer record says."""

    partition: int
    offset: int


def tick(
    symbol: str,
    price: float,
    at: datetime,
    volume: float | None = None,
    amount: float | None = None,
    size: float | None = None,
) -> PriceUpdate:
    return PriceUpdate(
        symbol=symbol, price=price, timestamp=at, source="t", volume=volume, amount=amount, last_size=size
    )


def test_cumulative_volume_is_differenced_per_minute() -> None:
    agg = BarAggregator()
    assert agg.on_tick(tick("600000.SH", 10.0, T, volume=1000, amount=10_000)) is None
    agg.on_tick(tick("600000.SH", 10.2, T + timedelta(seconds=20), volume=1500, amount=15_100))
    agg.on_tick(tick("600000.SH", 9.9, T + timedelta(seconds=55), volume=1800, amount=18_070))  # next minute
    bars = agg.minute_bars("600000.SH")
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in bars] == [
        (10.0, 10.2, 10.0, 10.2, 500),
        (9.9, 9.9, 9.9, 9.9, 300),
    ]
    assert bars[0].timestamp == datetime(2024, 3, 4, 1, 31, tzinfo=UTC)
    assert bars[1].amount == 2970
    day = agg.daily_bar("600000.SH")
    assert day is not None
    assert (day.open, day.high, day.low, day.close, day.volume, day.amount) == (10.0, 10.2, 9.9, 9.9, 1800, 18_070)
    assert day.trading_day == "2024-03-04"
    assert day.timestamp == datetime(2024, 3, 3, 16, 0, tzinfo=UTC)  # local midnight


def test_trade_sizes_are_summed() -> None:
    agg = BarAggregator()
    for i, (p, s) in enumerate([(100.0, 10), (101.0, 5), (99.5, 20)]):
        agg.on_tick(tick("AAPL", p, T + timedelta(seconds=i), size=s))
    day = agg.daily_bar("AAPL")
    assert day is not None and day.volume == 35 and day.amount == 100 * 10 + 101 * 5 + 99.5 * 20


def test_cumulative_decrease_adds_nothing() -> None:
    agg = BarAggregator()
    agg.on_tick(tick("00700.HK", 300.0, T, volume=5000))
    agg.on_tick(tick("00700.HK", 301.0, T + timedelta(seconds=1), volume=4000))  # correction
    agg.on_tick(tick("00700.HK", 302.0, T + timedelta(seconds=2), volume=4100))
    assert [b.volume for b in agg.minute_bars("00700.HK")] == [100]


def test_new_trading_day_in_market_timezone() -> None:
    agg = BarAggregator()
    # 23:59 and 00:01 New York time fall on different US trading days
    ny_late = datetime(2024, 3, 5, 4, 59, tzinfo=UTC)
    agg.on_tick(tick("AAPL", 100.0, ny_late, size=1))
    agg.on_tick(tick("AAPL", 101.0, ny_late + timedelta(minutes=2), size=2))
    day = agg.daily_bar("AAPL")
    assert day is not None and day.trading_day == "2024-03-05" and day.open == 101.0 and day.volume == 2
    assert day.change == 1.0 and day.change_pct == 1.0  # against the previous day's close


def test_quality_rejections_are_counted() -> None:
    agg = BarAggregator(late_grace_s=5)
    assert agg.on_tick(tick("AAPL", 0.0, T)) == "non_positive_price"
    assert agg.on_tick(tick("AAPL", float("nan"), T)) == "bad_price"
    assert agg.on_tick(tick("AAPL", float("inf"), T)) == "bad_price"
    assert agg.on_tick(tick("AAPL", 1e308, T)) == "bad_price"
    assert agg.on_tick(tick("AAPL", 10.0, T, volume=-1)) == "negative_volume"
    assert agg.on_tick(tick("AAPL", 10.0, T)) is None
    assert agg.on_tick(tick("AAPL", 10.0, T - timedelta(seconds=6))) == "late"
    assert agg.on_tick(tick("AAPL", 30.0, T)) is None  # a real move is never dropped
    assert agg.on_tick(tick("AAPL", 30.0, T)) == "duplicate"
    assert agg.on_tick(tick("AAPL", 30.01, T)) is None  # same instant, another price: a real tick
    future = agg.fold([(At(0, 1), tick("AAPL", 30.0, datetime(2100, 1, 1, tzinfo=UTC)))], T.timestamp() + 60)
    assert future.rejected == {"future_timestamp": 1}
    assert agg.on_tick(tick("AAPL", 30.2, T + timedelta(seconds=1))) is None  # not frozen
    assert agg.rejected == {
        "non_positive_price": 1,
        "bad_price": 3,
        "negative_volume": 1,
        "late": 1,
        "duplicate": 1,
        "future_timestamp": 1,
    }


def test_close_due_closes_on_a_timer() -> None:
    agg = BarAggregator()
    agg.on_tick(tick("AAPL", 10.0, T, size=1))
    assert agg.close_due(T + timedelta(seconds=30)) == 0
    assert agg.close_due(T + timedelta(seconds=51)) == 1  # the 01:31 minute has ended
    assert len(agg.minute_bars("AAPL")) == 1
    agg.on_tick(tick("AAPL", 10.5, T + timedelta(minutes=5), size=1))
    assert [b.close for b in agg.minute_bars("AAPL")] == [10.0, 10.5]


def test_minute_history_is_bounded() -> None:
    agg = BarAggregator(minute_history=3)
    for i in range(10):
        agg.on_tick(tick("AAPL", 10.0 + i * 0.01, T + timedelta(minutes=i), size=1))
    assert len(agg.minute_bars("AAPL")) == 4  # 3 closed + the open one


# -- a recorded CN sequence: lunch break, late ticks, a redelivered batch -----------------

SH = timedelta(hours=8)


def sh(hms: str) -> datetime:
    """2024-03-04 (a Monday) at ``hms`` Shanghai time, as UTC."""
    h, m, s = (int(x) for x in hms.split(":"))
    return datetime(2024, 3, 4, h, m, s, tzinfo=UTC) - SH


RECORDED = [  # offset, Shanghai time, price, day cumulative volume, day cumulative amount
    (0, "11:29:05", 10.00, 1000, 10_000),
    (1, "11:29:40", 10.10, 1500, 15_050),
    (2, "11:29:59", 10.05, 1600, 16_055),
    (3, "13:00:02", 10.20, 2000, 20_135),
    (4, "13:00:30", 10.15, 2100, 21_150),
    (5, "13:00:25", 10.30, 2050, 20_640),  # late by 5 s: revises the open 13:00 bar
    (6, "13:01:10", 10.25, 2300, 23_200),
    (7, "13:00:50", 10.40, 2250, 22_700),  # late by 20 s: revises the closed 13:00 bar
    (8, "13:00:20", 9.00, 2200, 22_000),  # late by 50 s: beyond the grace, ignored
]


def recorded(agg: BarAggregator, rows: list[tuple[int, str, float, int, int]]) -> list[str | None]:
    return [agg.on_tick(tick("600000.SH", p, sh(t), volume=v, amount=a), 0, o) for o, t, p, v, a in rows]


def test_recorded_sequence_gives_hand_computed_bars() -> None:
    agg = BarAggregator(late_grace_s=30)
    assert recorded(agg, RECORDED[:3]) == [None] * 3
    assert agg.close_due(sh("11:30:01")) == 1  # the 11:29 bar closes on the timer at its end
    before_lunch = agg.drain()
    assert [(r.period, r.close) for r in before_lunch if r.period == "1m"] == [("1m", 10.05)]
    assert recorded(agg, RECORDED[3:7]) == [None] * 4
    agg.drain()
    assert recorded(agg, RECORDED[7:]) == [None, "late"]
    revised = [r for r in agg.drain() if r.period == "1m" and r.start_ms == round(sh("13:00:00").timestamp() * 1000)]
    assert revised and revised[0].high == 10.40  # the revision is handed to the store
    # the same batch delivered again (a replay after a crash) changes nothing
    assert recorded(agg, RECORDED[3:]) == ["redelivered"] * 6
    bars = [(b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.amount) for b in agg.minute_bars("600000.SH")]
    assert bars == [
        (sh("11:29:00"), 10.00, 10.10, 10.00, 10.05, 600, 6055),
        # no bars for 11:30-12:59: the lunch break has no ticks, so no empty bars
        (sh("13:00:00"), 10.20, 10.40, 10.15, 10.15, 500, 5095),
        (sh("13:01:00"), 10.25, 10.25, 10.25, 10.25, 200, 2050),
    ]
    day = agg.daily_bar("600000.SH")
    assert day is not None
    assert (day.open, day.high, day.low, day.close, day.volume, day.amount) == (10.0, 10.4, 10.0, 10.25, 2300, 23_200)
    assert agg.rejected == {"late": 1, "redelivered": 6}
    assert agg.revisions == 2


def test_daily_bar_takes_the_sources_day_figures_when_started_late() -> None:
    agg = BarAggregator()
    late = PriceUpdate(
        symbol="600000.SH",
        price=10.5,
        timestamp=sh("11:00:00"),
        source="eastmoney",
        volume=1_234_500,
        amount=12_600_000,
        open_price=10.0,
        high_price=10.8,
        low_price=9.7,
        prev_close=9.9,
    )
    assert agg.on_tick(late) is None
    day = agg.daily_bar("600000.SH")
    assert day is not None
    assert (day.open, day.high, day.low, day.close, day.volume, day.amount) == (
        10.0,
        10.8,
        9.7,
        10.5,
        1_234_500,
        12_600_000,
    )
    assert (day.change, day.change_pct, day.source) == (0.6, 6.0606, "eastmoney")
    # a trade stream has no day figures: aggregated from what was seen, and said so
    agg.on_tick(tick("AAPL", 190.0, T, size=100))
    aapl = agg.daily_bar("AAPL")
    assert aapl is not None and aapl.source == "t/aggregated" and aapl.volume == 100


def test_moves_beyond_the_board_limit_are_flagged_not_dropped() -> None:
    agg = BarAggregator(st_symbols=frozenset({"600001.SH"}))
    cases = [
        ("600000.SH", 11.2, True),  # main board: 10 %
        ("600002.SH", 10.9, False),
        ("300750.SZ", 11.9, False),  # ChiNext: 20 %
        ("688001.SH", 12.6, True),  # STAR: 20 %
        ("430047.BJ", 12.9, False),  # BJ: 30 %
        ("600001.SH", 10.6, True),  # ST: 5 %
        ("00700.HK", 14.0, False),  # no daily limit; flagged only past 50 %
    ]
    batch = [
        (At(0, i), PriceUpdate(symbol=s, price=p, timestamp=T + timedelta(seconds=i), source="t", prev_close=10.0))
        for i, (s, p, _) in enumerate(cases)
    ]
    report = agg.fold(batch, T.timestamp() + 60)
    assert report.rejected == {} and not report.failed
    assert [f.symbol for f in report.flags] == [s for s, _, flagged in cases if flagged]
    assert agg.rejected == {}


def test_board_limits() -> None:
    from services.datamanager.quality import board_limit

    assert board_limit("600000.SH") == 0.10
    assert board_limit("000001.SZ") == 0.10
    assert board_limit("300750.SZ") == board_limit("688981.SH") == 0.20
    assert board_limit("430047.BJ") == 0.30
    assert board_limit("600000.SH", st=True) == 0.05
    assert board_limit("600000.SH", no_limit=True) is None  # e.g. an IPO's first days


def test_restore_from_stored_rows_continues_without_double_counting() -> None:
    first = BarAggregator()
    for o, (dt, p, size) in enumerate([(0, 100.0, 10), (20, 101.0, 5), (70, 99.0, 7)]):
        first.on_tick(tick("AAPL", p, T + timedelta(seconds=dt), size=size), 2, o)
    rows = first.drain()
    second = BarAggregator()
    assert second.restore(rows) == 1
    # the replay of what was stored is recognised; the next tick continues the open minute
    assert second.on_tick(tick("AAPL", 99.0, T + timedelta(seconds=70), size=7), 2, 2) == "redelivered"
    assert second.on_tick(tick("AAPL", 98.0, T + timedelta(seconds=75), size=3), 2, 3) is None
    day = second.daily_bar("AAPL")
    assert day is not None and (day.open, day.low, day.close, day.volume) == (100.0, 98.0, 98.0, 25)
    assert [(b.open, b.close, b.volume) for b in second.minute_bars("AAPL")] == [(99.0, 98.0, 10)]


def test_trade_corrections_and_cancels_revise_the_bars_they_fell_in() -> None:
    from shared.dto import TradeCorrection

    agg = BarAggregator()
    # AAPL at 14:30:10 UTC (09:30:10 New York): two trades this minute, one the next
    t0 = datetime(2024, 3, 4, 14, 30, 10, tzinfo=UTC)
    agg.on_tick(tick("AAPL", 100.0, t0, size=10))
    agg.on_tick(tick("AAPL", 101.0, t0 + timedelta(seconds=5), size=5))
    agg.on_tick(tick("AAPL", 102.0, t0 + timedelta(seconds=60), size=20))  # closes the first minute
    corrected = TradeCorrection(
        symbol="AAPL",
        original_id=1,
        original_price=100.0,
        original_size=10,
        corrected_price=100.5,
        corrected_size=12,
        timestamp=t0,
        source="alpaca",
    )
    cancelled = TradeCorrection(
        symbol="AAPL",
        original_id=3,
        original_price=102.0,
        original_size=20,
        cancelled=True,
        timestamp=t0 + timedelta(seconds=60),
        source="alpaca",
    )
    assert agg.on_correction(corrected) is None  # in the closed minute
    assert agg.on_correction(cancelled) is None  # in the open minute
    first, second = agg.minute_bars("AAPL")
    assert (first.volume, first.amount, first.high) == (17, 100.5 * 12 + 101 * 5, 101.0)
    assert (second.volume, second.amount) == (0, 0)
    day = agg.daily_bar("AAPL")
    assert day is not None and day.volume == 17 and day.amount == 100.5 * 12 + 101 * 5
    unknown = TradeCorrection(
        symbol="MSFT", original_id=9, original_price=1, original_size=1, timestamp=t0, source="alpaca"
    )
    assert agg.on_correction(unknown) == "correction_unknown_symbol"
