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
    ],
)
def test_trading_days(market: Market, day: date, is_open: bool) -> None:
    assert calendar(market).is_trading_day(day) is is_open
    assert is_trading_weekday(market, day) is is_open


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
    assert not cn.confirmed(2030)
    day = cn.day(date(2030, 2, 4))  # estimated Spring Festival: the weekday rule, flagged
    assert day.is_open and not day.confirmed


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
