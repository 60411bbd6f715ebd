"""The tasktimer service: wait for each job's next instant, publish its command once.

Exactly once across replicas: every replica schedules every job; at an instant each one
tries to claim the fire (``job@instant``) in the fire store, and only the claimant
publishes, then records the outcome. A replica that loses the claim checks back until the
fire is recorded, and takes it over if the claimant died (its claim expired) while the
misfire grace lasts. The one window left: a claimant that dies after the broker acked
the command but before recording it; its successor publishes again with the same
correlation id, on which consumers deduplicate.

After a restart, the instants a job missed since its last recorded fire, or since it was
first scheduled if that is later (or it never fired), are fired once (coalesced: the
latest one) if within ``misfire_grace_s``; older ones are logged and skipped. Since when a
job is scheduled is recorded in the fire store by the first replica that loads it, per
cron/timezone/calendar: a job whose schedule changed starts afresh. SIGHUP reloads
task_timer.yml: unchanged jobs keep their schedule; an invalid file keeps the old jobs and
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from services.tasktimer.clock import Clock, as_clock
from services.tasktimer.cron import MAX_SKIPPED_DAYS, fire_id, horizon_note, missed, next_fire, schedule_fingerprint
from services.tasktimer.jobs import HORIZON_WARNING_DAYS, load_jobs, unconfirmed_year
from services.tasktimer.store import FireStore, MemoryFireStore, RedisFireStore
from shared.config import TASK_TIMER_FILE, AppConfig, ConfigError, JobSettings, TasktimerSettings
from shared.coordination import ClaimState
from shared.dto import ControlCommand, utcnow
from shared.logs import kv
from shared.metrics import add_callback_metric
from shared.runtime import Service
from shared.signing import sign, signer_from_config
from shared.tasks import cancel_and_wait, retry_until_stopped, sleep_or_stop

log = logging.getLogger("tasktimer")

PUBLISHED = "published"
FAILED = "failed"


def build_store(config: AppConfig) -> FireStore:
    """Redis when ``redis.url`` is set, else this process alone."""
    url = config.livedata.redis.url
    s = config.livedata.tasktimer
    if url is None:
        return MemoryFireStore()
    return RedisFireStore(url.get_secret_value(), s.redis_prefix, s.record_ttl_s)


class TaskTimer(Service):
    """Fires each enabled job at each of its cron instants, once across replicas."""

    name = "tasktimer"

    settings: TasktimerSettings

    def __init__(
        self,
        config: AppConfig,
        clock: Clock | Callable[[], datetime] | None = None,
        store: FireStore | None = None,
    ) -> None:
        super().__init__(config, config.livedata.tasktimer)
        self.signer = signer_from_config(config)
        self.clock = as_clock(clock)
        self.store = store or build_store(config)
        self.replica = self.settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.grace = timedelta(seconds=self.settings.misfire_grace_s)
        self.jobs: dict[str, JobSettings] = {j.name: j for j in config.task_timer.jobs if j.enabled}
        self.next_fires: dict[str, datetime] = {}
        self.store_up = False  # the fire store answered (readiness)
        self._wake = asyncio.Event()
        self._reload_requested = False
        self.reloads_on_sighup = False
        self._stopping = asyncio.Event()
        self._fires = self.metrics.counter(
            "livedata_timer_fires", "Fires handled, by job and outcome", ["job", "outcome"]
        )
        self._failures = self.metrics.counter(
            "livedata_timer_failures", "Fires abandoned after the grace period", ["job"]
        )
        self._skipped = self.metrics.counter(
            "livedata_timer_misfires_skipped", "Missed instants not fired (older than the grace, or coalesced)", ["job"]
        )
        self._lateness = self.metrics.histogram(
            "livedata_timer_lateness_seconds", "Scheduled instant → command acknowledged by the broker"
        )
        self._reloads = self.metrics.counter("livedata_timer_reloads", "task_timer.yml reloads", ["result"])
        add_callback_metric(
            self.metrics,
            "gauge",
            "livedata_timer_calendar_unconfirmed_jobs",
            f"Enabled jobs whose exchange calendar is not confirmed within {HORIZON_WARNING_DAYS} days "
            "(they fire on the holidays library's estimated dates)",
            lambda: float(sum(unconfirmed_year(j, self.clock.now()) is not None for j in self.jobs.values())),
        )

    # -- health ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self.broker_ok and self.store_up
        return ready, {
            "broker": self.broker_ok,
            "store": self.store_up,
            "jobs": len(self.jobs),
            "shared_store": self.store.shared,
        }

    async def _start_store(self, stop: asyncio.Event) -> bool:
        """Reach the fire store (Redis) with backoff, not ready meanwhile; False if ``stop``
        came first. A Redis that is down or refuses redis.url's credentials is logged once
        per kind of error and retried: it is no crash and no traceback."""

        async def reach() -> bool:
            await self.store.start()
            return True

        self.store_up = bool(
            await retry_until_stopped(
                reach, stop, "redis not usable (check redis.url in livedata.yml)", log, level=logging.ERROR,
                recovered="redis usable again",
            )
        )
        return self.store_up

    def health(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "replica": self.replica,
            "next_fires": {k: v.isoformat() for k, v in self.next_fires.items()},
        }

    # -- one fire ----------------------------------------------------------------------

    def command_for(self, job: JobSettings, instant: datetime) -> ControlCommand:
        """The command of one fire, signed when ``security.sign`` is set."""
        cmd = ControlCommand(
            command=job.command,
            params=dict(job.params),
            source=self.name,
            correlation_id=fire_id(job, instant),  # job@instant: the same on every replica and retry
            target=job.target,
            timestamp=utcnow(),  # issued at: real time, whatever the schedule clock
            scheduled_for=instant,
            job=job.name,
        )
        return sign(self.signer, cmd)

    async def fire(self, job: JobSettings, instant: datetime) -> str | None:
        """Publish the job's command for ``instant`` if this replica wins the fire; retry
        within the grace. Returns the outcome, None when another replica handled it."""
        fid = fire_id(job, instant)
        deadline = instant + self.grace
        ttl_s = self.settings.lock_ttl_s
        while True:
            store_error: Exception | None = None
            try:
                claim = await self.store.claims.claim(fid, self.replica, ttl_s)
                if claim.state is ClaimState.DONE:
                    return None
                if claim.state is ClaimState.CLAIMED:
                    break
            except Exception as e:  # Redis away: keep trying within the grace
                store_error = e
                log.warning("fire store unavailable", extra=kv(fire=fid, error=repr(e)))
            if self.clock.now() > deadline:
                if store_error is None:
                    return None  # another replica held the fire all along: it is that one's
                self._failures.labels(job.name).inc()
                self.events.alert("timer_fire_failed", f"job {job.name}: fire store unavailable", fire=fid)
                return FAILED
            # another replica holds the fire: check back until it is recorded or its claim lapses
            if await sleep_or_stop(self._stopping, ttl_s / 2):
                return None
        note = horizon_note(job, instant)
        if note is not None:
            self.events.alert("calendar_unconfirmed", f"job {job.name}: {note}", job=job.name, fire=fid, estimated=True)
        renewer = asyncio.create_task(self._renew(fid, ttl_s), name=f"timer.renew.{job.name}")
        try:
            outcome, error = await self._publish(job, instant, deadline)
        finally:
            await cancel_and_wait([renewer])
        lateness = (self.clock.now() - instant).total_seconds()
        record = {
            "job": job.name,
            "fire_id": fid,
            "instant": instant.isoformat(),
            "replica": self.replica,
            "outcome": outcome,
            "lateness_s": round(lateness, 4),
            "recorded_at": utcnow().isoformat(),
            **({"error": error} if error else {}),
            **({"calendar": note} if note else {}),
        }
        try:
            await self.store.record(job.name, fid, instant, record)
        except Exception as e:
            log.error("fire not recorded", extra=kv(fire=fid, error=repr(e)))
        self._fires.labels(job.name, outcome).inc()
        if outcome == PUBLISHED:
            self._lateness.observe(max(lateness, 0.0))
        else:
            self._failures.labels(job.name).inc()
            self.events.alert("timer_fire_failed", f"job {job.name}: not published within the grace", fire=fid)
        self.events.status(
            "timer",
            "fired" if outcome == PUBLISHED else "fire_failed",
            job=job.name,
            fire=fid,
            instant=instant.isoformat(),
            replica=self.replica,
            lateness_ms=round(lateness * 1000, 1),
        )
        return outcome

    async def _publish(self, job: JobSettings, instant: datetime, deadline: datetime) -> tuple[str, str | None]:
        """Publish, retrying (the publisher resends with backoff) until the grace ends."""
        cmd = self.command_for(job, instant)
        remaining = self.clock.real_seconds((deadline - self.clock.now()).total_seconds())
        try:
            await asyncio.wait_for(
                self.publisher.publish(self.topics.named(job.topic), cmd, key=job.target),
                timeout=max(remaining, 1.0),
            )
        except TimeoutError:
            return FAILED, "broker did not acknowledge within the grace"
        except Exception as e:
            return FAILED, repr(e)
        return PUBLISHED, None

    async def _renew(self, fid: str, ttl_s: float) -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                await self.store.claims.renew(fid, self.replica, ttl_s)
            except Exception as e:
                log.warning("claim renewal failed", extra=kv(fire=fid, error=repr(e)))

    # -- schedule ----------------------------------------------------------------------

    async def _recover(self, job: JobSettings, now: datetime) -> datetime | None:
        """The instant to fire now for what ``job`` missed since its last recorded fire or
        since it was first scheduled, whichever is later (the latest miss within the grace;
        older ones are logged and skipped). Records ``now`` as the start of its schedule if
        no replica has yet."""
        try:
            since = await self.store.scheduled_since(job.name, schedule_fingerprint(job), now)
            last = await self.store.last_fire(job.name)
        except Exception as e:
            log.error("last fire unknown, no misfire recovery", extra=kv(job=job.name, error=repr(e)))
            return None
        misses = missed(job, since if last is None else max(since, last), now)
        if not misses:
            return None
        within = [m for m in misses if now - m <= self.grace]
        too_old = [m for m in misses if now - m > self.grace]
        if too_old:
            self._skipped.labels(job.name).inc(len(too_old))
            log.warning(
                "missed instants older than the grace, skipped",
                extra=kv(job=job.name, count=len(too_old), first=too_old[0].isoformat(), last=too_old[-1].isoformat()),
            )
            with contextlib.suppress(Exception):
                await self.store.advance_last(job.name, too_old[-1])
        if not within:
            return None
        if len(within) > 1:
            self._skipped.labels(job.name).inc(len(within) - 1)
            log.info(
                "missed instants coalesced", extra=kv(job=job.name, count=len(within), firing=within[-1].isoformat())
            )
        log.info("firing a missed instant", extra=kv(job=job.name, instant=within[-1].isoformat()))
        return within[-1]

    def _schedule(self, pending: dict[str, datetime], job: JobSettings, now: datetime) -> None:
        """Put the job's next instant after ``now`` in ``pending``; a job without one (every
        instant on a non-trading day) waits for a reload."""
        at = next_fire(job, now)
        if at is not None:
            pending[job.name] = at
            return
        pending.pop(job.name, None)
        log.warning(
            "no instant on a trading day ahead: the job does not fire",
            extra=kv(job=job.name, cron=job.cron, calendar=job.calendar, days=MAX_SKIPPED_DAYS),
        )

    def request_reload(self) -> None:
        """Reload task_timer.yml at the next turn of the loop (SIGHUP)."""
        self._reload_requested = True
        self._wake.set()

    async def _reload(self, pending: dict[str, datetime]) -> None:
        path = self.config.directory / TASK_TIMER_FILE
        try:
            parsed = await asyncio.to_thread(load_jobs, path)
        except ConfigError as e:
            self._reloads.labels("invalid").inc()
            log.error("task_timer.yml invalid, keeping the old jobs:\n%s", e, extra=kv(file=str(path)))
            self.events.alert("timer_config_invalid", str(e), severity="error", file=str(path))
            return
        now = self.clock.now()
        new = {j.name: j for j in parsed.jobs if j.enabled}
        kept = [n for n, j in new.items() if self.jobs.get(n) == j]
        for name in list(pending):
            if name not in kept:
                del pending[name]
        for name, job in new.items():
            if name not in kept:
                try:  # a changed schedule starts afresh; a changed command keeps its start
                    await self.store.scheduled_since(name, schedule_fingerprint(job), now)
                except Exception as e:
                    log.warning("schedule start not recorded", extra=kv(job=name, error=repr(e)))
                self._schedule(pending, job, now)
        self.jobs = new
        self._reloads.labels("ok").inc()
        log.info("task_timer.yml reloaded", extra=kv(jobs=sorted(new), unchanged=sorted(kept)))
        self.events.status("timer", "reloaded", jobs=sorted(new), unchanged=sorted(kept))

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.start_kafka(stop):
            await self.stop_kafka()
            return
        try:
            store_up = await self._start_store(stop)
        except BaseException:
            await self.stop_kafka()
            raise
        if not store_up:  # stopped before Redis answered
            with contextlib.suppress(Exception):
                await self.store.stop()
            await self.stop_kafka()
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            self.reloads_on_sighup = True
        if not self.store.shared:
            log.warning("no redis.url in livedata.yml: single-instance mode (run one tasktimer only)")
            self.events.status("timer", "single_instance", reason="redis.url not set")
        log.info("jobs loaded", extra=kv(jobs=sorted(self.jobs), replica=self.replica))
        try:
            async with asyncio.TaskGroup() as tg:
                events_task = tg.create_task(self.events.run(self.publisher), name="timer.events")
                fires: set[asyncio.Task[Any]] = set()

                def launch(job: JobSettings, at: datetime) -> None:
                    # each fire is its own task: a slow broker delays no other job
                    t = tg.create_task(self._fire_logged(job, at), name=f"timer.fire.{job.name}")
                    fires.add(t)
                    t.add_done_callback(fires.discard)

                def relay_stop(_: object) -> None:
                    self._stopping.set()
                    self._wake.set()

                stop_waiter = tg.create_task(stop.wait(), name="timer.stop")
                stop_waiter.add_done_callback(relay_stop)
                now = self.clock.now()
                pending: dict[str, datetime] = {}
                for job in self.jobs.values():
                    catch_up = await self._recover(job, now)
                    if catch_up is not None:
                        launch(job, catch_up)
                    self._schedule(pending, job, now)
                self.events.status("timer", "scheduled", replica=self.replica, jobs=sorted(pending))
                while not stop.is_set():
                    self.next_fires = dict(pending)
                    if self._reload_requested:
                        self._reload_requested = False
                        await self._reload(pending)
                        continue
                    self._wake.clear()
                    if not pending:
                        await self._wake.wait()
                        continue
                    soonest = min(pending.values())
                    delay = (soonest - self.clock.now()).total_seconds()
                    if delay > 0:
                        await sleep_or_stop(self._wake, self.clock.real_seconds(delay))
                        continue  # re-check: woken early, by a reload or by stop
                    now = self.clock.now()
                    for name, at in list(pending.items()):
                        if at > now:
                            continue
                        job = self.jobs[name]
                        due = [at, *missed(job, at, now)]
                        if len(due) > 1:  # the loop fell behind (suspend, overload): coalesce
                            self._skipped.labels(name).inc(len(due) - 1)
                            log.warning("instants coalesced", extra=kv(job=name, count=len(due)))
                        if now - due[-1] <= self.grace:
                            launch(job, due[-1])
                        else:  # woken past the grace (clock stepped, loop stalled): say so
                            self._skipped.labels(name).inc()
                            log.warning(
                                "instant missed by more than the grace, skipped",
                                extra=kv(job=name, instant=due[-1].isoformat(), late_s=(now - due[-1]).total_seconds()),
                            )
                        self._schedule(pending, job, now)
                self._stopping.set()
                await cancel_and_wait(list(fires))
                self.events.close()
                await events_task
        finally:
            if self.reloads_on_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
                self.reloads_on_sighup = False
            await self.store.stop()
            await self.stop_kafka()

    async def _fire_logged(self, job: JobSettings, at: datetime) -> None:
        try:
            outcome = await self.fire(job, at)
        except Exception as e:  # one job's bug must not end the timer
            log.exception("fire failed", extra=kv(job=job.name, instant=at.isoformat()))
            self.events.alert("timer_fire_failed", f"job {job.name}: {e!r}", fire=fire_id(job, at))
            return
        if outcome is not None:
            log.info("fire", extra=kv(job=job.name, instant=at.isoformat(), outcome=outcome))
