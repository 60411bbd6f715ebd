"""The tasktimer service: wait for the next instant, publish the job's command once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.tasktimer.cron import fire_id, next_fire
from shared.config import AppConfig, JobSettings, TasktimerSettings
from shared.dto import ControlCommand, utcnow
from shared.logs import kv
from shared.runtime import Service

log = logging.getLogger("tasktimer")


class TaskTimer(Service):
    """Fires each enabled job at each of its cron instants."""

    name = "tasktimer"

    settings: TasktimerSettings

    def __init__(self, config: AppConfig, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(config, config.livedata.tasktimer)
        self.clock = clock
        self.jobs = [j for j in config.task_timer.jobs if j.enabled]
        self.next_fires: dict[str, datetime] = {}
        self._fired: set[str] = set()
        self._fires = self.metrics.counter("livedata_timer_fires", "Commands published by job", ["job"])
        self._failures = self.metrics.counter(
            "livedata_timer_failures", "Fires abandoned after the grace period", ["job"]
        )
        self._lateness = self.metrics.histogram(
            "livedata_timer_lateness_seconds", "Scheduled instant → command published"
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.broker_ok, {"broker": self.broker_ok, "jobs": len(self.jobs)}

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
        await self.start_kafka()
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
            await self.stop_kafka()
