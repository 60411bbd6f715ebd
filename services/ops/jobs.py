"""``livedata jobs``: list the task_timer.yml jobs with their next fires and last outcome,
explain a date (why a job fires or is skipped on it), check a job file."""

from __future__ import annotations

import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from services.ops.common import NOT_READY, OK, USAGE, config_for, err
from shared.config import AppConfig, JobSettings


def fire_label(at: datetime) -> str:
    """``2026-12-25 Fri 10:00 +08:00``: the date with weekday and year, the local time, the offset."""
    offset = at.strftime("%z")
    return at.strftime("%Y-%m-%d %a %H:%M ") + f"{offset[:3]}:{offset[3:]}"


async def last_outcomes(config: AppConfig) -> tuple[dict[str, dict[str, Any]], str]:
    """Each job's latest fire record from Redis, and a note on where they came from."""
    from services.tasktimer.store import RedisFireStore

    url = config.livedata.redis.url
    if url is None:
        return {}, "no redis.url: last outcomes are known only to the running tasktimer"
    s = config.livedata.tasktimer
    store = RedisFireStore(url.get_secret_value(), s.redis_prefix, s.record_ttl_s)
    try:
        return await store.outcomes(), "last outcomes from Redis"
    except Exception as e:
        return {}, f"Redis unreachable ({type(e).__name__}): no last outcomes"
    finally:
        await store.stop()


async def run_list(config_dir: Path | None, count: int, explain: str | None) -> int:
    from services.tasktimer.cron import MAX_SKIPPED_DAYS, horizon_note, next_fires
    from shared.dto import utcnow

    if count < 1:
        err(f"--fires: {count} is not a positive number of fires")
        return USAGE
    explain_day: date | None = None
    if explain:
        try:
            explain_day = date.fromisoformat(explain)
        except ValueError:
            err(f"--explain: {explain!r} is not a date (YYYY-MM-DD)")
            return USAGE
    config = config_for(config_dir)
    if explain_day is not None:
        for job in config.task_timer.jobs:
            print(explain_line(job, explain_day))
        return OK
    now = utcnow()
    outcomes, note = await last_outcomes(config)
    print(f"{'job':<24}{'cron':<22}{'timezone':<18}{'cal':<5}{'next fires (local)':<64} last outcome")
    unconfirmed = False
    for job in config.task_timer.jobs:
        if job.enabled:
            marks = []
            for f in next_fires(job, now, count):
                flagged = horizon_note(job, f) is not None
                unconfirmed |= flagged
                marks.append(fire_label(f) + ("*" if flagged else ""))
            nxt = ", ".join(marks) or f"(none: no trading-day instant within {MAX_SKIPPED_DAYS} days)"
        else:
            nxt = "(disabled)"
        last = outcomes.get(job.name)
        last_s = f"{last['outcome']} {last['instant']} by {last['replica']} late {last['lateness_s']}s" if last else "-"
        cal = job.calendar.value if job.calendar else "-"
        print(f"{job.name:<24}{job.cron:<22}{job.timezone:<18}{cal:<5}{nxt:<64} {last_s}")
    if unconfirmed:
        print(
            "* estimated: that calendar year is not confirmed, the day is the holidays library's estimate;"
            " each such fire alerts (see livedata jobs check)"
        )
    print(f"({note}; why a date is skipped: livedata jobs list --explain YYYY-MM-DD)")
    return OK


def cron_instants_on(job: JobSettings, day: date) -> list[datetime]:
    """The cron's instants on ``day`` in the job's timezone, calendar left aside."""
    from cronsim import CronSim

    tz = ZoneInfo(job.timezone)
    start = datetime.combine(day, time(0, 0), tz) - timedelta(seconds=1)
    out = []
    for at in CronSim(job.cron, start):
        if at.date() != day:
            break
        out.append(at)
    return out


def explain_line(job: JobSettings, day: date) -> str:
    """Whether ``job`` fires on ``day`` and why not when it does not."""
    from shared.calendars import calendar

    head = f"{job.name} on {day.isoformat()} {day.strftime('%a')}:"
    if not job.enabled:
        return f"{head} disabled"
    at = cron_instants_on(job, day)
    if not at:
        return f"{head} no instant (cron {job.cron!r} does not match that day)"
    times = ", ".join(fire_label(a)[15:] for a in at[:4]) + (f" (+{len(at) - 4} more)" if len(at) > 4 else "")
    if job.calendar is None:
        return f"{head} fires at {times} (no calendar)"
    td = calendar(job.calendar).day(day)
    status = "estimated, year not confirmed" if td.estimated else "confirmed"
    why = f" ({td.note})" if td.note and td.note != "open" else ""
    if not td.is_open:
        return f"{head} skipped: {job.calendar.value} closed{why} [{status}]"
    half = " half day" if td.half_day else ""
    return f"{head} fires at {times}: {job.calendar.value} open{half}{why} [{status}]"


def run_check(file: Path) -> int:
    from services.tasktimer.jobs import check_file
    from shared.calendars import check_overrides

    result = check_file(file)
    problems = [*result.problems, *check_overrides()]
    for line in problems:
        print(f"error: {line}")
    for line in result.warnings:
        print(f"warning: {line}")
    if problems:
        print(f"{file}: {len(problems)} problem(s)", file=sys.stderr)
        return NOT_READY
    n = len(result.jobs.jobs) if result.jobs else 0
    print(f"{file}: OK, {n} jobs" + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))
    return OK
