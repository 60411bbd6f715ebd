"""Pure schedule maths: the next fire instant of a job, trading-day filtering, fire ids.

Cron evaluation is cronsim's (Debian cron semantics): day-of-week 0 and 7 = Sunday, names
(``mon``, ``jan``), ``L``; a local time that does not exist (spring forward) fires once at
the next valid time and a repeated hour (fall back) fires once. Jobs with a ``calendar``
skip that market's non-trading days; past the calendar's confirmed horizon those are the
holidays library's estimated dates, and ``horizon_note`` says so, for the service to alert
on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from shared.calendars import calendar
from shared.config import JobSettings

MAX_SKIPPED_DAYS = 5 * 366
"""Give up when this many days pass without an instant on a trading day. A yearly job can
go years without one (``0 10 24-26 12 *`` on HK: none from 2032 to 2035), and a job on
Dec 25 with a US or HK calendar never fires."""


def instants(job: JobSettings, after: datetime) -> Iterator[datetime]:
    """The job's fire instants strictly after ``after`` (aware), in the job's timezone; ends
    when ``MAX_SKIPPED_DAYS`` pass without one."""
    tz = ZoneInfo(job.timezone)
    local = after.astimezone(tz)
    cal = calendar(job.calendar) if job.calendar is not None else None
    limit = local.timestamp() + MAX_SKIPPED_DAYS * 86400
    for at in CronSim(job.cron, local):
        if cal is None or cal.is_trading_day(at.astimezone(cal.timezone).date()):
            yield at
            limit = at.timestamp() + MAX_SKIPPED_DAYS * 86400
        elif at.timestamp() > limit:
            break


def next_fire(job: JobSettings, after: datetime) -> datetime | None:
    """The first scheduled instant strictly after ``after`` (aware), in the job's timezone;
    None when there is none within ``MAX_SKIPPED_DAYS`` (every instant on a non-trading day)."""
    for at in instants(job, after):
        return at
    return None


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
    """Why the calendar's answer for ``instant`` is an estimate (None: it is confirmed, or
    the job has no calendar)."""
    if job.calendar is None:
        return None
    cal = calendar(job.calendar)
    day = cal.day(instant.astimezone(cal.timezone).date())
    if not day.estimated:
        return None
    m, year = job.calendar.value, day.day.year
    return (
        f"{m} calendar for {year} is not confirmed (no shared/calendar_overrides/{m}/{year}.yml): "
        f"firing on the holidays library's estimated dates ({day.day} estimated {'open' if day.is_open else 'closed'})"
    )


def schedule_fingerprint(job: JobSettings) -> str:
    """What decides the job's instants (cron, timezone, calendar), hashed: a job whose
    fingerprint changed is a new schedule."""
    cal = job.calendar.value if job.calendar is not None else ""
    return hashlib.sha256(f"{job.cron}|{job.timezone}|{cal}".encode()).hexdigest()[:16]


def utc_stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fire_id(job: JobSettings, instant: datetime) -> str:
    """Identity of one fire: the job and its scheduled instant (UTC)."""
    return f"{job.name}@{utc_stamp(instant)}"
