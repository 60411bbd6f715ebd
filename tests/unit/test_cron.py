"""Cron maths from a table: standard day-of-week, names, month ends, DST, calendars, horizon."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from services.tasktimer.cron import fire_id, horizon_note, missed, next_fire, next_fires, schedule_fingerprint
from services.tasktimer.jobs import check_file
from shared.config import JobSettings

SH = ZoneInfo("Asia/Shanghai")
HK = ZoneInfo("Asia/Hong_Kong")
NY = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def job(cron: str, tz: str = "Asia/Shanghai", calendar: str | None = None) -> JobSettings:
    return JobSettings.model_validate({"name": "j", "cron": cron, "command": "c", "timezone": tz, "calendar": calendar})


@pytest.mark.parametrize(
    ("cron", "tz", "after", "expected"),
    [
        # 1-5 is Monday-Friday (2024-03-01 is a Friday): Saturday is skipped
        (
            "5 15 * * 1-5",
            "Asia/Shanghai",
            datetime(2024, 3, 1, 15, 5, tzinfo=SH),
            datetime(2024, 3, 4, 15, 5, tzinfo=SH),
        ),
        (
            "5 15 * * 1-5",
            "Asia/Shanghai",
            datetime(2024, 3, 1, 15, 4, 59, tzinfo=SH),
            datetime(2024, 3, 1, 15, 5, tzinfo=SH),
        ),
        # 1-5 never fires on a Sunday (2024-03-03) nor a Saturday
        ("0 9 * * 1-5", "Asia/Shanghai", datetime(2024, 3, 2, 10, 0, tzinfo=SH), datetime(2024, 3, 4, 9, 0, tzinfo=SH)),
        # 0 and 7 are Sunday
        ("0 9 * * 0", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2024, 3, 3, 9, 0, tzinfo=SH)),
        ("0 9 * * 7", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2024, 3, 3, 9, 0, tzinfo=SH)),
        # names for days and months
        ("0 9 * * sun", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2024, 3, 3, 9, 0, tzinfo=SH)),
        ("0 9 * * mon-fri", "Asia/Shanghai", datetime(2024, 3, 2, tzinfo=SH), datetime(2024, 3, 4, 9, 0, tzinfo=SH)),
        ("0 0 1 jan *", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2025, 1, 1, 0, 0, tzinfo=SH)),
        # month ends: the 31st skips 30-day months, L is the last day, Feb 29 in a leap year
        ("0 12 31 * *", "Asia/Shanghai", datetime(2024, 4, 1, tzinfo=SH), datetime(2024, 5, 31, 12, 0, tzinfo=SH)),
        ("0 12 L * *", "Asia/Shanghai", datetime(2024, 2, 1, tzinfo=SH), datetime(2024, 2, 29, 12, 0, tzinfo=SH)),
        ("0 12 L * *", "Asia/Shanghai", datetime(2025, 2, 1, tzinfo=SH), datetime(2025, 2, 28, 12, 0, tzinfo=SH)),
        ("0 0 29 2 *", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2028, 2, 29, 0, 0, tzinfo=SH)),
        # day-of-month and day-of-week both restricted: either matches (standard cron)
        ("0 9 1 * 1", "Asia/Shanghai", datetime(2024, 3, 2, tzinfo=SH), datetime(2024, 3, 4, 9, 0, tzinfo=SH)),
        # every minute, strictly after
        (
            "* * * * *",
            "Asia/Shanghai",
            datetime(2024, 3, 1, 10, 0, 30, tzinfo=SH),
            datetime(2024, 3, 1, 10, 1, tzinfo=SH),
        ),
        ("* * * * *", "Asia/Shanghai", datetime(2024, 3, 1, 10, 1, tzinfo=SH), datetime(2024, 3, 1, 10, 2, tzinfo=SH)),
        # the job's timezone, not the caller's; across the US DST switch (2024-03-10)
        (
            "30 9 * * *",
            "America/New_York",
            datetime(2024, 3, 9, 15, 0, tzinfo=UTC),
            datetime(2024, 3, 10, 9, 30, tzinfo=NY),
        ),
        (
            "30 9 * * *",
            "America/New_York",
            datetime(2024, 3, 10, 14, 0, tzinfo=UTC),
            datetime(2024, 3, 11, 9, 30, tzinfo=NY),
        ),
        # spring forward 2026-03-08: 02:30 does not exist, fires once at 03:00 EDT
        (
            "30 2 * * *",
            "America/New_York",
            datetime(2026, 3, 7, 12, 0, tzinfo=NY),
            datetime(2026, 3, 8, 3, 0, tzinfo=NY),
        ),
        (
            "30 2 * * *",
            "America/New_York",
            datetime(2026, 3, 8, 3, 0, tzinfo=NY),
            datetime(2026, 3, 9, 2, 30, tzinfo=NY),
        ),
    ],
)
def test_next_fire(cron: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_fire(job(cron, tz), after)
    assert got == expected
    assert got.utcoffset() == expected.utcoffset()


def test_fall_back_fires_a_repeated_hour_once() -> None:
    """2026-11-01 America/New_York: 01:30 happens twice (EDT, then EST); the job fires once."""
    fires = next_fires(job("30 1 * * *", "America/New_York"), datetime(2026, 10, 31, 12, 0, tzinfo=NY), 3)
    assert [f.astimezone(UTC) for f in fires] == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),  # 01:30 EST, the next day
        datetime(2026, 11, 3, 6, 30, tzinfo=UTC),
    ]
    assert len({fire_id(job("30 1 * * *"), f) for f in fires}) == 3


def test_fall_back_every_quarter_hour_fires_each_real_instant_once() -> None:
    after = datetime(2026, 11, 1, 0, 50, tzinfo=NY)
    fires = next_fires(job("*/15 * * * *", "America/New_York"), after, 9)
    utc = [f.astimezone(UTC) for f in fires]
    assert utc == sorted(set(utc))  # strictly increasing: no instant twice
    assert utc[0] == datetime(2026, 11, 1, 5, 0, tzinfo=UTC) and utc[-1] == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(utc))


@pytest.mark.parametrize(
    ("cron", "tz", "calendar", "after", "expected"),
    [
        # weekends
        (
            "0 9 * * *",
            "Asia/Shanghai",
            "CN",
            datetime(2024, 3, 1, 23, 0, tzinfo=SH),
            datetime(2024, 3, 4, 9, 0, tzinfo=SH),
        ),
        # CN Spring Festival 2026: closed 02-16..02-20 and 02-23 (make-up Saturday 02-14 is no trading day either)
        (
            "5 15 * * *",
            "Asia/Shanghai",
            "CN",
            datetime(2026, 2, 13, 16, 0, tzinfo=SH),
            datetime(2026, 2, 24, 15, 5, tzinfo=SH),
        ),
        # CN National Day 2026: closed 10-01..10-07, reopens Thursday 10-08
        (
            "5 15 * * 1-5",
            "Asia/Shanghai",
            "CN",
            datetime(2026, 9, 30, 16, 0, tzinfo=SH),
            datetime(2026, 10, 8, 15, 5, tzinfo=SH),
        ),
        # HK: 12-24 is a half day (it trades, so the job fires), 12-25 is closed
        (
            "15 16 * * 1-5",
            "Asia/Hong_Kong",
            "HK",
            datetime(2026, 12, 23, 17, 0, tzinfo=HK),
            datetime(2026, 12, 24, 16, 15, tzinfo=HK),
        ),
        (
            "15 16 * * 1-5",
            "Asia/Hong_Kong",
            "HK",
            datetime(2026, 12, 24, 17, 0, tzinfo=HK),
            datetime(2026, 12, 28, 16, 15, tzinfo=HK),
        ),
        # US: Thanksgiving 11-26 closed, the half day 11-27 trades; Christmas 12-25 closed
        (
            "10 16 * * 1-5",
            "America/New_York",
            "US",
            datetime(2026, 11, 25, 17, 0, tzinfo=NY),
            datetime(2026, 11, 27, 16, 10, tzinfo=NY),
        ),
        (
            "10 16 * * 1-5",
            "America/New_York",
            "US",
            datetime(2026, 12, 24, 17, 0, tzinfo=NY),
            datetime(2026, 12, 28, 16, 10, tzinfo=NY),
        ),
        # a US job written in Shanghai time: the trading day is New York's (Fri 11-27 05:10 SH = Thu 11-26 NY)
        (
            "10 5 * * 2-6",
            "Asia/Shanghai",
            "US",
            datetime(2026, 11, 26, 6, 0, tzinfo=SH),
            datetime(2026, 11, 28, 5, 10, tzinfo=SH),
        ),
    ],
)
def test_calendar_days(cron: str, tz: str, calendar: str, after: datetime, expected: datetime) -> None:
    got = next_fire(job(cron, tz, calendar), after)
    assert got == expected
    assert horizon_note(job(cron, tz, calendar), got) is None


def test_without_calendar_holidays_fire() -> None:
    assert next_fire(job("5 15 * * 1-5"), datetime(2026, 9, 30, 16, 0, tzinfo=SH)) == datetime(
        2026, 10, 1, 15, 5, tzinfo=SH
    )


def test_unconfirmed_year_skips_the_librarys_estimated_holidays_with_a_note() -> None:
    """2030 has no confirmed CN calendar: the library's estimated Spring Festival is skipped,
    and each fire in 2030 is noted as resting on estimated dates."""
    j = job("5 15 * * *", calendar="CN")
    got = next_fire(j, datetime(2030, 2, 1, 16, 0, tzinfo=SH))  # a Friday
    assert got == datetime(2030, 2, 8, 15, 5, tzinfo=SH)  # 02-04..07 are the library's Spring Festival
    note = horizon_note(j, got)
    assert note is not None and "CN calendar for 2030 is not confirmed" in note and "estimated" in note
    assert horizon_note(job("5 15 * * *"), got) is None  # no calendar, nothing to confirm


@pytest.mark.parametrize(("market", "tz"), [("US", "America/New_York"), ("HK", "Asia/Hong_Kong")])
def test_christmas_jobs_never_fire_on_dec_25(market: str, tz: str) -> None:
    after = datetime(2026, 12, 1, tzinfo=UTC)
    assert next_fire(job("0 10 25 12 *", tz, market), after) is None  # always a holiday, any year
    fires = next_fires(job("0 10 24-26 12 *", tz, market), after, 20)
    assert len(fires) >= 5 and fires[-1].year >= 2031
    assert all((f.month, f.day) != (12, 25) for f in fires)
    assert datetime(2028, 12, 25, 10, 0, tzinfo=ZoneInfo(tz)) not in fires  # a Monday


def test_the_schedule_fingerprint_follows_cron_timezone_and_calendar() -> None:
    base = schedule_fingerprint(job("5 15 * * 1-5", calendar="CN"))
    assert schedule_fingerprint(job("5 15 * * 1-5", calendar="CN")) == base
    assert schedule_fingerprint(job("5 15 * * 1-4", calendar="CN")) != base
    assert schedule_fingerprint(job("5 15 * * 1-5", "Asia/Hong_Kong", "CN")) != base
    assert schedule_fingerprint(job("5 15 * * 1-5")) != base
    other_command = JobSettings.model_validate(
        {"name": "j", "cron": "5 15 * * 1-5", "command": "other", "calendar": "CN", "params": {"period": "1d"}}
    )
    assert schedule_fingerprint(other_command) == base


def test_missed_lists_the_instants_in_between() -> None:
    j = job("*/10 * * * *")
    got = missed(j, datetime(2024, 3, 1, 10, 0, tzinfo=SH), datetime(2024, 3, 1, 10, 30, tzinfo=SH))
    assert [m.minute for m in got] == [10, 20, 30]


def test_fire_id_is_the_job_and_its_utc_instant() -> None:
    assert fire_id(job("* * * * *"), datetime(2024, 3, 1, 15, 5, tzinfo=SH)) == "j@2024-03-01T07:05:00Z"


def _write(tmp_path: Path, content: object) -> Path:
    p = tmp_path / "task_timer.yml"
    p.write_text(yaml.safe_dump(content))
    return p


def test_check_names_file_job_and_field_of_every_mistake(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "jobs": [
                {"name": "bad_market", "cron": "5 15 * * 1-5", "command": "bar_snapshot", "params": {"market": "XX"}},
                {"name": "bad_cron", "cron": "61 * * * *", "command": "c"},
                {"name": "six_fields", "cron": "* * * * * *", "command": "c"},
                {"name": "bad_tz", "cron": "* * * * *", "command": "c", "timezone": "Mars/Olympus"},
                {"name": "bad_cal", "cron": "* * * * *", "command": "c", "calendar": "JP", "colour": "red"},
                {"name": "bad_cron", "cron": "* * * * *", "command": "c"},
                {"cron": "* * * * *"},
            ]
        },
    )
    result = check_file(path)
    assert result.jobs is None
    text = "\n".join(result.problems)
    assert f"{path}: job bad_market: params.market: 'XX' is not a market (CN, HK, US)" in text
    assert f"{path}: job bad_cron: cron:" in text
    assert f"{path}: job six_fields: cron:" in text
    assert f"{path}: job bad_tz: timezone:" in text
    assert f"{path}: job bad_cal: calendar:" in text
    assert f"{path}: job bad_cal: colour: unknown key" in text
    assert f"{path}: job bad_cron: name: appears twice" in text
    assert f"{path}: jobs[6]: name: Field required" in text and f"{path}: jobs[6]: command: Field required" in text


def test_check_warns_about_an_unconfirmed_calendar_year(tmp_path: Path) -> None:
    path = _write(tmp_path, {"jobs": [{"name": "cn", "cron": "5 15 * * 1-5", "command": "c", "calendar": "CN"}]})
    result = check_file(path, now=datetime(2030, 1, 5, tzinfo=SH))
    assert result.problems == [] and result.jobs is not None
    assert len(result.warnings) == 1 and "job cn: calendar: CN 2030 is not confirmed" in result.warnings[0]
    assert "estimated" in result.warnings[0]
    assert check_file(path, now=datetime(2026, 3, 1, tzinfo=SH)).warnings == []


def test_check_warns_about_a_job_that_never_fires(tmp_path: Path) -> None:
    xmas = {"name": "xmas", "cron": "0 10 25 12 *", "timezone": "America/New_York", "command": "c", "calendar": "US"}
    result = check_file(_write(tmp_path, {"jobs": [xmas]}), now=datetime(2026, 3, 1, tzinfo=NY))
    assert result.problems == [] and len(result.warnings) == 1
    assert "job xmas: cron: no instant on a US trading day within 1830 days" in result.warnings[0]
