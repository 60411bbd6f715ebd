"""Reconnect delays: exponential, capped, full jitter, reset after a healthy period."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Next delay = uniform(0, min(cap, base * 2**attempt)) ("full jitter").

    Call ``connected()`` when a connection is up; once it has stayed up ``healthy_after_s``
    the next failure starts again from ``base``.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    _up_since: float | None = None

    def connected(self, now: float | None = None) -> None:
        self._up_since = time.monotonic() if now is None else now

    def next_delay(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._up_since is not None and now - self._up_since >= self.healthy_after_s:
            self.attempt = 0
        self._up_since = None
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
        self._up_since = None
