"""Settings every HTTP poller shares (``HttpPollingSettings``): pydantic only, no network code.

Kept apart from ``polling`` (the aiohttp poll driver) so that the source ``catalog`` can
validate a poller's settings without importing aiohttp.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from shared.config import Strict


class HttpPollingSettings(Strict):
    """Settings every HTTP poller has; a provider adds its own (key, batch size, encoding)."""

    base_url: str
    """Endpoint root, ``http://`` or ``https://``; a trailing ``/`` is dropped."""
    poll_interval_s: float = Field(5.0, gt=0)
    """Time between the starts of two polls of the whole symbol set."""
    poll_jitter_s: float = Field(0.25, ge=0)
    """Up to this much random delay is added to each interval so pollers do not align."""
    min_poll_gap_s: float = Field(0.5, ge=0)
    """A symbol change polls at once, but never sooner than this after the last poll."""
    timeout_s: float = Field(10.0, gt=0)
    """Whole-request timeout (connect, send, wait, read); a hung server counts as a failure."""
    backoff_base_s: float = Field(1.0, gt=0)
    """First retry delay after a failed poll; doubles per failure (full jitter)."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Longest retry delay."""
    healthy_after_s: float = Field(30.0, ge=0)
    """Polls succeeding this long reset the backoff to ``backoff_base_s``."""
    rate_limited_pause_s: float = Field(30.0, ge=0)
    """Least wait after the provider throttles us (HTTP 429) when it gives no ``Retry-After``."""
    ban_hold_s: float = Field(60.0, ge=0)
    """A ban (HTTP 403 from a source that worked, ``ban_after_resets`` resets in a row)
    holds every request at least this long..."""
    ban_jitter_cap_s: float = Field(300.0, ge=0)
    """...plus a random extra of up to ``ban_hold_s * 2**(bans in a row - 1)``, capped by this."""
    ban_after_resets: int = Field(2, ge=1)
    """Consecutive connection resets before any answer that count as a ban."""
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    """Largest answer body read (after decompression); a larger one is a malformed answer
    (``body_too_large``) that fails the poll, never memory grown without bound."""
    stale_after_s: float | None = Field(None, ge=0)
    """Market watchdog: no successful poll this long (in session) → restart or fail over.
    Judged by poll success, not quote time: a quiet stock repeats the same quote. Unset:
    3 x ``poll_interval_s``, at least ``timeout_s + poll_interval_s``; 0 disables."""
    frozen_after_s: float | None = Field(180.0, ge=0)
    """Market watchdog: polls succeed but no polled quote's price or volume changed this
    long (in session) → the source is frozen: restart or fail over. Raise it for a set of
    a few illiquid symbols; None or 0 disables."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")
