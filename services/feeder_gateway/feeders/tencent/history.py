"""Tencent minute history for gap repair: today's minute lines (``minute/query``), close, volume, amount.

One code per request (``max_symbols_per_request`` 1). Only the latest day is served, so a
window that starts before today (HK time, as delayed as the quotes) is out of reach, and an
answer whose day is later than the window's is HistoryOutOfReach too; one whose day is
earlier (today's session has not begun in the data) has no minutes.

Requests wait for a background slot at the pacer of the quote host (``base_url``, the live
poller's): the two hosts belong to one provider that throttles by client. HTTP 403 and
``ban_after_resets`` resets in a row are a ban (the pacer is held ``ban_hold_s``, live polls
too); HTTP 429 and server errors are HistoryUnavailable (after ``Retry-After`` or
``rate_limited_pause_s``); HTTP 400/404 is HistoryConfigError naming ``history_base_url``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext
from services.feeder_gateway.feeders.history import (
    CLOSE_VOLUME_AMOUNT,
    HistoryConfigError,
    HistoryOutOfReach,
    HistoryUnavailable,
    MinuteBar,
)
from services.feeder_gateway.feeders.history_http import EndpointDown, PacedHistoryGet
from services.feeder_gateway.feeders.pacing import host_pacer
from services.feeder_gateway.feeders.tencent.minutes import (
    MINUTE_PATH,
    MinuteQueryError,
    day_of,
    decode_answer,
    parse_day,
)
from services.feeder_gateway.feeders.tencent.settings import TencentSettings
from services.feeder_gateway.feeders.tencent.wire import NOMINAL_DELAY_S
from shared.sessions import trading_day
from shared.symbols import Market

_DELAY = timedelta(seconds=NOMINAL_DELAY_S)


class TencentHistory:
    """The MinuteHistory of a ``tencent`` source."""

    def __init__(self, settings: TencentSettings, ctx: FeederContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._get = PacedHistoryGet(
            ctx,
            lambda: host_pacer(settings.base_url, settings.min_request_interval_s, settings.request_jitter_s),
            max_body_bytes=settings.history_max_body_bytes,
            ban_hold_s=settings.ban_hold_s,
            ban_after_resets=settings.ban_after_resets,
        )

    @property
    def source(self) -> str:
        return self._ctx.name

    @property
    def fields(self) -> tuple[str, ...]:
        return CLOSE_VOLUME_AMOUNT

    @property
    def max_symbols_per_request(self) -> int:
        return 1

    @property
    def settle_s(self) -> float:
        return self._s.history_settle_s

    def reaches(self, start: datetime, now: datetime) -> bool:
        """Today's minutes only: the day of the quotes now (15 minutes behind)."""
        return trading_day(Market.HK, start) >= trading_day(Market.HK, now - _DELAY)

    async def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, list[MinuteBar]]:
        out: dict[str, list[MinuteBar]] = {}
        if start >= end:
            return out
        timeout = aiohttp.ClientTimeout(total=self._s.history_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for symbol in symbols:
                digits, dot, suffix = symbol.partition(".")
                if not dot or suffix != "HK" or len(digits) != 5 or not digits.isdigit():
                    self._ctx.malformed("unmappable_symbol", symbol)
                    continue
                out[symbol] = await self._symbol(session, f"hk{digits}", start, end)
        return out

    async def _symbol(
        self, session: aiohttp.ClientSession, code: str, start: datetime, end: datetime
    ) -> list[MinuteBar]:
        ctx, s = self._ctx, self._s
        url = URL(s.history_base_url + MINUTE_PATH).with_query({"code": code})
        try:
            answer = await self._get.get(session, url)
        except EndpointDown as e:
            raise HistoryUnavailable(f"minute query: {e}") from None
        status = answer.status
        if status == 403:
            raise self._get.ban("HTTP 403", answer.retry_after_s)
        if status == 429:
            wait = answer.retry_after_s if answer.retry_after_s is not None else s.rate_limited_pause_s
            raise HistoryUnavailable("HTTP 429 too many requests", retry_after_s=wait)
        if status in (400, 404):
            raise HistoryConfigError(
                f"{ctx.name}: {url.with_query(None)} answered HTTP {status}: check 'history_base_url' "
                f"under '{ctx.name}' in data_sources.yml"
            )
        if status != 200:
            raise HistoryUnavailable(f"minute query answered HTTP {status}: {answer.body[:80]!r}")
        try:
            env = decode_answer(answer.body)
        except MinuteQueryError:
            ctx.malformed("bad_history_answer", answer.body[:200])
            raise HistoryUnavailable("minute query: unreadable answer") from None
        if env.code != 0:
            raise HistoryUnavailable(f"minute query answered code={env.code} {env.msg[:60]!r}")
        entry = env.data.get(code) if isinstance(env.data, dict) else None
        if entry is None or entry.data is None or not entry.data.data:
            return []  # a code Tencent has no minutes of (today)
        try:
            day = day_of(entry.data.date)
        except ValueError:
            ctx.malformed("bad_history_date", entry.data.date[:40])
            raise HistoryUnavailable("minute query: answer without a valid date") from None
        first, last = trading_day(Market.HK, start), trading_day(Market.HK, end - timedelta(microseconds=1))
        if day > last:
            raise HistoryOutOfReach(f"Tencent serves only the minutes of {day.isoformat()}, not of {last.isoformat()}")
        if day < first:
            return []  # the window's day has not begun in the data: nothing traded yet
        parsed = parse_day(entry.data.data, day)
        for reason, line in parsed.bad:
            ctx.malformed(reason, line)
        return [
            MinuteBar(t, o, h, low, c, v, a)
            for t, (o, h, low, c, v, a) in sorted(parsed.bars.items())
            if start <= t < end
        ]
