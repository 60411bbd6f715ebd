"""Pure schedule maths: the next fire instant of a job, trading-day filtering."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from shared.config import JobSettings
from shared.sessions import is_trading_weekday

MAX_SKIPPED_DAYS = 400


def next_fire(job: JobSettings, after: datetime) -> datetime:
    """The first scheduled instant strictly after ``after`` (aware), in the job's timezone.

    Cron fields are standard: day-of-week 0 (and 7) = Sunday, 1-5 = Monday-Friday.
    With a ``calendar``, instants on that market's non-trading days are skipped.
    """
    tz = ZoneInfo(job.timezone)
    it = croniter(job.cron, after.astimezone(tz))
    for _ in range(MAX_SKIPPED_DAYS * 1440):
        at: datetime = it.get_next(datetime)
        if job.calendar is None or is_trading_weekday(job.calendar, at.date()):
            return at
    raise ValueError(f"job {job.name}: no fire instant within {MAX_SKIPPED_DAYS} days")


def fire_id(job: JobSettings, instant: datetime) -> str:
    """Identity of one fire: the job and its scheduled instant (UTC)."""
    return f"{job.name}@{instant.astimezone(ZoneInfo('UTC')).strftime('%Y-%m-%dT%H:%M:%SZ')}"
