"""Loop heartbeats and rate alarms: what makes /readyz and the alerts tell the truth.

``LoopHeartbeats``: every owned loop beats each time round; one that has not beaten for
``stuck_after_s`` is stuck and the service is not ready, even though the process answers.
``RateAlarm``: a counter that grows faster than a threshold (conflated ticks, dead
letters) raises an alert on ``system.events``, at most once per interval.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from shared.events import SystemEvents


class LoopHeartbeats:
    """Last beat per named loop; loops retire when they end (e.g. a standby's consumers)."""

    def __init__(self, stuck_after_s: float) -> None:
        self.stuck_after_s = stuck_after_s
        self._last: dict[str, float] = {}

    def beat(self, name: str) -> None:
        self._last[name] = time.monotonic()

    def retire(self, name: str) -> None:
        self._last.pop(name, None)

    def stuck(self, now: float | None = None) -> dict[str, float]:
        """Loops silent for longer than allowed, with how long (s)."""
        now = time.monotonic() if now is None else now
        return {n: round(now - t, 1) for n, t in self._last.items() if now - t > self.stuck_after_s}


class RateAlarm:
    """Alerts when ``read()`` (a monotonic count) grows faster than ``threshold_per_s``
    over ``window_s``; the same alert at most once per ``interval_s``."""

    def __init__(
        self,
        events: SystemEvents,
        code: str,
        what: str,
        read: Callable[[], float],
        threshold_per_s: float,
        interval_s: float = 60.0,
        window_s: float = 10.0,
    ) -> None:
        self._events = events
        self.code = code
        self.what = what
        self._read = read
        self.threshold_per_s = threshold_per_s
        self.interval_s = interval_s
        self.window_s = window_s
        # the baseline is taken now: what grows before the first check counts too
        self._samples: deque[tuple[float, float]] = deque([(time.monotonic(), float(read()))])
        self._last_alert: float | None = None
        self.raised = 0

    def check(self, now: float | None = None) -> float:
        """Sample the counter; alert if due. Returns the rate over the window (per s)."""
        now = time.monotonic() if now is None else now
        value = float(self._read())
        self._samples.append((now, value))
        while len(self._samples) > 1 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, v0 = self._samples[0]
        if now - t0 < min(1.0, self.window_s):
            return 0.0
        rate = (value - v0) / (now - t0)
        if rate > self.threshold_per_s and (self._last_alert is None or now - self._last_alert >= self.interval_s):
            self._last_alert = now
            self.raised += 1
            self._events.alert(
                self.code,
                f"{self.what}: {rate:,.0f}/s over the last {now - t0:.0f}s (threshold {self.threshold_per_s:,.0f}/s)",
                rate_per_s=round(rate, 1),
                total=value,
            )
        return rate
