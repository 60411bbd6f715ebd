"""Timer lateness: scheduled instant → command on the topic, over 60 instants.

Cron instants are a minute apart; 60 of them in real time would take an hour. The
TaskTimer runs in process with an injected clock (a tasktimer ``Clock``) that reads the
wall clock plus an offset, and the offset jumps forward when the timer is about to wait
for a whole minute more than ``lead_s`` away: every instant is then ``lead_s`` of real
waiting ahead, and the timer waits for it exactly as it would for a real one
(``wait_for`` on its wake event with the delay the clock converts to real seconds), then
reads the clock, finds the instant due within its misfire grace and fires it. The real
moment of each instant is recorded when the wait for it is set up;
lateness is the arrival of the command at a consumer here (the client SDK's fetch
settings) minus that moment. The baseline: a coroutine that sleeps until the same kind
of instant and sends one message with a plain AIOKafkaProducer to the same consumer.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.tasktimer.clock import Clock
from services.tasktimer.service import TaskTimer
from shared.dto import ControlCommand, decode, encode, utcnow
from shared.kafka import producer_options
from tests.bench.harness import (
    BenchContext,
    Figure,
    Figures,
    TopicTap,
    create_topic,
    distribution,
    fresh_topics,
    statistic,
)
from tests.helpers import eventually, running

NAME = "timer"
TITLE = "tasktimer lateness (scheduled instant → command on the topic)"
NEEDS_BROKER = True
TARGET_P99_MS = 50.0


class JumpingClock(Clock):
    """Wall clock + an offset that jumps so that the whole minute the timer is about to
    wait for is ``lead_s`` of real time away.

    The jump is set up in ``real_seconds`` (the timer's "how long does this wait last in
    real time", asked just before it waits), never on a read of ``now``: the timer reads
    ``now`` again after waking, to see what is due and whether it is within the misfire
    grace, and a clock that jumped on that read made every instant look a minute late
    (missed beyond the grace: not fired). Only a wait that ends on a whole minute and is
    longer than ``lead_s`` jumps; any other (a publish deadline within the grace) runs at
    the real pace. The jump takes effect ``lead_s / 2`` after it is set up, so the fire
    just launched (it runs after the timer has set up its next wait) still sees the time
    of its instant, as under a wall clock. ``real_at[instant]`` is the wall-clock time
    (epoch s) at which the clock reaches ``instant``; no other jump happens between
    setting it up and reaching it.
    """

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s
        self.offset = 0.0
        self._jump: tuple[float, float] | None = None  # (real moment, offset from then)
        self.real_at: dict[datetime, float] = {}

    def _offset(self, real: float) -> float:
        if self._jump is not None and real >= self._jump[0]:
            self.offset = self._jump[1]
            self._jump = None
        return self.offset

    def now(self) -> datetime:
        real = time.time()
        return datetime.fromtimestamp(real + self._offset(real), UTC)

    def real_seconds(self, schedule_s: float) -> float:
        real = time.time()
        target = real + self._offset(real) + schedule_s
        boundary = round(target / 60.0) * 60.0
        if abs(target - boundary) > 0.05:
            return schedule_s
        instant = datetime.fromtimestamp(boundary, UTC)
        if schedule_s <= self.lead_s:  # close enough already (the first wait, an early wake)
            self.real_at.setdefault(instant, boundary - self.offset)
            return schedule_s
        self._jump = (real + self.lead_s / 2, boundary - (real + self.lead_s))
        self.real_at[instant] = real + self.lead_s
        return self.lead_s


class _Arrivals:
    def __init__(self) -> None:
        self.commands: list[tuple[ControlCommand, float]] = []

    def on_records(self, records: list[ConsumerRecord[bytes, bytes]], now: float) -> None:
        for r in records:
            msg = decode(r.value or b"")
            if isinstance(msg, ControlCommand):
                self.commands.append((msg, now))


async def _tasktimer(ctx: BenchContext, instants: int, lead_s: float) -> dict[str, Any]:
    clock = JumpingClock(lead_s)
    jobs = {"jobs": [{"name": "bench", "cron": "* * * * *", "timezone": "UTC", "command": "status"}]}
    arrivals = _Arrivals()
    async with fresh_topics(ctx, NAME) as topics:
        timer = TaskTimer(ctx.load(ctx.config_dir(topics, task_timer=jobs)), clock=clock)
        async with TopicTap(ctx, topics.control_commands, arrivals.on_records) as tap, running(timer):

            def enough() -> bool:
                tap.check()
                return len(arrivals.commands) >= instants

            await eventually(enough, timeout_s=instants * lead_s + 30, interval_s=0.05, what=f"{instants} fires")
    late: list[float] = []
    issued: list[float] = []
    for cmd, arrived in arrivals.commands[:instants]:
        assert cmd.scheduled_for is not None
        real = clock.real_at[cmd.scheduled_for]
        late.append(arrived - real)
        issued.append(cmd.timestamp.timestamp() - real)
    out = distribution(late, scale=1000.0)
    out["issued_after_instant_ms"] = distribution(issued, scale=1000.0)
    return out


async def _baseline(ctx: BenchContext, instants: int, lead_s: float) -> dict[str, Any]:
    arrivals: list[float] = []
    async with fresh_topics(ctx, NAME) as topics:
        topic = f"{topics.prefix}.baseline"
        await create_topic(ctx, topic, 1)
        producer = AIOKafkaProducer(**producer_options(ctx.kafka(), "bench-raw-timer"))
        await producer.start()
        late: list[float] = []

        def on_records(records: list[ConsumerRecord[bytes, bytes]], now: float) -> None:
            arrivals.extend(now for _ in records)

        try:
            value = encode(ControlCommand(command="status", correlation_id="x", timestamp=utcnow(), source="bench"))
            async with TopicTap(ctx, topic, on_records) as tap:
                for i in range(instants):
                    instant = time.time() + lead_s
                    await asyncio.sleep(instant - time.time())  # the raw timer under test
                    await producer.send_and_wait(topic, value, key=b"datamanager")

                    def arrived(i: int = i) -> bool:
                        tap.check()
                        return len(arrivals) > i

                    await eventually(arrived, timeout_s=10, interval_s=0.001, what="raw command")
                    late.append(arrivals[i] - instant)
        finally:
            await producer.stop()
    return distribution(late, scale=1000.0)


async def run(ctx: BenchContext) -> list[Figure]:
    instants = ctx.pick(60, 12)
    lead_s = ctx.pick(1.0, 0.4)
    system = await _tasktimer(ctx, instants, lead_s)
    raw = await _baseline(ctx, instants, lead_s)
    figures = Figures(NAME)
    for key in ("p50", "p99", "max"):
        with figures.measure(
            f"timer lateness {key} ({instants} instants)",
            "ms",
            baseline_name="asyncio.sleep to the instant + raw AIOKafkaProducer.send_and_wait",
            target=f"p99 <= {TARGET_P99_MS:g} ms" if key == "p99" else "",
            details={"system": system, "baseline": raw, "lead_s": lead_s} if key == "p50" else {},
        ) as f:
            f.baseline = statistic(raw, key, "raw commands")
            value = f.value = statistic(system, key, "fired commands")
            f.met = (value <= TARGET_P99_MS) if key == "p99" else None
    return figures
