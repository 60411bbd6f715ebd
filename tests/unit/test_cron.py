"""Cron maths from a table: standard day-of-week, timezones, calendars."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from services.tasktimer.cron import fire_id, next_fire
from shared.config import JobSettings

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")


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
        # 0 and 7 are Sunday
        ("0 9 * * 0", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2024, 3, 3, 9, 0, tzinfo=SH)),
        ("0 9 * * 7", "Asia/Shanghai", datetime(2024, 3, 1, tzinfo=SH), datetime(2024, 3, 3, 9, 0, tzinfo=SH)),
        # every minute
        (
            "* * * * *",
            "Asia/Shanghai",
            datetime(2024, 3, 1, 10, 0, 30, tzinfo=SH),
            datetime(2024, 3, 1, 10, 1, tzinfo=SH),
        ),
        # the job's timezone, not the caller's; across the US DST switch (2024-03-10)
        (
            "30 9 * * *",
            "America/New_York",
            datetime(2024, 3, 9, 15, 0, tzinfo=ZoneInfo("UTC")),
            datetime(2024, 3, 10, 9, 30, tzinfo=NY),
        ),
        (
            "30 9 * * *",
            "America/New_York",
            datetime(2024, 3, 10, 14, 0, tzinfo=ZoneInfo("UTC")),
            datetime(2024, 3, 11, 9, 30, tzinfo=NY),
        ),
    ],
)
def test_next_fire(cron: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_fire(job(cron, tz), after)
    assert got == expected
    assert got.utcoffset() == expected.utcoffset()


def test_calendar_skips_weekends() -> None:
    fri = datetime(2024, 3, 1, 23, 0, tzinfo=SH)
    assert next_fire(job("0 9 * * *", calendar="CN"), fri) == datetime(2024, 3, 4, 9, 0, tzinfo=SH)
    assert next_fire(job("0 9 * * *"), fri) == datetime(2024, 3, 2, 9, 0, tzinfo=SH)


def test_fire_id_is_the_job_and_its_utc_instant() -> None:
    assert fire_id(job("* * * * *"), datetime(2024, 3, 1, 15, 5, tzinfo=SH)) == "j@2024-03-01T07:05:00Z"
