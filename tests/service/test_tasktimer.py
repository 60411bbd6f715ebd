"""tasktimer on a real broker and Redis: on the instant, once, across replicas and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
import yaml

from services.tasktimer.clock import ScaledClock
from services.tasktimer.cron import fire_id, next_fire, schedule_fingerprint
from services.tasktimer.service import TaskTimer
from services.tasktimer.store import FireStore, MemoryFireStore, RedisFireStore
from shared.config import AppConfig, JobSettings, load_config
from shared.dto import Alert, ControlCommand, Status, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, env_without_overrides, eventually, running

EVERY_MINUTE = {"name": "every_minute", "cron": "* * * * *", "timezone": "UTC", "command": "status"}


def next_minute(seconds_ahead: float = 0.0) -> datetime:
    """The first whole minute at least ``seconds_ahead`` from now."""
    t = utcnow() + timedelta(seconds=seconds_ahead)
    return t.replace(second=0, microsecond=0) + timedelta(minutes=1)


def redis_settings(redis_url: str, redis_prefix: str, **tasktimer: Any) -> dict[str, Any]:
    return {"redis": {"url": redis_url}, "tasktimer": {"redis_prefix": redis_prefix, **tasktimer}}


def write_yaml(path: Path, content: object) -> None:
    path.write_text(yaml.safe_dump(content))


def sample(timer: TaskTimer, name: str, **labels: str) -> float:
    return timer.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_job_fires_once_on_its_instant(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    jobs = {
        "jobs": [
            {"name": "every_minute", "cron": "* * * * *", "command": "bar_snapshot", "params": {"period": "1d"}},
            {"name": "disabled", "cron": "* * * * *", "command": "x", "enabled": False},
        ]
    }
    instant = next_minute()
    clock = ScaledClock(instant - timedelta(seconds=2.0), speed=1.0)
    timer = TaskTimer(make_config(topics, task_timer=jobs), clock=clock)
    async with (
        TopicReader(kafka_bootstrap, topics.control_commands) as commands,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        running(timer),
    ):
        cmd = await commands.wait_for(ControlCommand, timeout_s=10, what="the fired command")
        assert cmd.command == "bar_snapshot" and cmd.params == {"period": "1d"} and cmd.target == "datamanager"
        assert cmd.scheduled_for == instant
        assert cmd.correlation_id == f"every_minute@{instant.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        assert cmd.job == "every_minute"
        assert commands.records[0].key == b"datamanager"
        await eventually(lambda: sample(timer, "livedata_timer_lateness_seconds_count") == 1, what="lateness")
        lateness = sample(timer, "livedata_timer_lateness_seconds_sum")
        assert lateness < 0.5
        status = await events.wait_for(Status, lambda s: s.state == "fired", what="the fire's status event")
        assert status.detail["fire"] == cmd.correlation_id and status.detail["replica"] == timer.replica
        # no redis.url: single-instance mode, said at start-up
        assert any(isinstance(m, Status) and m.state == "single_instance" for m in events.messages)
        assert timer.next_fires["every_minute"] == instant + timedelta(minutes=1)
        assert "disabled" not in timer.next_fires
    assert len(commands.of_type(ControlCommand)) == 1


async def test_fire_is_idempotent_per_instant_and_across_replicas(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    config = make_config(topics, livedata=redis_settings(redis_url, redis_prefix), task_timer={"jobs": [EVERY_MINUTE]})
    a, b = TaskTimer(config), TaskTimer(config)
    a.replica, b.replica = "a", "b"
    job = a.jobs["every_minute"]
    instant = utcnow().replace(microsecond=0)
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands:
        for t in (a, b):
            await t.publisher.start()
            await t.store.start()
        try:
            outcomes = await asyncio.gather(a.fire(job, instant), b.fire(job, instant), a.fire(job, instant))
        finally:
            for t in (a, b):
                await t.store.stop()
                await t.publisher.stop()
        await commands.wait_for(ControlCommand)
    assert sorted(o or "-" for o in outcomes) == ["-", "-", "published"]
    assert len(commands.of_type(ControlCommand)) == 1
    record = json.loads(await redis_client.get(f"{redis_prefix}:fire:{fire_id(job, instant)}"))
    assert record["outcome"] == "published" and record["replica"] in {"a", "b"} and record["lateness_s"] >= 0
    assert int(await redis_client.hget(f"{redis_prefix}:last", "every_minute")) == int(instant.timestamp())


async def _first_fire(config: AppConfig, kafka_bootstrap: str, topics: Topics, instant: datetime) -> None:
    """Run a timer until it has fired ``instant`` (so Redis knows the job's last fire)."""
    timer = TaskTimer(config, clock=ScaledClock(instant - timedelta(seconds=2.0), speed=1.0))
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands, running(timer):
        await commands.wait_for(ControlCommand, lambda c: c.scheduled_for == instant, what="the first fire")


async def test_restart_fires_a_missed_instant_within_grace_once(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    t0 = next_minute()
    live = redis_settings(redis_url, redis_prefix, misfire_grace_s=100)
    config = make_config(topics, livedata=live, task_timer={"jobs": [EVERY_MINUTE]})
    await _first_fire(config, kafka_bootstrap, topics, t0)
    # down for t0+1min and t0+2min; back at t0+2.5min: both missed within the grace -> one fire
    timer = TaskTimer(config, clock=ScaledClock(t0 + timedelta(seconds=150), speed=1.0))
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands, running(timer):
        await eventually(lambda: len(commands.of_type(ControlCommand)) == 2, what="the catch-up fire")
        await eventually(lambda: sample(timer, "livedata_timer_fires_total", job="every_minute", outcome="published"))
    fired = [c.scheduled_for for c in commands.of_type(ControlCommand)]
    assert fired == [t0, t0 + timedelta(minutes=2)]  # coalesced: the latest missed instant, once
    assert sample(timer, "livedata_timer_misfires_skipped_total", job="every_minute") == 1
    assert int(await redis_client.hget(f"{redis_prefix}:last", "every_minute")) == int(fired[-1].timestamp())


async def test_restart_skips_a_missed_instant_outside_grace(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    t0 = next_minute()
    live = redis_settings(redis_url, redis_prefix, misfire_grace_s=20)
    config = make_config(topics, livedata=live, task_timer={"jobs": [EVERY_MINUTE]})
    await _first_fire(config, kafka_bootstrap, topics, t0)
    timer = TaskTimer(config, clock=ScaledClock(t0 + timedelta(seconds=150), speed=1.0))
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands, running(timer):
        await eventually(lambda: "every_minute" in timer.next_fires, what="the timer's schedule")
    assert sample(timer, "livedata_timer_misfires_skipped_total", job="every_minute") == 2  # 90 s and 30 s old
    assert sample(timer, "livedata_timer_fires_total", job="every_minute", outcome="published") == 0
    assert [c.scheduled_for for c in commands.of_type(ControlCommand)] == [t0]
    assert timer.next_fires["every_minute"] == t0 + timedelta(minutes=3)


async def test_reload_keeps_unchanged_jobs_and_rejects_an_invalid_file(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    daily = {"name": "daily", "cron": "0 9 * * *", "command": "c"}
    hourly = {"name": "hourly", "cron": "0 * * * *", "command": "c"}
    config = make_config(topics, task_timer={"jobs": [daily, hourly]})
    path: Path = config.directory / "task_timer.yml"
    timer = TaskTimer(config)
    async with TopicReader(kafka_bootstrap, topics.system_events) as events, running(timer):
        await eventually(lambda: len(timer.next_fires) == 2, what="the schedule")
        before = dict(timer.next_fires)
        bad = {
            "jobs": [
                daily,
                {"name": "snap", "cron": "5 15 * * 1-5", "command": "bar_snapshot", "params": {"market": "XX"}},
            ]
        }
        write_yaml(path, bad)
        timer.request_reload()
        alert = await events.wait_for(Alert, lambda a: a.code == "timer_config_invalid", what="the invalid-file alert")
        assert f"{path}: job snap: params.market: 'XX' is not a market" in alert.message
        assert timer.next_fires == before and set(timer.jobs) == {"daily", "hourly"}
        write_yaml(path, {"jobs": [daily, {**hourly, "cron": "30 * * * *"}, {**daily, "name": "new"}]})
        assert timer.reloads_on_sighup
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: set(timer.next_fires) == {"daily", "hourly", "new"}, what="the reloaded schedule")
        assert timer.next_fires["daily"] == before["daily"]
        assert timer.next_fires["hourly"].minute == 30
    assert sample(timer, "livedata_timer_reloads_total", result="invalid") == 1
    assert sample(timer, "livedata_timer_reloads_total", result="ok") == 1


async def test_broker_outage_at_fire_time_delivers_once_when_back_within_grace(
    make_config: Callable[..., AppConfig],
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    from services.ops.servers import KafkaBroker

    broker = await asyncio.to_thread(KafkaBroker(log_path=tmp_path / "kafka.log").start)
    try:
        topics = Topics("test.outage")
        live = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "request_timeout_ms": 3000},
            **redis_settings(redis_url, redis_prefix, misfire_grace_s=60),
        }
        config = make_config(topics, livedata=live, task_timer={"jobs": [EVERY_MINUTE]})
        instant = next_minute(seconds_ahead=12)
        clock = ScaledClock(instant - timedelta(seconds=10), speed=1.0)
        timer = TaskTimer(config, clock=clock)
        async with running(timer, timeout_s=20):
            await eventually(lambda: timer.broker_ok, timeout_s=15, what="the timer connected")
            await asyncio.to_thread(broker.stop)
            assert clock.now() < instant, "the broker took too long to stop for this test"
            await eventually(lambda: clock.now() > instant + timedelta(seconds=3), timeout_s=15, what="the instant")
            assert await redis_client.get(f"{redis_prefix}:fire:{fire_id(timer.jobs['every_minute'], instant)}") is None
            await asyncio.to_thread(broker.start)
            async with TopicReader(broker.bootstrap_servers, topics.control_commands) as commands:
                await commands.wait_for(ControlCommand, timeout_s=40, what="the delayed command")
                await eventually(
                    lambda: sample(timer, "livedata_timer_fires_total", job="every_minute", outcome="published"),
                    timeout_s=10,
                    what="the fire recorded",
                )
        cmds = commands.of_type(ControlCommand)
        assert [c.scheduled_for for c in cmds] == [instant]
        record = json.loads(await redis_client.hget(f"{redis_prefix}:outcome", "every_minute"))
        assert record["outcome"] == "published" and 3 < record["lateness_s"] < 60
    finally:
        await asyncio.to_thread(broker.close)


async def test_unconfirmed_calendar_year_fires_on_estimated_dates_and_alerts(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    """2030 is not confirmed: 02-04..07 are the CN library's estimated Spring Festival and
    are skipped, 02-08 trades by that estimate, and its fire says so."""
    job = {"name": "cn_close", "cron": "5 15 * * 1-5", "command": "c", "calendar": "CN"}
    instant = datetime(2030, 2, 8, 15, 5, tzinfo=ZoneInfo("Asia/Shanghai"))
    timer = TaskTimer(
        make_config(topics, task_timer={"jobs": [job]}),
        clock=ScaledClock(instant - timedelta(seconds=2.0), speed=1.0),
    )
    async with (
        TopicReader(kafka_bootstrap, topics.control_commands) as commands,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        running(timer),
    ):
        cmd = await commands.wait_for(ControlCommand, what="the fire on an estimated trading day")
        alert = await events.wait_for(Alert, lambda a: a.code == "calendar_unconfirmed", what="the horizon alert")
    assert cmd.scheduled_for == instant
    assert "CN calendar for 2030 is not confirmed" in alert.message and "estimated" in alert.message
    assert alert.detail["job"] == "cn_close" and alert.detail["estimated"] is True
    assert next_fire(JobSettings.model_validate(job), instant - timedelta(days=4)) == instant  # from the 02-04 close
    assert sample(timer, "livedata_timer_calendar_unconfirmed_jobs") == 1.0  # what the CalendarUnconfirmed alert reads


async def test_schedule_start_is_set_once_per_schedule(redis_url: str, redis_prefix: str) -> None:
    t0 = datetime(2027, 3, 1, 8, 0, tzinfo=ZoneInfo("UTC"))
    stores: list[FireStore] = [MemoryFireStore(), RedisFireStore(redis_url, redis_prefix, 60)]
    replica: FireStore = RedisFireStore(redis_url, redis_prefix, 60)
    for store in [*stores, replica]:
        await store.start()
    try:
        for store in stores:
            assert await store.scheduled_since("j", "fp1", t0 + timedelta(seconds=0.7)) == t0  # whole seconds
            assert await store.scheduled_since("j", "fp1", t0 + timedelta(minutes=5)) == t0  # kept
            assert await store.scheduled_since("j", "fp2", t0 + timedelta(minutes=5)) == t0 + timedelta(minutes=5)
            assert await store.scheduled_since("k", "fp1", t0 + timedelta(minutes=6)) == t0 + timedelta(minutes=6)
        assert await replica.scheduled_since("j", "fp1", t0 + timedelta(hours=1)) == t0  # another replica
    finally:
        for store in [*stores, replica]:
            await store.stop()


async def test_a_changed_cron_starts_afresh_and_a_restart_recovers_from_the_start(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    """Schedule clock 08:00 load, 08:20 reload (hourly's cron changed, daily's command only),
    08:40 restart: hourly, never fired, recovers 08:30 (after its new start) once."""
    t0 = datetime(2027, 3, 1, 8, 0, tzinfo=ZoneInfo("UTC"))
    now = [t0]
    daily = {"name": "daily", "cron": "0 9 * * *", "timezone": "UTC", "command": "c"}
    hourly = {"name": "hourly", "cron": "0 * * * *", "timezone": "UTC", "command": "status"}
    config = make_config(
        topics,
        livedata=redis_settings(redis_url, redis_prefix, misfire_grace_s=3600),
        task_timer={"jobs": [daily, hourly]},
    )

    async def since() -> dict[str, int]:
        raw = await redis_client.hgetall(f"{redis_prefix}:since")
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def key(job: dict[str, Any]) -> str:
        return f"{job['name']}|{schedule_fingerprint(JobSettings.model_validate(job))}"

    timer = TaskTimer(config, clock=lambda: now[0])
    changed = {**hourly, "cron": "30 * * * *"}
    async with TopicReader(kafka_bootstrap, topics.system_events) as events, running(timer):
        await eventually(lambda: len(timer.next_fires) == 2, what="the schedule")
        first = await since()
        assert first[key(daily)] == first[key(hourly)] == int(t0.timestamp())
        now[0] = t0 + timedelta(minutes=20)
        write_yaml(config.directory / "task_timer.yml", {"jobs": [{**daily, "command": "d"}, changed]})
        timer.request_reload()
        await events.wait_for(Status, lambda s: s.state == "reloaded", what="the reload")
        after = await since()
        assert after[key(daily)] == int(t0.timestamp())  # the same schedule keeps its start
        assert after[key(changed)] == int(now[0].timestamp())  # a changed cron starts afresh
    now[0] = t0 + timedelta(minutes=40)
    restarted = TaskTimer(load_config(config.directory, env=env_without_overrides()), clock=lambda: now[0])
    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands, running(restarted):
        cmd = await commands.wait_for(ControlCommand, what="the recovered fire")
        await eventually(
            lambda: sample(restarted, "livedata_timer_fires_total", job="hourly", outcome="published"), what="recorded"
        )
    assert cmd.job == "hourly" and cmd.scheduled_for == t0 + timedelta(minutes=30)
    assert len(commands.of_type(ControlCommand)) == 1  # daily missed nothing since 08:00
