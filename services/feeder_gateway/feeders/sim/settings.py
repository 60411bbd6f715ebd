"""Settings of a ``type: sim`` source."""

from __future__ import annotations

from pydantic import Field

from shared.config import Strict


class SimSettings(Strict):
    """Settings of a ``type: sim`` source."""

    seed: int = 7
    """Same seed, same symbols → the same price paths."""
    ticks_per_s_per_symbol: float = Field(2.0, gt=0, le=100_000)
    """Average tick rate of each subscribed symbol."""
    interval_ms: float = Field(100.0, gt=0, le=10_000)
    """Generation step: ticks due within a step are produced together as one batch."""
    volatility_bps: float = Field(3.0, ge=0, le=1_000)
    """Standard deviation of each tick's price move, in basis points."""
    max_batch: int = Field(256, ge=1, le=100_000)
    """Most ticks per yielded batch: a big step is handed over in pieces, as a real
    provider's frames would be, so the publisher gets the event loop in between."""
    history_minutes: int = Field(60, ge=1, le=1440)
    """Minutes of generated bars kept per symbol for the minute history (gap repair): 56
    bytes a minute, so 60 minutes of the full market (14,141 symbols) take about 48 MB."""
    stale_after_s: float | None = Field(10.0, gt=0)
    """Watchdog: no tick this long while subscribed means the feed is stale."""
