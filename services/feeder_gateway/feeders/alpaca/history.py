"""Alpaca's minute history for gap repair: ``GET /v2/stocks/bars`` paged, paced and classified.

``AlpacaFeeder.history()`` returns one ``AlpacaHistory``. Each ``minute_bars`` call opens
its own HTTP session (closed before it returns), waits at the history host's one pacer as a
background request before every page, and pages until ``next_page_token`` is null. A plan
without real-time SIP is refused SIP minutes of the last 15 minutes (403): the history then
takes those minutes from IEX, remembers the refusal (later calls split the window at once),
logs it once and says so in the answer's ``note``. Wire format and pure parsers:
``history_parse.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.alpaca.history_parse import (
    BARS_PATH,
    RecentSipRefused,
    answer_error,
    bars_query,
    parse_page,
    split_recent_sip,
)
from services.feeder_gateway.feeders.alpaca.parse import WireError
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.alpaca.subscription import to_wire
from services.feeder_gateway.feeders.alpaca.wire import HEADER_KEY, HEADER_SECRET
from services.feeder_gateway.feeders.base import FeederContext
from services.feeder_gateway.feeders.history import (
    ALL_FIELDS,
    HistoryConfigError,
    HistoryUnavailable,
    MinuteBars,
    minute_ceil,
)
from services.feeder_gateway.feeders.http_body import read_capped
from services.feeder_gateway.feeders.lifecycle import describe
from services.feeder_gateway.feeders.pacing import RequestPacer, host_pacer
from shared.dto import utcnow

_MINUTE = timedelta(minutes=1)
_MAX_PAGES = 10_000  # a server that never ends its pages must not hold a repair forever


def history_feed(settings: AlpacaSettings) -> str | None:
    """The feed the history asks for (None: this stream has no history, the test feed)."""
    if settings.history_feed is not None:
        return settings.history_feed
    return {"iex": "iex", "sip": "sip", "delayed_sip": "sip"}.get(settings.feed)


class AlpacaHistory:
    """A MinuteHistory over Alpaca's historical bars API."""

    settle_s = 5.0
    """Alpaca builds a minute's bar from the trades of that minute; late prints (rare,
    sent as ``updatedBars`` live) settle within seconds."""

    def __init__(self, settings: AlpacaSettings, ctx: FeederContext, feed: str) -> None:
        self._s = settings
        self._ctx = ctx
        self.feed = feed
        self._recent_sip_refused = False
        self._url = URL(settings.history_url + BARS_PATH)

    @property
    def source(self) -> str:
        return self._ctx.name

    @property
    def fields(self) -> tuple[str, ...]:
        return ALL_FIELDS

    @property
    def max_symbols_per_request(self) -> int:
        return self._s.history_symbols_per_request

    def reaches(self, start: datetime, now: datetime) -> bool:
        return True  # Alpaca keeps minute bars for years (since 2016)

    async def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> MinuteBars:
        """Every Alpaca minute of ``symbols`` with ``start <= minute start < end``."""
        result = MinuteBars({sym: [] for sym in symbols})
        first, last = minute_ceil(start), minute_ceil(end) - _MINUTE  # the first and last minute start
        if not symbols or first > last:
            return result
        wire = {to_wire(sym): sym for sym in symbols}
        segments = [(self.feed, first, last)]
        if self.feed == "sip" and self._recent_sip_refused:
            segments = split_recent_sip(first, last, utcnow())
        try:
            await self._fetch_segments(segments, wire, result)
        except RecentSipRefused as e:
            if self._recent_sip_refused:  # a split window refused again: the plan is not the issue
                raise HistoryUnavailable(f"{self.source}: history refused recent SIP data again: {e}") from None
            self._recent_sip_refused = True
            self._ctx.log.warning(
                "%s: the plan has no SIP history of the last 15 minutes (%s): those minutes come "
                "from the iex feed from now on",
                self.source,
                e,
            )
            result = MinuteBars({sym: [] for sym in symbols})
            segments = split_recent_sip(first, last, utcnow())
            await self._fetch_segments(segments, wire, result)
        iex = [(a, b) for feed, a, b in segments if feed == "iex" and self.feed != "iex"]
        if iex:
            result.note = (
                f"minutes from {iex[0][0]:%Y-%m-%dT%H:%MZ} on are IEX-only: the plan has no SIP "
                "history of the last 15 minutes"
            )
        return result

    async def _fetch_segments(
        self, segments: list[tuple[str, datetime, datetime]], wire: dict[str, str], into: MinuteBars
    ) -> None:
        s = self._s
        key, secret = self._credentials()
        proxy = self._proxy()
        pacer = host_pacer(s.history_url, 60.0 / s.history_requests_per_min)
        timeout = aiohttp.ClientTimeout(total=s.history_timeout_s)
        headers = {HEADER_KEY: key, HEADER_SECRET: secret}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers, trust_env=False) as session:
            for feed, first, last in segments:
                token: str | None = None
                seen: set[str] = set()
                for _ in range(_MAX_PAGES):
                    await pacer.wait(background=True)
                    query = bars_query(sorted(wire), first, last, feed, s.history_page_limit, token)
                    body = await self._get(session, query, proxy, pacer)
                    try:
                        page = parse_page(body)
                    except WireError as e:
                        self._ctx.malformed("history_page", f"{e}: {body[:120]!r}")
                        raise HistoryUnavailable(f"{self.source}: malformed history page: {e}") from None
                    for sym, bars in page.bars.items():
                        canonical = wire.get(sym)
                        if canonical is None:
                            self._ctx.malformed("history_unasked_symbol", sym)
                            continue
                        into[canonical].extend(b for b in bars if first <= b.start <= last)
                    token = page.next_page_token
                    if token is None:
                        break
                    if token in seen:
                        raise HistoryUnavailable(f"{self.source}: history pages repeat a page token")
                    seen.add(token)
                else:
                    raise HistoryUnavailable(f"{self.source}: history pages did not end after {_MAX_PAGES}")

    async def _get(
        self, session: aiohttp.ClientSession, query: dict[str, str], proxy: str | None, pacer: RequestPacer
    ) -> bytes:
        try:
            async with session.get(self._url.with_query(query), proxy=proxy) as resp:
                body = await self._read_capped(resp)
                status = resp.status
                error = answer_error(self.source, status, resp.headers, body, time.time())
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise HistoryUnavailable(f"{self.source}: history request failed: {describe(e)}") from None
        if error is None:
            return body
        if status == 429 and isinstance(error, HistoryUnavailable) and error.retry_after_s:
            pacer.hold(error.retry_after_s)  # every history request to the host waits out the window
        raise error

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body up to ``history_max_body_bytes``; a larger one fails the request."""
        limit = self._s.history_max_body_bytes
        body = await read_capped(resp, limit)
        if body is not None:
            return body
        self._ctx.malformed("body_too_large", f"history HTTP {resp.status}: more than history_max_body_bytes")
        raise HistoryUnavailable(f"{self.source}: history answer larger than history_max_body_bytes ({limit} bytes)")

    def _credentials(self) -> tuple[str, str]:
        s, name = self._s, self.source
        if s.key is None or s.secret is None or not s.key.get_secret_value():
            raise HistoryConfigError(
                f"{name}: no API key for the history: set key and secret of '{name}' in secure.yml "
                f"(sources.{name}.key)"
            )
        return s.key.get_secret_value(), s.secret.get_secret_value()

    def _proxy(self) -> str | None:
        proxy, name = self._s.proxy, self.source
        if proxy is None or proxy.startswith(("http://", "https://")):
            return proxy
        raise HistoryConfigError(
            f"{name}: the history goes through HTTP proxies only: set an http:// 'proxy' for source "
            f"'{name}' in data_sources.yml (sources.{name}.proxy) or none"
        )
