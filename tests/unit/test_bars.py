"""Bar aggregation: cumulative vs trade volumes, minute and day boundaries, quality checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.datamanager.bars import BarAggregator
from shared.dto import PriceUpdate

# 2024-03-04 09:31:10 in Shanghai
T = datetime(2024, 3, 4, 1, 31, 10, tzinfo=UTC)


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
    agg.clock_limit = T.timestamp() + 60
    assert agg.on_tick(tick("AAPL", 30.0, datetime(2100, 1, 1, tzinfo=UTC))) == "future_timestamp"
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
