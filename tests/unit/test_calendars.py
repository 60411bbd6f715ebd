"""Trading calendars: holidays, half days, lunch breaks, override files and the horizon."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from shared.calendars import CalendarFileError, TradingCalendar, calendar, check_overrides
from shared.sessions import SESSIONS, in_session, is_trading_weekday
from shared.symbols import Market

SH = ZoneInfo("Asia/Shanghai")
HK = ZoneInfo("Asia/Hong_Kong")
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("market", "day", "is_open"),
    [
        (Market.CN, date(2026, 2, 16), False),  # Spring Festival
        (Market.CN, date(2026, 2, 23), False),
        (Market.CN, date(2026, 2, 24), True),
        (Market.CN, date(2026, 2, 14), False),  # a make-up working Saturday: still no trading
        (Market.CN, date(2026, 10, 1), False),  # National Day
        (Market.CN, date(2026, 10, 7), False),
        (Market.CN, date(2026, 10, 8), True),
        (Market.HK, date(2026, 12, 24), True),  # half day
        (Market.HK, date(2026, 12, 25), False),
        (Market.US, date(2026, 11, 26), False),  # Thanksgiving
        (Market.US, date(2026, 11, 27), True),  # early close
        (Market.US, date(2026, 12, 25), False),
        (Market.US, date(2026, 12, 28), True),
        # past the confirmed horizon (2026): the library's dates, not the bare weekday rule
        (Market.US, date(2028, 12, 25), False),  # Christmas on a Monday
        (Market.HK, date(2028, 12, 25), False),
        (Market.HK, date(2028, 12, 26), False),  # the first weekday after Christmas
        (Market.US, date(2028, 12, 26), True),
        (Market.US, date(2027, 12, 24), False),  # Christmas on a Saturday, observed on Friday
        (Market.HK, date(2027, 12, 24), True),  # a half day
        (Market.CN, date(2027, 2, 8), False),  # Spring Festival (estimated)
        (Market.CN, date(2027, 2, 11), True),
        (Market.CN, date(2027, 10, 1), False),  # National Day (estimated)
        (Market.CN, date(2028, 12, 25), True),
        *((m, date(y, 1, 1), False) for y in range(2027, 2036) for m in Market),  # New Year's Day
    ],
)
def test_trading_days(market: Market, day: date, is_open: bool) -> None:
    assert calendar(market).is_trading_day(day) is is_open
    assert is_trading_weekday(market, day) is is_open
    td = calendar(market).day(day)
    # a weekday's status past the horizon is the library's estimate, and says so
    assert td.estimated is (day.year > 2026 and day.weekday() < 5)
    assert td.confirmed is (day.year <= 2026)


def test_half_days_close_early() -> None:
    hk = calendar(Market.HK).day(date(2026, 12, 24))
    assert hk.half_day and hk.close == time(12, 0) and hk.quote_sessions == ((time(9, 0), time(12, 10)),)
    us = calendar(Market.US).day(date(2026, 11, 27))
    assert us.half_day and us.close == time(13, 0)
    assert calendar(Market.US).close_at(date(2026, 11, 27)) == datetime(2026, 11, 27, 13, 0, tzinfo=NY)
    assert not in_session(Market.HK, datetime(2026, 12, 24, 14, 0, tzinfo=HK))
    assert in_session(Market.HK, datetime(2026, 12, 23, 14, 0, tzinfo=HK))


def test_lunch_breaks() -> None:
    assert calendar(Market.CN).hours.lunch == (time(11, 30), time(13, 0))
    assert calendar(Market.HK).hours.lunch == (time(12, 0), time(13, 0))
    assert in_session(Market.CN, datetime(2026, 3, 2, 11, 0, tzinfo=SH))
    assert not in_session(Market.CN, datetime(2026, 3, 2, 12, 0, tzinfo=SH))
    assert not in_session(Market.HK, datetime(2026, 3, 2, 12, 30, tzinfo=HK))
    assert not in_session(Market.CN, datetime(2026, 10, 5, 10, 0, tzinfo=SH))  # holiday
    assert SESSIONS[Market.CN][0] == (time(9, 15), time(11, 30))


def test_horizon() -> None:
    cn = calendar(Market.CN)
    assert cn.confirmed(2026) and cn.confirmed(2020)  # the checked-in year and the library's history
    assert not cn.confirmed(2027) and not cn.confirmed(2030)
    assert cn.confirmed_through == 2026
    day = cn.day(date(2027, 2, 9))  # the library's Spring Festival: closed, marked as an estimate
    assert not day.is_open and not day.confirmed and day.estimated
    assert "Spring Festival" in day.note and "estimated: CN 2027 not confirmed" in day.note
    confirmed = cn.day(date(2026, 2, 16))
    assert not confirmed.is_open and confirmed.confirmed and not confirmed.estimated
    weekend = cn.day(date(2027, 2, 6))  # a weekend is no estimate
    assert not weekend.is_open and not weekend.estimated
    half = calendar(Market.HK).day(date(2027, 12, 24))  # the library's half days too
    assert half.half_day and half.close == time(12, 0) and half.estimated
    assert not in_session(Market.HK, datetime(2027, 12, 24, 14, 0, tzinfo=HK))
    assert not in_session(Market.US, datetime(2028, 12, 25, 10, 0, tzinfo=NY))  # the watchdog's view


def test_a_confirmed_file_takes_precedence_over_the_estimate(tmp_path: Path) -> None:
    write(tmp_path, "CN", 2026, "confirmed: true\nsource: test\n")
    write(tmp_path, "CN", 2027, "confirmed: true\nsource: test\nclosed: [2027-02-11]\nopen: [2027-02-05]\n")
    write(tmp_path, "CN", 2028, "confirmed: false\nsource: draft\nclosed: [2028-01-24]\n")
    cn = TradingCalendar(Market.CN, tmp_path)
    assert cn.confirmed_through == 2027
    closed = cn.day(date(2027, 2, 11))  # a longer Spring Festival than the library's
    assert not closed.is_open and closed.confirmed and not closed.estimated
    opened = cn.day(date(2027, 2, 5))  # the library's New Year's Eve, traded after all
    assert opened.is_open and not opened.estimated
    assert not cn.day(date(2027, 2, 8)).is_open and not cn.day(date(2027, 2, 8)).estimated  # the library, confirmed
    draft = cn.day(date(2028, 1, 24))  # a draft's corrections apply, still as estimates
    assert not draft.is_open and draft.estimated and "2028.yml" in draft.note


def write(root: Path, market: str, year: int, text: str) -> None:
    d = root / market
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{year}.yml").write_text(text)


def test_override_file_corrects_the_library(tmp_path: Path) -> None:
    write(
        tmp_path,
        "HK",
        2026,
        "confirmed: true\nsource: test\nclosed: [2026-09-16]\nopen: [2026-10-19]\nhalf_days: {2026-12-23: '12:00'}\n",
    )
    write(tmp_path, "HK", 2027, "confirmed: false\nsource: draft\n")
    hk = TradingCalendar(Market.HK, tmp_path)
    assert not hk.is_trading_day(date(2026, 9, 16))  # e.g. a typhoon closure, written down afterwards
    assert hk.is_trading_day(date(2026, 10, 19))
    assert hk.day(date(2026, 12, 23)).half_day
    assert hk.confirmed(2026) and not hk.confirmed(2027) and hk.confirmed_through == 2026


def test_bad_override_file_is_named(tmp_path: Path) -> None:
    write(tmp_path, "CN", 2026, "confirmed: true\nclosed: [2025-01-01]\n")
    with pytest.raises(CalendarFileError, match=r"CN/2026.yml: closed: 2025-01-01 is not in 2026"):
        TradingCalendar(Market.CN, tmp_path)
    write(tmp_path, "US", 2026, "confirmd: true\n")
    assert any("US/2026.yml: confirmd: unknown key" in p for p in check_overrides(tmp_path))


def test_checked_in_overrides_are_valid() -> None:
    assert check_overrides() == []
