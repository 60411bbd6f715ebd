"""EastMoney minute history for gap repair: kline (klt=1) first, trends2 when kline fails or does not reach.

Per symbol (one secid per request, so ``max_symbols_per_request`` is 1 and a failure
concerns one symbol): ``kline/get`` for the window's local days. When kline is down
(server error, rc != 0, timeout, reset) or answers no line at all for those days, and the
window lies within trends2's last 5 trading days, ``trends2/get`` answers instead; which
endpoint answered each symbol is kept in ``last_endpoints`` (and trends2 logged). trends2 has no
open on its days before the latest: if the window needs such minutes, the answer is
HistoryUnavailable (kline was down: retry) or HistoryOutOfReach (kline has none).

Every request waits for a background slot at the pacer of ``base_url``'s host (the live
connection's: EastMoney bans by IP, so the history host shares its budget). A ban (HTTP
403/429, a captcha page, resets in a row) holds that pacer ``ban_hold_s`` (live requests
too) and is HistoryUnavailable; HTTP 400/404/405 is HistoryConfigError naming
``history_base_url``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.eastmoney.minutes import (
    KLINE_FIELDS1,
    KLINE_FIELDS2,
    KLINE_PATH,
    TRENDS_FIELDS1,
    TRENDS_FIELDS2,
    TRENDS_MAX_DAYS,
    TRENDS_PATH,
    MinuteAnswerError,
    ParsedMinutes,
    decode_answer,
    parse_lines,
)
from services.feeder_gateway.feeders.eastmoney.request import Route, Routes, answer_failure, headers, pacer_for
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyRequestSettings
from services.feeder_gateway.feeders.history import (
    ALL_FIELDS,
    HistoryConfigError,
    HistoryOutOfReach,
    HistoryUnavailable,
    MinuteBar,
)
from services.feeder_gateway.feeders.history_http import EndpointDown, PacedHistoryGet
from services.feeder_gateway.feeders.lifecycle import FailureKind, SourceFailure
from shared.sessions import is_trading_weekday, trading_day

KLINE = "kline"
TRENDS = "trends2"
_KLINE_LINES_PER_DAY = 1500  # lmt per day asked: a day has 241 (CN), 331 (HK), 391 (US) lines; 24 h 1440


class EastMoneyHistory:
    """The MinuteHistory of an ``eastmoney`` / ``eastmoney_poll`` source."""

    def __init__(
        self,
        settings: EastMoneyRequestSettings,
        ctx: FeederContext,
        routes: Routes,
        *,
        ban_hold_s: float,
        ban_after_resets: int,
    ) -> None:
        self._s = settings
        self._ctx = ctx
        self._routes = routes
        self._get = PacedHistoryGet(
            ctx,
            lambda: pacer_for(settings),
            max_body_bytes=settings.history_max_body_bytes,
            ban_hold_s=ban_hold_s,
            ban_after_resets=ban_after_resets,
        )
        self.last_endpoints: dict[str, str] = {}
        """Symbol → the endpoint that answered it last (``kline`` / ``trends2``)."""

    @property
    def source(self) -> str:
        return self._ctx.name

    @property
    def fields(self) -> tuple[str, ...]:
        return ALL_FIELDS

    @property
    def max_symbols_per_request(self) -> int:
        return 1

    @property
    def settle_s(self) -> float:
        return self._s.history_settle_s

    def reaches(self, start: datetime, now: datetime) -> bool:
        return now - start <= timedelta(days=self._s.history_reach_days)

    async def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, list[MinuteBar]]:
        out: dict[str, list[MinuteBar]] = {}
        if start >= end:
            return out
        s = self._s
        timeout = aiohttp.ClientTimeout(total=s.history_timeout_s)
        async with aiohttp.ClientSession(headers=headers(s), timeout=timeout) as session:
            for symbol in symbols:
                route = self._routes.get(symbol)
                if route is None:
                    continue  # counted once as unmappable by Routes
                bars, endpoint = await self._symbol(session, route, start, end)
                self.last_endpoints[symbol] = endpoint
                # trends2 standing in for kline is worth a line; kline answering is the rule
                self._ctx.log.log(
                    logging.INFO if endpoint == TRENDS else logging.DEBUG,
                    "history %s %s..%s: %d minutes from %s",
                    symbol,
                    start.isoformat(),
                    end.isoformat(),
                    len(bars),
                    endpoint,
                )
                out[symbol] = bars
        return out

    # ---- one symbol ---------------------------------------------------------------------

    def _days(self, start: datetime, end: datetime) -> list[date]:
        market = self._ctx.market
        first, last = trading_day(market, start), trading_day(market, end - timedelta(microseconds=1))
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    async def _symbol(
        self, session: aiohttp.ClientSession, route: Route, start: datetime, end: datetime
    ) -> tuple[list[MinuteBar], str]:
        days = self._days(start, end)
        kline_error: str | None = None
        try:
            kline = await self._fetch(session, KLINE_PATH, self._kline_query(route, days), route, trends=False)
        except EndpointDown as e:
            kline_error = str(e)
        else:
            if kline.days & set(days):
                return _window(kline, start, end), KLINE
        ndays = self._trading_days_back(days[0])
        if ndays > TRENDS_MAX_DAYS:
            if kline_error is not None:
                raise HistoryUnavailable(
                    f"kline: {kline_error}; trends2 holds only the last {TRENDS_MAX_DAYS} trading days"
                )
            return [], KLINE  # kline answered and has no line of those days: nothing traded
        try:
            trends = await self._fetch(session, TRENDS_PATH, self._trends_query(route, ndays), route, trends=True)
        except EndpointDown as e:
            if kline_error is not None:
                raise HistoryUnavailable(f"kline: {kline_error}; trends2: {e}") from None
            return [], KLINE  # kline answered: no line of those days, and trends2 is down
        missing = [t for t in trends.no_open if start <= t < end]
        if missing:
            what = f"trends2 has no open for {len(missing)} minutes before its latest day"
            if kline_error is not None:
                raise HistoryUnavailable(f"kline: {kline_error}; {what}")
            raise HistoryOutOfReach(f"kline has no minute of {days[0]}..{days[-1]}; {what}")
        return _window(trends, start, end), TRENDS

    def _trading_days_back(self, first: date) -> int:
        """How many trading days trends2 must go back to reach ``first`` (today counts)."""
        market = self._ctx.market
        today = trading_day(market, datetime.now(UTC))
        n, day = 0, today
        while day >= first and n <= TRENDS_MAX_DAYS:
            if is_trading_weekday(market, day):
                n += 1
            day -= timedelta(days=1)
        return max(n, 1)

    def _kline_query(self, route: Route, days: list[date]) -> dict[str, str]:
        return {
            "secid": route.secid,
            "klt": "1",
            "fqt": "0",
            "beg": days[0].strftime("%Y%m%d"),
            "end": days[-1].strftime("%Y%m%d"),
            "lmt": str(_KLINE_LINES_PER_DAY * len(days)),
            "fields1": KLINE_FIELDS1,
            "fields2": KLINE_FIELDS2,
            **self._s.extra_params,
        }

    def _trends_query(self, route: Route, ndays: int) -> dict[str, str]:
        return {
            "secid": route.secid,
            "ndays": str(ndays),
            "iscr": "0",
            "fields1": TRENDS_FIELDS1,
            "fields2": TRENDS_FIELDS2,
            **self._s.extra_params,
        }

    async def _fetch(
        self, session: aiohttp.ClientSession, path: str, query: dict[str, str], route: Route, *, trends: bool
    ) -> ParsedMinutes:
        """One answer parsed; raises EndpointDown, HistoryUnavailable (ban), HistoryConfigError."""
        ctx = self._ctx
        url = URL(self._s.history_base_url + path).with_query(query)
        answer = await self._get.get(session, url)
        failure = answer_failure(answer.status, answer.content_type, answer.body[:200], url, ctx.name)
        if isinstance(failure, SourceFailure):
            if failure.failure.kind is FailureKind.BANNED:
                raise self._get.ban(str(failure), answer.retry_after_s)
            raise HistoryConfigError(
                f"{ctx.name}: {url.with_query(None)} answered HTTP {answer.status}: check 'history_base_url' "
                f"under '{ctx.name}' in data_sources.yml"
            )
        if isinstance(failure, ProviderError):
            raise EndpointDown(str(failure))
        try:
            env = decode_answer(answer.body)
        except MinuteAnswerError:
            ctx.malformed("bad_history_answer", answer.body[:200])
            raise EndpointDown(f"{path}: unreadable answer") from None
        if env.rc != 0:
            raise EndpointDown(f"{path} answered rc={env.rc}")
        if env.data is None:
            return ParsedMinutes()  # an unknown secid: no minutes
        lines = (env.data.trends if trends else env.data.klines) or []
        parsed = parse_lines(lines, ctx.market, route.volume_unit, trends=trends)
        for reason, line in parsed.bad:
            ctx.malformed(reason, line)
        return parsed


def _window(parsed: ParsedMinutes, start: datetime, end: datetime) -> list[MinuteBar]:
    return [
        MinuteBar(t, o, h, low, c, v, a) for t, (o, h, low, c, v, a) in sorted(parsed.bars.items()) if start <= t < end
    ]
