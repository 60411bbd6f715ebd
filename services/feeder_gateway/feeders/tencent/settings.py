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

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
