"""The tasktimer's time source: what time the schedule says it is, and how long to wait.

Production uses ``WallClock``. Tests and benchmarks inject another clock so that many
cron instants pass quickly: ``ScaledClock`` runs schedule time ``speed`` times faster
than real time from a chosen start (the same arguments give every process the same
schedule time, so several replicas agree), and any plain ``() -> datetime`` callable is
accepted too (its schedule time advances with real time, as the benchmark's jumping
clock does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from shared.dto import utcnow


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current schedule time (aware)."""
        ...

    def real_seconds(self, schedule_s: float) -> float:
        """How long, in real seconds, ``schedule_s`` seconds of schedule time last."""
        ...


class WallClock:
    """Schedule time is real time."""

    def now(self) -> datetime:
        return utcnow()

    def real_seconds(self, schedule_s: float) -> float:
        return schedule_s


class CallableClock:
    """A ``() -> datetime`` callable as a clock; its time advances at the real pace."""

    def __init__(self, read: Callable[[], datetime]) -> None:
        self._read = read

    def now(self) -> datetime:
        return self._read()

    def real_seconds(self, schedule_s: float) -> float:
        return schedule_s


class ScaledClock:
    """Schedule time = ``start`` + ``speed`` x (real time since ``real_start``, epoch s)."""

    def __init__(self, start: datetime, speed: float, real_start: float | None = None) -> None:
        self.start = start.timestamp()
        self.speed = speed
        self.real_start = time.time() if real_start is None else real_start

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.start + (time.time() - self.real_start) * self.speed, UTC)

    def real_seconds(self, schedule_s: float) -> float:
        return schedule_s / self.speed

    def real_time_of(self, at: datetime) -> float:
        """The real moment (epoch s) at which schedule time reaches ``at``."""
        return self.real_start + (at.timestamp() - self.start) / self.speed


def as_clock(clock: Clock | Callable[[], datetime] | None) -> Clock:
    if clock is None:
        return WallClock()
    if isinstance(clock, Clock):
        return clock
    return CallableClock(clock)
