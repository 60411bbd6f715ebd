"""A job's first instant across a crash: tasktimer processes SIGKILLed 0.3 s before the
job has ever fired, started again within the misfire grace, fire that instant exactly once
(one replica, and two), on the real broker and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.tasktimer.clock import ScaledClock
from services.tasktimer.cron import fire_id
from shared.config import AppConfig, JobSettings
from shared.dto import ControlCommand, Status, decode
from shared.topics import Topics
from tests.helpers import TopicReader, eventually
from tests.reliability.loaded_system import read_topic

ROOT = Path(__file__).resolve().parents[2]
INSTANT = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)  # the daily job's first instant, on the schedule clock
LEAD_S = 12.0  # real seconds from the first spawn to the instant: time to start and schedule
KILL_BEFORE_S = 0.3
JOB = {"name": "daily", "cron": "0 10 * * *", "timezone": "UTC", "command": "status"}


@asynccontextmanager
async def replicas(
    config_dir: Path, clock: ScaledClock, logs: list[Path]
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``len(logs)`` tasktimer processes on the shared schedule clock; killed on exit."""
    procs: list[asyncio.subprocess.Process] = []
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    try:
        for log in logs:
            with log.open("wb") as out:  # the child's log file, opened once
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "tests.service.tasktimer_replica",
                        str(config_dir),
                        repr(clock.start),
                        repr(clock.real_start),
                        repr(clock.speed),
                        cwd=ROOT,
                        stdout=out,
                        stderr=out,
                        stdin=asyncio.subprocess.DEVNULL,
                        env=env,
                    )
                )
        yield procs
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


def scheduled_by(events: TopicReader, since: int) -> set[str]:
    """The replicas that said they scheduled their jobs, in events from index ``since``."""
    return {
        str(m.detail.get("replica"))
        for m in events.messages[since:]
        if isinstance(m, Status) and m.component == "timer" and m.state == "scheduled"
    }


@pytest.mark.parametrize("count", [1, 2], ids=["one_replica", "two_replicas"])
async def test_sigkill_before_a_jobs_first_instant_then_restart_fires_it_once(
    count: int,
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    live = {
        "redis": {"url": redis_url},
        "tasktimer": {
            "redis_prefix": redis_prefix,
            "misfire_grace_s": 30,
            "lock_ttl_s": 1.0,
            "http": {"enabled": False},
        },
    }
    config = make_config(topics, livedata=live, task_timer={"jobs": [JOB]})
    job = JobSettings.model_validate(JOB)
    real_instant = time.time() + LEAD_S
    clock = ScaledClock(INSTANT, speed=1.0, real_start=real_instant)  # the instant comes LEAD_S from now
    first = [tmp_path / f"first.{i}.log" for i in range(count)]
    again = [tmp_path / f"again.{i}.log" for i in range(count)]

    def tails(logs: list[Path]) -> str:
        return "\n".join(f"{p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())

    async with (
        TopicReader(kafka_bootstrap, topics.control_commands) as commands,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
    ):
        async with replicas(config.directory, clock, first) as procs:
            await eventually(
                lambda: len(scheduled_by(events, 0)) == count,
                timeout_s=LEAD_S - 2,
                what=f"{count} replica(s) scheduling the job",
            )
            killed = scheduled_by(events, 0)
            await asyncio.sleep(max(real_instant - KILL_BEFORE_S - time.time(), 0.0))  # a moment, not a condition
            for p in procs:
                p.kill()
            for p in procs:
                await p.wait()
            assert time.time() < real_instant, "killed too late: the instant had come"
        assert commands.of_type(ControlCommand) == [], tails(first)  # nothing fired before the kill
        mark = len(events.messages)
        async with replicas(config.directory, clock, again) as procs:
            cmd = await commands.wait_for(
                ControlCommand, lambda c: c.job == "daily", timeout_s=25, what=f"the recovered fire\n{tails(again)}"
            )
            restarted = await eventually(
                lambda: scheduled_by(events, mark) if len(scheduled_by(events, mark)) == count else None,
                timeout_s=10,
                what="the restarted replicas scheduling",
            )
            record = await eventually(
                lambda: redis_client.get(f"{redis_prefix}:fire:{fire_id(job, INSTANT)}"), what="the fire's record"
            )
            assert clock.now() - INSTANT < timedelta(seconds=30)  # all within the misfire grace
            for p in procs:
                p.terminate()
            for p in procs:
                assert await asyncio.wait_for(p.wait(), 15) == 0, tails(again)
    assert cmd.scheduled_for == INSTANT and cmd.correlation_id == fire_id(job, INSTANT)
    fired = json.loads(record)
    fired_by = fired["replica"]
    assert fired_by in restarted and fired_by not in killed
    # exactly one fire on the command topic, read to its end after every process exited
    sent = [decode(r.value or b"") for r in await read_topic(kafka_bootstrap, topics.control_commands)]
    counts = Counter(m.correlation_id for m in sent if isinstance(m, ControlCommand))
    assert counts == {fire_id(job, INSTANT): 1}
    print(
        f"\n{count} replica(s) SIGKILLed {KILL_BEFORE_S}s before the first instant, restarted: fired once,"
        f" {fired['lateness_s']:.2f}s after the instant (grace 30 s), by {fired_by}"
    )
