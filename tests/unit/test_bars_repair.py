"""Gap repair in the bars: HistoryBars merged into minute and daily bars, one test per rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest

from services.datamanager.bars import BarAggregator, BarRow
from services.datamanager.repair import RepairOutcome, StoredWindow
from shared.dto import Bar, HistoryBars, HistoryState, Message, PriceUpdate

# AAPL on 2024-03-04 (a Monday), 09:31 New York time = 14:31 UTC
M = [datetime(2024, 3, 4, 14, 31, tzinfo=UTC) + timedelta(minutes=i) for i in range(10)]
TENCENT_FIELDS = ("close", "volume", "amount")


class At(NamedTuple):
    partition: int
    offset: int


def trade(price: float, at: datetime, size: float, symbol: str = "AAPL") -> PriceUpdate:
    return PriceUpdate(symbol=symbol, price=price, timestamp=at, source="alpaca", last_size=size)


def history(
    state: HistoryState,
    start: datetime,
    end: datetime,
    bars: list[tuple[datetime, float, float, float, float, float, float]] = (),  # type: ignore[assignment]
    fields: tuple[str, ...] | None = None,
    symbol: str = "AAPL",
    source: str = "alpaca",
) -> HistoryBars:
    extra = {"fields": fields} if fields is not None else {}
    return HistoryBars(
        symbol=symbol,
        start=start,
        end=end,
        source=source,
        state=state,
        timestamp=end,
        bars=tuple((at.timestamp() * 1000, *rest) for at, *rest in bars),  # type: ignore[misc]
        request_id="r1",
        **extra,  # type: ignore[arg-type]
    )


def traded() -> BarAggregator:
    """AAPL: minutes 0, 1 and 3 closed, minute 4 open (trade sizes: an aggregated day)."""
    agg = BarAggregator()
    for at, price, size in [
        (M[0] + timedelta(seconds=5), 100.0, 10),
        (M[0] + timedelta(seconds=40), 101.0, 5),
        (M[1] + timedelta(seconds=10), 102.0, 1),
        (M[3] + timedelta(seconds=1), 103.0, 2),
        (M[4] + timedelta(seconds=1), 104.0, 4),
    ]:
        assert agg.on_tick(trade(price, at, size)) is None
    agg.drain()
    agg.take_revised()
    return agg


def minutes(agg: BarAggregator, symbol: str = "AAPL") -> dict[datetime, Bar]:
    return {b.timestamp: b for b in agg.minute_bars(symbol)}


def figures(b: Bar) -> tuple[float, ...]:
    return (b.open, b.high, b.low, b.close, b.volume, b.amount)


def merge(agg: BarAggregator, h: HistoryBars, stored: StoredWindow | None = None) -> RepairOutcome:
    out = agg.on_history(h, stored)
    assert isinstance(out, RepairOutcome), out
    return out


@pytest.mark.parametrize("state", ["pending", "failed", "out_of_reach"])
def test_a_hole_not_yet_repaired_marks_the_minutes_of_its_window_incomplete(state: HistoryState) -> None:
    agg = traded()
    before = minutes(agg)
    out = merge(agg, history(state, M[1], M[4]))
    after = minutes(agg)
    assert (after[M[1]].quality, after[M[1]].revision) == ("incomplete", 1)
    assert (after[M[3]].quality, after[M[3]].revision) == ("incomplete", 1)
    assert figures(after[M[1]]) == figures(before[M[1]])  # our figures are kept
    assert (out.state, out.incomplete, out.replaced, out.added) == (state, 2, 0, 0)
    assert out.revised == {"incomplete": 2}
    # the same state again: already incomplete, nothing revised
    again = merge(agg, history(state, M[1], M[4]))
    assert again.revised == {} and minutes(agg)[M[1]].revision == 1


def test_bars_outside_the_window_are_unchanged() -> None:
    agg = traded()
    before = minutes(agg)
    provider = [(m, 50.0, 51.0, 49.0, 50.5, 7.0, 353.5) for m in M[:6]]  # rows beyond the window too
    merge(agg, history("repaired", M[1], M[3], provider))
    after = minutes(agg)
    for m in (M[0], M[3], M[4]):
        assert after[m] == before[m]
    assert M[5] not in after  # a provider row outside the window is not added
    assert {b.timestamp for b in agg.minute_bars("AAPL") if b.quality} == {M[1], M[2]}
    assert {k[2] for k in agg.take_revised() if k[1] == "1m"} == {
        round(M[1].timestamp() * 1000),
        round(M[2].timestamp() * 1000),
    }


def test_repaired_replaces_ours_adds_what_we_lacked_and_marks_what_the_provider_lacks() -> None:
    agg = traded()
    ours = minutes(agg)
    provider = [
        (M[0], 100.0, 101.5, 99.5, 101.0, 40.0, 4040.0),  # we had 15 shares of it
        (M[2], 102.0, 102.5, 101.8, 102.2, 9.0, 920.0),  # we had no tick in minute 2
    ]
    out = merge(agg, history("repaired", M[0], M[4], provider, source="alpaca-sip"))
    got = minutes(agg)
    assert figures(got[M[0]]) == (100.0, 101.5, 99.5, 101.0, 40.0, 4040.0)
    assert (got[M[0]].quality, got[M[0]].revision, got[M[0]].source) == ("repaired", 1, "alpaca-sip")
    assert figures(got[M[2]]) == (102.0, 102.5, 101.8, 102.2, 9.0, 920.0)
    assert (got[M[2]].quality, got[M[2]].revision) == ("repaired", 0)  # added
    for m in (M[1], M[3]):  # we have them, the provider has not: the sources disagree
        assert figures(got[m]) == figures(ours[m]) and (got[m].quality, got[m].revision) == ("incomplete", 1)
    assert got[M[4]] == ours[M[4]]
    assert [b.timestamp for b in agg.minute_bars("AAPL")] == M[:5]  # in order
    assert (out.state, out.replaced, out.added, out.incomplete) == ("repaired", 1, 1, 2)
    assert out.revised == {"repaired": 2, "incomplete": 2}


def test_a_repair_that_changes_nothing_revises_nothing() -> None:
    agg = traded()
    provider = [(M[0], 100.0, 101.5, 99.5, 101.0, 40.0, 4040.0)]
    merge(agg, history("repaired", M[0], M[1], provider))
    agg.drain()
    agg.take_revised()
    again = merge(agg, history("repaired", M[0], M[1], provider))
    assert (again.replaced, again.revised) == (1, {})
    assert minutes(agg)[M[0]].revision == 1 and agg.take_revised() == set()


def test_close_volume_amount_only_is_partial_with_our_open_and_widened_high_low() -> None:
    agg = traded()  # minute 0: o 100, h 101, l 100, c 101; minute 1: 102 flat
    provider = [
        (M[0], 0.0, 0.0, 0.0, 99.0, 30.0, 2980.0),  # a close below our low
        (M[1], 0.0, 0.0, 0.0, 102.5, 3.0, 307.0),
        (M[2], 0.0, 0.0, 0.0, 102.4, 2.0, 204.8),  # one we lacked
    ]
    out = merge(agg, history("repaired", M[0], M[3], provider, fields=TENCENT_FIELDS, source="tencent"))
    got = minutes(agg)
    assert figures(got[M[0]]) == (100.0, 101.0, 99.0, 99.0, 30.0, 2980.0)
    assert figures(got[M[1]]) == (102.0, 102.5, 102.0, 102.5, 3.0, 307.0)
    assert figures(got[M[2]]) == (102.4, 102.4, 102.4, 102.4, 2.0, 204.8)
    assert {got[m].quality for m in M[:3]} == {"partial"}
    assert out.state == "partial" and out.revised == {"partial": 3}


def test_history_without_a_close_is_refused() -> None:
    agg = traded()
    assert agg.on_history(history("repaired", M[0], M[1], [(M[0], 1, 1, 1, 1, 1, 1)], fields=("volume",))) == (
        "history_fields"
    )


def test_an_aggregated_daily_bar_moves_by_each_replaced_minute() -> None:
    agg = traded()  # day: o 100, h 104, l 100, c 104, volume 22
    day = agg.daily_bar("AAPL")
    assert day is not None and (day.volume, day.amount) == (22, 1000 + 505 + 102 + 206 + 416)
    provider = [
        (M[0], 100.0, 101.5, 99.5, 101.0, 40.0, 4040.0),  # +25 shares, +2535
        (M[2], 102.0, 105.0, 101.8, 102.2, 9.0, 920.0),  # added: +9, +920, a new day high
    ]
    merge(agg, history("repaired", M[0], M[3], provider))
    after = agg.daily_bar("AAPL")
    assert after is not None
    assert (after.open, after.high, after.low, after.close) == (100.0, 105.0, 99.5, 104.0)
    assert (after.volume, after.amount) == (22 + 25 + 9, 2229 + 2535 + 920)
    assert after.revision == 1
    assert ("AAPL", "1d", round(day.timestamp.timestamp() * 1000)) in agg.take_revised()


def test_a_daily_bar_with_the_sources_own_day_figures_is_untouched() -> None:
    agg = BarAggregator()
    t0 = datetime(2024, 3, 4, 1, 31, 5, tzinfo=UTC)  # 09:31 Shanghai
    for i, (p, v) in enumerate([(10.0, 1000), (10.1, 1500), (10.2, 1800)]):
        tick = PriceUpdate(
            symbol="600000.SH", price=p, timestamp=t0 + timedelta(minutes=i), source="eastmoney",
            volume=v, amount=v * p, open_price=10.0, high_price=10.2, low_price=9.9,
        )  # fmt: skip
        assert agg.on_tick(tick) is None
    day = agg.daily_bar("600000.SH")
    m0 = datetime(2024, 3, 4, 1, 31, tzinfo=UTC)
    h = history(
        "repaired", m0, m0 + timedelta(minutes=2), [(m0, 10.0, 10.3, 9.9, 10.1, 900.0, 9100.0)], symbol="600000.SH"
    )
    merge(agg, h)
    assert agg.daily_bar("600000.SH") == day
    assert figures(minutes(agg, "600000.SH")[m0]) == (10.0, 10.3, 9.9, 10.1, 900.0, 9100.0)


def test_a_late_tick_for_a_repaired_or_partial_minute_is_ignored() -> None:
    agg = BarAggregator(late_grace_s=120)
    agg.on_tick(trade(100.0, M[0] + timedelta(seconds=5), 10))
    agg.on_tick(trade(101.0, M[1] + timedelta(seconds=5), 10))
    agg.on_tick(trade(102.0, M[2] + timedelta(seconds=5), 10))
    merge(agg, history("repaired", M[0], M[1], [(M[0], 100.0, 100.5, 99.0, 100.2, 50.0, 5010.0)]))
    merge(agg, history("repaired", M[1], M[2], [(M[1], 0, 0, 0, 101.5, 20.0, 2030.0)], fields=TENCENT_FIELDS))
    day = agg.daily_bar("AAPL")
    assert agg.on_tick(trade(90.0, M[0] + timedelta(seconds=30), 7)) == "repaired_minute"
    assert agg.on_tick(trade(91.0, M[1] + timedelta(seconds=30), 7)) == "repaired_minute"
    got = minutes(agg)
    assert figures(got[M[0]]) == (100.0, 100.5, 99.0, 100.2, 50.0, 5010.0)
    assert got[M[1]].close == 101.5 and got[M[1]].volume == 20.0
    assert agg.daily_bar("AAPL") == day  # nothing of them in the day either
    assert agg.rejected == {"repaired_minute": 2}
    # an incomplete minute still takes its late ticks
    merge(agg, history("pending", M[2], M[3]))
    assert agg.on_tick(trade(101.9, M[2] + timedelta(seconds=1), 3)) is None
    assert minutes(agg)[M[2]].volume == 13 and minutes(agg)[M[2]].quality == "incomplete"


def test_a_repair_of_the_open_minute_replaces_it_and_newer_ticks_add_to_it() -> None:
    agg = traded()  # minute 4 open: one trade of 4 at 104
    out = merge(agg, history("repaired", M[4], M[5], [(M[4], 103.5, 104.5, 103.0, 104.2, 30.0, 3126.0)]))
    assert out.replaced == 1
    rows = [r for r in agg.drain() if r.period == "1m" and r.start_ms == round(M[4].timestamp() * 1000)]
    assert rows and (rows[-1].quality, rows[-1].revision, rows[-1].volume) == ("repaired", 1, 30.0)
    assert agg.on_tick(trade(104.0, M[4] + timedelta(seconds=0.5), 1)) == "repaired_minute"  # late: before the newest
    assert agg.on_tick(trade(105.0, M[4] + timedelta(seconds=20), 2)) is None  # a newer trade
    b = minutes(agg)[M[4]]
    assert (b.high, b.close, b.volume, b.quality) == (105.0, 105.0, 32.0, "repaired")


def test_minutes_a_repair_added_beyond_our_ticks_are_final_and_keep_their_order() -> None:
    agg = traded()  # newest tick in minute 4
    merge(
        agg, history("repaired", M[5], M[8], [(M[5], 104, 104, 104, 104, 1, 104), (M[7], 105, 105, 105, 105, 1, 105)])
    )
    assert agg.on_tick(trade(106.0, M[5] + timedelta(seconds=30), 1)) == "repaired_minute"
    assert agg.on_tick(trade(107.0, M[6] + timedelta(seconds=30), 1)) is None  # the provider had no trade in 6
    assert agg.on_tick(trade(108.0, M[8] + timedelta(seconds=30), 1)) is None
    got = agg.minute_bars("AAPL")
    assert [b.timestamp for b in got] == M[:2] + M[3:9]
    assert [b.close for b in got][-4:] == [104.0, 107.0, 105.0, 108.0]


def test_ticks_and_history_fold_in_record_order() -> None:
    agg = BarAggregator()
    batch: list[tuple[At, Message]] = [
        (At(0, 1), trade(100.0, M[0] + timedelta(seconds=1), 1)),
        (At(0, 2), history("pending", M[0], M[2])),
        (At(0, 3), trade(101.0, M[1] + timedelta(seconds=1), 1)),  # after the mark: built from ticks
        (At(0, 4), history("repaired", M[0], M[1], [(M[0], 99.0, 100.0, 98.0, 99.5, 10.0, 995.0)])),
    ]
    report = agg.fold(batch, M[9].timestamp())
    assert [r.state for r in report.repairs] == ["pending", "repaired"]
    got = minutes(agg)
    assert (got[M[0]].quality, got[M[0]].revision, got[M[0]].close) == ("repaired", 2, 99.5)
    assert got[M[1]].quality is None
    # the same batch again (a replay after a crash): the history is known to be merged
    again = agg.fold(batch, M[9].timestamp())
    assert [r.revised for r in again.repairs] == [{}, {}] and minutes(agg)[M[0]].revision == 2


def test_minutes_memory_no_longer_holds_are_revised_from_the_stored_rows() -> None:
    agg = BarAggregator(minute_history=2)
    for i in range(6):  # minutes 0..5; memory keeps 2 closed and the open one
        agg.on_tick(trade(100.0 + i, M[i] + timedelta(seconds=1), 10))
    stored_rows = [r for r in agg.drain() if r.period == "1m"]
    assert agg.stored_span(history("pending", M[0], M[2])) is not None
    assert agg.stored_span(history("pending", M[4], M[6])) is None
    day = agg.daily_bar("AAPL")
    assert day is not None
    daily = BarRow(
        "AAPL", "1d", round(day.timestamp.timestamp() * 1000), M[0].date(), day.open, day.high, day.low, day.close,
        day.volume, day.amount, None, "alpaca/aggregated", 0, 0, 0, None, None,
    )  # fmt: skip
    stored = StoredWindow([*stored_rows, daily])
    ours_m1 = next(r for r in stored_rows if r.start_ms == round(M[1].timestamp() * 1000))
    stored.add([ours_m1._replace(quality="incomplete", revision=3)])
    h = history("repaired", M[0], M[2], [(M[1], 101.0, 101.5, 100.5, 101.2, 25.0, 2530.0)])
    out = merge(agg, h, stored)
    rows = {(r.period, r.start_ms): r for r in agg.drain()}
    m1 = rows[("1m", round(M[1].timestamp() * 1000))]
    m0 = rows[("1m", round(M[0].timestamp() * 1000))]
    assert (m1.close, m1.volume, m1.quality, m1.revision) == (101.2, 25.0, "repaired", 4)
    assert (m0.close, m0.quality, m0.revision) == (100.0, "incomplete", 1)
    assert (out.replaced, out.incomplete) == (1, 1)
    # the day is held in memory: it moves by the replaced minute (+15 shares)
    after = agg.daily_bar("AAPL")
    assert after is not None and after.volume == day.volume + 15


def test_a_stored_day_of_an_earlier_date_moves_as_a_row() -> None:
    agg = BarAggregator()
    prev = datetime(2024, 3, 1, 14, 31, tzinfo=UTC)  # the Friday before
    minute = BarRow(
        "AAPL",
        "1m",
        round(prev.timestamp() * 1000),
        prev.date(),
        10,
        11,
        9,
        10,
        5,
        50,
        None,
        "alpaca",
        0,
        0,
        0,
        None,
        None,
    )
    day = BarRow(
        "AAPL",
        "1d",
        round(datetime(2024, 3, 1, 5, tzinfo=UTC).timestamp() * 1000),
        prev.date(),
        10,
        12,
        9,
        11,
        500,
        5000,
        None,
        "alpaca/aggregated",
        0,
        0,
        0,
        None,
        None,
    )
    out = merge(
        agg,
        history("repaired", prev, prev + timedelta(minutes=1), [(prev, 10, 13, 9, 10, 8, 80)]),
        StoredWindow([minute, day]),
    )
    rows = {r.period: r for r in agg.drain()}
    assert (rows["1m"].high, rows["1m"].revision, rows["1m"].quality) == (13, 1, "repaired")
    assert (rows["1d"].volume, rows["1d"].amount, rows["1d"].high, rows["1d"].revision) == (503, 5030, 13, 1)
    assert out.replaced == 1


def test_restore_brings_quality_and_revision_back() -> None:
    agg = traded()
    merge(agg, history("repaired", M[4], M[5], [(M[4], 103.5, 104.5, 103.0, 104.2, 30.0, 3126.0)]))
    rows = agg.drain()
    second = BarAggregator()
    second.restore(rows)
    b = minutes(second)[M[4]]
    assert (b.quality, b.revision, b.source, b.volume) == ("repaired", 1, "alpaca", 30.0)
    assert second.on_tick(trade(104.0, M[4] + timedelta(seconds=0.5), 1)) == "repaired_minute"
    # memory holds from the restored minute on; earlier windows come from the store
    assert second.stored_span(history("pending", M[3], M[5])) is not None
    assert second.stored_span(history("pending", M[4], M[5])) is None


def test_marks_of_minutes_memory_drops_are_dropped_with_them() -> None:
    agg = BarAggregator(minute_history=3)
    for i in range(4):
        agg.on_tick(trade(100.0 + i, M[i] + timedelta(seconds=1), 1))
    merge(agg, history("pending", M[0], M[4]))
    assert len(agg.incomplete_held()["AAPL"]) == 4
    for i in range(4, 8):
        agg.on_tick(trade(100.0 + i, M[i] + timedelta(seconds=1), 1))
    assert "AAPL" not in agg.incomplete_held()  # only the 3 newest closed minutes are held


def test_a_symbol_without_bars_gets_the_provider_minutes_as_rows() -> None:
    agg = BarAggregator()
    out = merge(
        agg, history("repaired", M[0], M[2], [(M[0], 10, 11, 9, 10.5, 100, 1050), (M[1], 10, 10, 10, 10, 1, 10)])
    )
    rows = agg.drain()
    assert [(r.period, r.quality, r.revision) for r in rows] == [("1m", "repaired", 0), ("1m", "repaired", 0)]
    assert out.added == 2 and rows[0].trading_day.isoformat() == "2024-03-04"


def test_a_bad_provider_row_is_skipped() -> None:
    agg = traded()
    out = merge(agg, history("repaired", M[0], M[1], [(M[0], float("nan"), 1, 1, 1, 1, 1)]))
    assert out.replaced == 0 and out.incomplete == 1 and agg.rejected == {"history_bad_bar": 1}
