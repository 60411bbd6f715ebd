"""Backoff: exponential ceiling, full jitter, cap, reset after a healthy period."""

from __future__ import annotations

import random

from shared.backoff import Backoff


def test_ceiling_doubles_up_to_cap_with_full_jitter() -> None:
    b = Backoff(base_s=1, cap_s=8, rng=random.Random(1))
    delays = [b.next_delay(now=0) for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered


def test_reset_after_healthy_period_only() -> None:
    b = Backoff(base_s=1, cap_s=100, healthy_after_s=30, rng=random.Random(2))
    for _ in range(5):
        b.next_delay(now=0)
    b.connected(now=100)
    b.next_delay(now=110)  # dropped after 10 s: not healthy long enough
    assert b.attempt == 6
    b.connected(now=200)
    b.next_delay(now=240)
    assert b.attempt == 1
