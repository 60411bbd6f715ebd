"""Settings of a ``type: tencent`` source (no key needed)."""

from __future__ import annotations

import codecs

from pydantic import Field, field_validator

from services.feeder_gateway.feeders.polling_settings import HttpPollingSettings


class TencentSettings(HttpPollingSettings):
    """Settings of a ``type: tencent`` source (no key needed).

    Tencent throttles with HTTP 429 (``rate_limited_pause_s``), and bans with HTTP 403 and
    with connection resets (``ban_after_resets`` in a row): both hold ``ban_hold_s`` and more.
    ``stale_after_s`` judges poll success, never quote age: the quotes are ~15 min old
    by design.
    """

    base_url: str = "http://qt.gtimg.cn"
    """Quote host; the feeder polls ``{base_url}/q=r_hk00700,...``. For the UTF-8 variant
    use ``http://sqt.gtimg.cn/utf8`` with ``encoding: utf-8``."""
    encoding: str = "gbk"
    """Text encoding of the answer: ``gbk`` on qt.gtimg.cn, ``utf-8`` on the utf8/ path."""
    max_codes_per_request: int = Field(60, ge=1, le=200)
    """Codes per request; larger sets are split into requests sent one after another."""
    min_request_interval_s: float = Field(0.02, ge=0, le=60)
    """Requests to the quote host (polls, and minute-history requests, which wait behind
    them) are at least this far apart; sources of one host: the largest applies."""
    request_jitter_s: float = Field(0.0, ge=0, le=60)
    """Plus a uniform random extra of up to this much."""
    history_base_url: str = "https://web.ifzq.gtimg.cn"
    """Scheme and host of today's minute lines (``/appstock/app/minute/query?code=hk00700``,
    gap repair); paced at the quote host's pacer, as background requests."""
    history_timeout_s: float = Field(10.0, gt=0)
    """Whole-request timeout of one minute-history request."""
    history_max_body_bytes: int = Field(2 * 2**20, ge=4096)
    """Largest minute-history answer read; a larger one is malformed and unavailable."""
    history_settle_s: float = Field(60.0, ge=0)
    """A minute's line is final this long after the minute ends (its volume is the next
    cumulative figure minus this one; the lines are as delayed as the quotes)."""

    @field_validator("history_base_url")
    @classmethod
    def _history_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("history_base_url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
