"""Reading and checking task_timer.yml: every mistake named by file, job and field."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.tasktimer.cron import MAX_SKIPPED_DAYS, next_fire
from shared.calendars import calendar
from shared.commands import command_param_problems
from shared.config import ConfigError, JobSettings, TaskTimerFile, read_yaml

HORIZON_WARNING_DAYS = 60
"""``check`` warns about a calendar year that is not confirmed this many days ahead."""


@dataclass(frozen=True)
class FileCheck:
    """The result of checking one task_timer.yml."""

    path: Path
    problems: list[str]
    """Errors: the file is not loaded."""
    warnings: list[str]
    jobs: TaskTimerFile | None
    """The parsed file when there are no problems."""


def _job_label(raw: Any, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"job {name}" if isinstance(name, str) and name else f"jobs[{index}]"


def check_file(path: Path, env: Mapping[str, str] | None = None, now: datetime | None = None) -> FileCheck:
    """Every problem of ``path`` (file, job, field), and the calendar-horizon warnings."""
    env = os.environ if env is None else env
    where = str(path)
    if not path.exists():
        return FileCheck(path, [f"{where}: no such file"], [], None)
    try:
        raw = read_yaml(path, env)
    except ConfigError as e:
        return FileCheck(path, [str(e)], [], None)
    problems: list[str] = []
    for key in sorted(set(raw) - {"jobs"}):
        problems.append(f"{where}: {key}: unknown key")
    jobs_raw = raw.get("jobs", [])
    if not isinstance(jobs_raw, list):
        return FileCheck(path, [*problems, f"{where}: jobs: expected a list of jobs"], [], None)
    names: dict[str, int] = {}
    for i, job in enumerate(jobs_raw):
        label = _job_label(job, i)
        if not isinstance(job, dict):
            problems.append(f"{where}: {label}: expected a mapping")
            continue
        try:
            JobSettings.model_validate(job)
        except ValidationError as err:
            for detail in err.errors(include_input=False, include_url=False):
                if not detail["loc"]:
                    continue  # the model-level checks, reported below field by field
                field = ".".join(str(p) for p in detail["loc"])
                msg = "unknown key" if detail["type"] == "extra_forbidden" else detail["msg"]
                problems.append(f"{where}: {label}: {field}: {msg}")
        params = job.get("params", {})
        if isinstance(params, dict) and isinstance(job.get("command"), str):
            for field, msg in command_param_problems(job["command"], params):
                problems.append(f"{where}: {label}: {field}: {msg}")
        name = job.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"{where}: {label}: name: appears twice (also jobs[{names[name]}])")
            names.setdefault(name, i)
    if problems:
        return FileCheck(path, problems, [], None)
    parsed = TaskTimerFile.model_validate(raw)
    return FileCheck(path, [], horizon_warnings(where, parsed, now), parsed)


def unconfirmed_year(job: JobSettings, now: datetime) -> int | None:
    """The first year of the coming ``HORIZON_WARNING_DAYS`` whose calendar the job follows
    unconfirmed (None: no calendar, or every such year confirmed)."""
    if job.calendar is None:
        return None
    cal = calendar(job.calendar)
    for year in sorted({now.year, (now + timedelta(days=HORIZON_WARNING_DAYS)).year}):
        if not cal.confirmed(year):
            return year
    return None


def horizon_warnings(where: str, parsed: TaskTimerFile, now: datetime | None = None) -> list[str]:
    """A warning per enabled calendar job whose calendar is not confirmed in the coming days,
    and per enabled job that never fires (every instant on a non-trading day)."""
    now = now or datetime.now().astimezone()
    out = []
    for job in parsed.jobs:
        if not job.enabled or job.calendar is None:
            continue
        year = unconfirmed_year(job, now)
        if year is not None:
            out.append(
                f"{where}: job {job.name}: calendar: {job.calendar.value} {year} is not confirmed "
                f"(add shared/calendar_overrides/{job.calendar.value}/{year}.yml); in {year} the job "
                "skips the holidays library's estimated holidays and alerts on each fire"
            )
        if next_fire(job, now) is None:
            out.append(
                f"{where}: job {job.name}: cron: no instant on a {job.calendar.value} trading day within "
                f"{MAX_SKIPPED_DAYS} days: the job does not fire"
            )
    return out


def load_jobs(path: Path, env: Mapping[str, str] | None = None) -> TaskTimerFile:
    """task_timer.yml parsed, or ConfigError with every problem (file, job, field)."""
    result = check_file(path, env)
    if result.jobs is None:
        raise ConfigError("\n".join(result.problems))
    return result.jobs
