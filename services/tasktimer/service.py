"""The tasktimer service: wait for the next instant, publish the job's command once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.tasktimer.cron import fire_id, next_fire
from shared.config import AppConfig, HttpSettings, JobSettings
from shared.dto import ControlCommand, utcnow
from shared.events import SystemEvents
from shared.kafka import KafkaPublisher, ensure_topics
from shared.logs import kv
from shared.runtime import Service
from shared.topics import Topics

log = logging.getLogger("tasktimer")


class TaskTimer(Service):
    """Fires each enabled job at each of its cron instants."""

    name = "tasktimer"

    def __init__(self, config: AppConfig, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(config)
        self.clock = clock
        live = config.livedata
        self.settings = live.tasktimer
        self.kafka = live.kafka
        self.topics = Topics(live.topics.prefix)
        self.jobs = [j for j in config.task_timer.jobs if j.enabled]
        self.publisher = KafkaPublisher(live.kafka, f"{live.kafka.client_id}-tasktimer", self.metrics)
        self.events = SystemEvents(self.name, self.topics.system_events)
        self.next_fires: dict[str, datetime] = {}
        self._fired: set[str] = set()
        self._fires = self.metrics.counter("livedata_timer_fires", "Commands published by job", ["job"])
        self._failures = self.metrics.counter(
            "livedata_timer_failures", "Fires abandoned after the grace period", ["job"]
        )
        self._lateness = self.metrics.histogram(
            "livedata_timer_lateness_seconds", "Scheduled instant → command published"
        )
        self._broker_ok = False

    @property
    def http_settings(self) -> HttpSettings:
        return self.settings.http

    @property
    def shutdown_timeout_s(self) -> float:
        return self.settings.shutdown_timeout_s

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self._broker_ok, {"broker": self._broker_ok, "jobs": len(self.jobs)}

    def health(self) -> dict[str, Any]:
        return {"service": self.name, "next_fires": {k: v.isoformat() for k, v in self.next_fires.items()}}

    def command_for(self, job: JobSettings, instant: datetime) -> ControlCommand:
        return ControlCommand(
            command=job.command,
            params=dict(job.params),
            source=self.name,
            correlation_id=fire_id(job, instant),
            target=job.target,
            timestamp=utcnow(),  # issued at: real time, whatever the schedule clock
            scheduled_for=instant,
        )

    async def fire(self, job: JobSettings, instant: datetime) -> None:
        """Publish the job's command for ``instant``, once, retrying within the grace."""
        fid = fire_id(job, instant)
        if fid in self._fired:
            return
        self._fired.add(fid)
        cmd = self.command_for(job, instant)
        try:
            await asyncio.wait_for(
                self.publisher.publish(self.topics.named(job.topic), cmd, key=job.target),
                timeout=max(self.settings.misfire_grace_s, 1.0),
            )
        except TimeoutError:
            self._failures.labels(job.name).inc()
            self.events.alert(
                "timer_fire_failed", f"job {job.name} could not publish within the grace period", fire=fid
            )
            return
        lateness = (self.clock() - instant).total_seconds()
        self._lateness.observe(max(lateness, 0.0))
        self._fires.labels(job.name).inc()
        log.info("fired", extra=kv(job=job.name, instant=instant.isoformat(), lateness_ms=round(lateness * 1000, 1)))

    async def run(self, stop: asyncio.Event) -> None:
        if self.kafka.create_topics:
            await ensure_topics(self.kafka, self.topics.with_partitions(self.kafka.partitions))
        await self.publisher.start()
        self._broker_ok = True
        log.info("jobs loaded", extra=kv(jobs=[j.name for j in self.jobs]))
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name="timer.events")
                fires: set[asyncio.Task[None]] = set()
                now = self.clock()
                pending = {j.name: (j, next_fire(j, now)) for j in self.jobs}
                while not stop.is_set():
                    self.next_fires = {name: at for name, (_, at) in pending.items()}
                    if not pending:
                        await stop.wait()
                        break
                    soonest = min(at for _, at in pending.values())
                    delay = (soonest - self.clock()).total_seconds()
                    if delay > 0:
                        # wake a hair early, then on time: wait_for has ~ms jitter
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=delay)
                        if stop.is_set():
                            break
                        remaining = (soonest - self.clock()).total_seconds()
                        if remaining > 0:
                            continue
                    now = self.clock()
                    for name, (job, at) in list(pending.items()):
                        if at <= now:
                            # each fire is its own task: a slow broker delays no other job
                            t = tg.create_task(self.fire(job, at), name=f"timer.fire.{name}")
                            fires.add(t)
                            t.add_done_callback(fires.discard)
                            pending[name] = (job, next_fire(job, now))
                for t in list(fires):
                    t.cancel()
                self.events.close()
                await events_task
        finally:
            self._broker_ok = False
            with contextlib.suppress(Exception):
                await self.publisher.stop()
