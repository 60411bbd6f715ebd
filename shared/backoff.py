"""Reconnect delays: exponential, capped, full jitter, reset after a healthy period."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Next delay = uniform(0, min(cap, base * 2**attempt)) ("full jitter").

    Call ``connected()`` when a connection is up; once it has stayed up ``healthy_after_s``
    the next failure starts again from ``base``. With ``first_s`` set, the first failure
    (attempt 0) waits only uniform(0, first_s) and the doublings start from ``base`` at
    the second: an established connection that drops comes back at once (jittered), a
    connection that keeps failing still backs off.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    first_s: float | None = None
    attempt: int = 0
    _up_since: float | None = None

    def connected(self, now: float | None = None) -> None:
        self._up_since = time.monotonic() if now is None else now

    def next_delay(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._up_since is not None and now - self._up_since >= self.healthy_after_s:
            self.attempt = 0
        self._up_since = None
        if self.first_s is None:
            ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        elif self.attempt == 0:
            ceiling = min(self.cap_s, self.first_s)
        else:
            ceiling = min(self.cap_s, self.base_s * (2 ** (self.attempt - 1)))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
        self._up_since = None
