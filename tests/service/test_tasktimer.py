"""tasktimer on a real broker: fires on the instant, once, with the fire's identity."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from services.tasktimer.service import TaskTimer
from shared.config import AppConfig
from shared.dto import ControlCommand, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, running


def clock_near_minute_boundary(seconds_before: float) -> Callable[[], datetime]:
    """A clock that reads ``seconds_before`` the next whole minute when created."""
    now = utcnow()
    boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    offset = boundary - timedelta(seconds=seconds_before) - now
    return lambda: utcnow() + offset


async def test_job_fires_once_on_its_instant(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    jobs = {
        "jobs": [
            {"name": "every_minute", "cron": "* * * * *", "command": "bar_snapshot", "params": {"period": "1d"}},
            {"name": "disabled", "cron": "* * * * *", "command": "x", "enabled": False},
        ]
    }
    clock = clock_near_minute_boundary(1.0)
    timer = TaskTimer(make_config(topics, task_timer=jobs), clock=clock)
    expected_instant = (clock() + timedelta(seconds=1.5)).replace(second=0, microsecond=0)
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands, running(timer):
        cmd = await commands.wait_for(ControlCommand, timeout_s=10, what="the fired command")
        assert cmd.command == "bar_snapshot" and cmd.params == {"period": "1d"} and cmd.target == "datamanager"
        assert cmd.scheduled_for == expected_instant
        assert cmd.correlation_id == f"every_minute@{expected_instant.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        assert commands.records[0].key == b"datamanager"
        await eventually(
            lambda: timer.metrics.registry.get_sample_value("livedata_timer_lateness_seconds_count") == 1,
            what="lateness recorded",
        )
        lateness = timer.metrics.registry.get_sample_value("livedata_timer_lateness_seconds_sum")
        assert lateness is not None and lateness < 0.5
        assert timer.next_fires["every_minute"] == expected_instant + timedelta(minutes=1)
    assert len(commands.of_type(ControlCommand)) == 1


async def test_fire_is_idempotent_per_instant(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    timer = TaskTimer(make_config(topics, task_timer={"jobs": [{"name": "j", "cron": "0 9 * * *", "command": "c"}]}))
    job = timer.jobs[0]
    instant = utcnow().replace(microsecond=0)
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands:
        await timer.publisher.start()
        try:
            await timer.fire(job, instant)
            await timer.fire(job, instant)
        finally:
            await timer.publisher.stop()
        await commands.wait_for(ControlCommand)
    assert len(commands.of_type(ControlCommand)) == 1
