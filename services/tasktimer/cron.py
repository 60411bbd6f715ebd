"""Pure schedule maths: the next fire instant of a job, trading-day filtering, fire ids.

Cron evaluation is cronsim's (Debian cron semantics): day-of-week 0 and 7 = Sunday, names
(``mon``, ``jan``), ``L``; a local time that does not exist (spring forward) fires once at
the next valid time and a repeated hour (fall back) fires once. Jobs with a ``calendar``
skip that market's non-trading days; past the calendar's confirmed horizon they fire by
the weekday rule and ``horizon_note`` says so, for the service to alert on.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from shared.calendars import calendar
from shared.config import JobSettings

MAX_SKIPPED_DAYS = 400


def instants(job: JobSettings, after: datetime) -> Iterator[datetime]:
    """The job's fire instants strictly after ``after`` (aware), in the job's timezone."""
    tz = ZoneInfo(job.timezone)
    local = after.astimezone(tz)
    cal = calendar(job.calendar) if job.calendar is not None else None
    limit = local.timestamp() + MAX_SKIPPED_DAYS * 86400
    for at in CronSim(job.cron, local):
        if cal is None or cal.is_trading_day(at.astimezone(cal.timezone).date()):
            yield at
        elif at.timestamp() > limit:
            break


def next_fire(job: JobSettings, after: datetime) -> datetime:
    """The first scheduled instant strictly after ``after`` (aware), in the job's timezone."""
    for at in instants(job, after):
        return at
    raise ValueError(f"job {job.name}: no fire instant within {MAX_SKIPPED_DAYS} days")


def next_fires(job: JobSettings, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for at in instants(job, after):
        out.append(at)
        if len(out) == count:
            break
    return out


def missed(job: JobSettings, after: datetime, until: datetime) -> list[datetime]:
    """The job's instants in (``after``, ``until``], oldest first."""
    out: list[datetime] = []
    for at in instants(job, after):
        if at > until:
            break
        out.append(at)
    return out


def horizon_note(job: JobSettings, instant: datetime) -> str | None:
    """Why the calendar could not be consulted for ``instant`` (None: it was, or no calendar)."""
    if job.calendar is None:
        return None
    cal = calendar(job.calendar)
    year = instant.astimezone(cal.timezone).year
    if cal.confirmed(year):
        return None
    return (
        f"{job.calendar.value} calendar for {year} is not confirmed "
        f"(no shared/calendar_overrides/{job.calendar.value}/{year}.yml): firing by the weekday rule"
    )


def utc_stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fire_id(job: JobSettings, instant: datetime) -> str:
    """Identity of one fire: the job and its scheduled instant (UTC)."""
    return f"{job.name}@{utc_stamp(instant)}"
