"""The Tencent poller: batched GET /q=..., GBK lines, change-only delayed ticks, backoff."""

from __future__ import annotations

import asyncio
import codecs
import random
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import ClassVar

import aiohttp
from pydantic import Field, field_validator
from yarl import URL

from services.feeder_gateway.feeders.base import (
    Feeder,
    FeederConfigError,
    FeederContext,
    ProviderError,
)
from services.feeder_gateway.feeders.tencent.parse import (
    TencentParseError,
    UnknownCode,
    decode_body,
    parse_line,
    split_lines,
    to_price_update,
)
from services.feeder_gateway.feeders.tencent.wire import (
    F_LAST,
    F_TIME,
    F_VOLUME,
    NOMINAL_DELAY_S,
    code_of,
)
from shared.backoff import Backoff
from shared.config import Strict
from shared.dto import PriceUpdate, utcnow


class TencentSettings(Strict):
    """Settings of a ``type: tencent`` source (no key needed)."""

    base_url: str = "http://qt.gtimg.cn"
    """Quote host; the feeder polls ``{base_url}/q=r_hk00700,...``. For the UTF-8 variant
    use ``http://sqt.gtimg.cn/utf8`` with ``encoding: utf-8``."""
    encoding: str = "gbk"
    """Text encoding of the answer: ``gbk`` on qt.gtimg.cn, ``utf-8`` on the utf8/ path."""
    poll_interval_s: float = Field(5.0, gt=0)
    """Time between the starts of two polls of the whole code set."""
    poll_jitter_s: float = Field(0.25, ge=0)
    """Up to this much random delay is added to each interval so pollers do not align."""
    min_poll_gap_s: float = Field(0.5, ge=0)
    """A symbol change polls at once, but never sooner than this after the last poll."""
    timeout_s: float = Field(10.0, gt=0)
    """Whole-request timeout (connect, send, wait, read); a hung server counts as a failure."""
    max_codes_per_request: int = Field(60, ge=1, le=200)
    """Codes per request; larger sets are split into requests sent one after another."""
    backoff_base_s: float = Field(1.0, gt=0)
    """First retry delay after a failed poll; doubles per failure (full jitter)."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Longest retry delay."""
    healthy_after_s: float = Field(30.0, ge=0)
    """Polls succeeding this long reset the backoff to ``backoff_base_s``."""
    rate_limited_pause_s: float = Field(30.0, ge=0)
    """Least wait after HTTP 403/429 (Tencent's throttle) unless ``Retry-After`` says."""
    stale_after_s: float | None = Field(None, ge=0)
    """Gateway watchdog: no successful poll this long (in session) → restart the feed.
    Judged by poll success, not quote time: the quotes are ~15 min old by design and a
    quiet stock repeats the same one. Unset: 3 x ``poll_interval_s``, at least
    ``timeout_s + poll_interval_s``; 0 disables."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None


class _RateLimited(ProviderError):
    """HTTP 403/429: Tencent is throttling us; wait at least ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing, the default pause applies
        return None


# Failures that mean "try again later"; anything else is a bug and propagates.
_RETRYABLE = (aiohttp.ClientError, TimeoutError, ProviderError)

_QuoteKey = tuple[str, str, str]  # (time, last, volume) as sent: unchanged key → no tick


class TencentFeeder(Feeder[TencentSettings]):
    """Polls every desired code each ``poll_interval_s``; yields only quotes that changed.

    Tencent repeats the same snapshot until the stock trades again, so a line whose time,
    last price and volume equal the code's previous ones is not re-emitted. Every
    successful poll yields a batch, empty when nothing changed: the gateway's stale
    watchdog thus measures poll success, not quote age (which is ~15 min by design).
    """

    type_name = "tencent"
    settings_model = TencentSettings
    follows_sessions: ClassVar[bool] = True

    def __init__(self, settings: TencentSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._last_tick_time: datetime | None = None  # survives generator restarts
        self._missing: frozenset[str] = frozenset()  # codes Tencent did not answer last poll

    @property
    def stale_after_s(self) -> float | None:
        s = self.settings
        if s.stale_after_s is None:
            return max(3 * s.poll_interval_s, s.timeout_s + s.poll_interval_s)
        return s.stale_after_s or None

    def _codes(self, symbols: frozenset[str]) -> dict[str, str]:
        """Tencent code → canonical symbol for the desired set (non-HK symbols left out)."""
        codes: dict[str, str] = {}
        for sym in sorted(symbols):
            code = code_of(sym)
            if code is None:
                self.ctx.malformed("unmappable_symbol", sym)
            else:
                codes[code] = sym
        return codes

    def _urls(self, codes: list[str]) -> list[URL]:
        base, size = self.settings.base_url, self.settings.max_codes_per_request
        return [
            URL(f"{base}/q={','.join(codes[i : i + size])}", encoded=True)
            for i in range(0, len(codes), size)
        ]

    async def _fetch(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        async with session.get(url) as resp:
            body = await resp.read()
            status = resp.status
            if status == 200:
                return body
            if status in (403, 429):
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                raise _RateLimited(f"HTTP {status}: throttled by the provider", retry_after)
            if status == 404:
                name = self.ctx.name
                raise FeederConfigError(
                    f"{name}: {self.settings.base_url}/q=... not found (HTTP 404): "
                    f"check 'base_url' of source '{name}' in data_sources.yml"
                )
            raise ProviderError(f"HTTP {status}: {body[:120]!r}")

    async def _poll(
        self,
        session: aiohttp.ClientSession,
        codes: dict[str, str],
        last_seen: dict[str, _QuoteKey],
    ) -> list[PriceUpdate]:
        """One poll of every code: all requests first, then parse, then commit state.

        A failed request or a body without a single quote line fails the whole poll
        before ``last_seen`` changes, so nothing is lost to a half-done poll.
        """
        bodies = [await self._fetch(session, url) for url in self._urls(list(codes))]
        ctx = self.ctx
        name = ctx.name
        ctx.metrics.frames.labels(name).inc(len(bodies))
        encoding = self.settings.encoding
        parsed: list[tuple[str, list[str]]] = []
        unknown = 0
        for body in bodies:
            text, clean = decode_body(body, encoding)
            if not clean:
                ctx.malformed("bad_encoding", body[:160])
            answered = 0
            for line in split_lines(text):
                try:
                    parsed.append(parse_line(line))
                    answered += 1
                except UnknownCode:
                    unknown += 1
                    answered += 1
                except TencentParseError as e:
                    ctx.malformed(e.reason, line)
            if not answered:
                ctx.malformed("bad_response", body[:160])
                raise ProviderError("response without a single quote line")
        if unknown:  # counted every poll, logged only when the set of unanswered codes changes
            ctx.metrics.malformed.labels(name, "unknown_code").inc(unknown)
        missing = frozenset(codes).difference(code for code, _ in parsed)
        if missing != self._missing:
            self._missing = missing
            if missing:
                ctx.log.warning(
                    "no quote for %d symbols (unknown to Tencent?): %s",
                    len(missing),
                    ", ".join(sorted(codes[c] for c in missing)[:20]),
                )
        receive = utcnow()
        batch: list[PriceUpdate] = []
        for code, fields in parsed:
            try:
                if code not in codes:
                    raise TencentParseError("unrequested_code", code)
                key = (fields[F_TIME], fields[F_LAST], fields[F_VOLUME])
                if last_seen.get(code) == key:
                    continue
                batch.append(to_price_update(code, fields, name, receive))
                last_seen[code] = key
            except TencentParseError as e:
                ctx.malformed(e.reason, "~".join(fields[:40]))
        return batch

    async def ticks(self) -> AsyncGenerator[list[PriceUpdate], None]:
        s = self.settings
        ctx = self.ctx
        backoff = Backoff(s.backoff_base_s, s.backoff_cap_s, s.healthy_after_s)
        rng = random.Random()
        loop = asyncio.get_running_loop()
        polled: frozenset[str] = frozenset()
        codes: dict[str, str] = {}
        last_seen: dict[str, _QuoteKey] = {}
        up = False
        delayed_reported = False
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=s.timeout_s))
        self.symbols_changed.clear()  # a (re)started generator polls the whole desired set
        polled, codes = self._apply_symbols(polled, last_seen, up)
        try:
            while True:
                if self.symbols_changed.is_set():
                    self.symbols_changed.clear()
                    if self.symbols != polled:
                        polled, codes = self._apply_symbols(polled, last_seen, up)
                if not codes:
                    await self.symbols_changed.wait()
                    continue
                started = loop.time()
                try:
                    batch = await self._poll(session, codes, last_seen)
                except FeederConfigError as e:
                    ctx.emit_status("config_error", {"error": str(e)})
                    raise
                except _RETRYABLE as e:
                    up = self.connected = False
                    await asyncio.sleep(self._failed(e, backoff))
                    continue
                if not up:
                    up = self.connected = True
                    backoff.connected()
                    ctx.emit_status("connected", {"symbols": len(codes), "url": s.base_url})
                    if self._last_tick_time is not None:
                        ctx.emit_status("gap", {"last_tick": self._last_tick_time.isoformat()})
                if batch:
                    ctx.metrics.ticks.labels(ctx.name).inc(len(batch))
                    newest = max(t.timestamp for t in batch)
                    if self._last_tick_time is None or newest > self._last_tick_time:
                        self._last_tick_time = newest
                    if not delayed_reported:
                        delayed_reported = True
                        lag_s = (batch[0].receive_time or newest) - newest
                        ctx.emit_status(
                            "delayed",
                            {
                                "nominal_delay_s": NOMINAL_DELAY_S,
                                "observed_lag_s": round(lag_s.total_seconds(), 1),
                            },
                        )
                yield batch
                await self._pace(loop, started, s.poll_interval_s + rng.uniform(0, s.poll_jitter_s))
        finally:
            if up:
                self.connected = False
                ctx.emit_status("disconnected", {"error": "feed closed"})
            await session.close()

    def _apply_symbols(
        self, polled: frozenset[str], last_seen: dict[str, _QuoteKey], up: bool
    ) -> tuple[frozenset[str], dict[str, str]]:
        """The new polled set and its codes; a removed code forgets its last quote."""
        wanted = self.symbols
        codes = self._codes(wanted)
        for code in [c for c in last_seen if c not in codes]:
            del last_seen[code]
        added, removed = sorted(wanted - polled), sorted(polled - wanted)
        self.ctx.log.info("polling %d codes (+%d -%d)", len(codes), len(added), len(removed))
        if up:
            self.ctx.emit_status(
                "resubscribed",
                {"symbols": len(codes), "added": added[:20], "removed": removed[:20]},
            )
        return wanted, codes

    def _failed(self, e: BaseException, backoff: Backoff) -> float:
        """Count, log and report a failed poll; the delay before the next attempt."""
        ctx = self.ctx
        ctx.metrics.reconnects.labels(ctx.name).inc()
        delay = backoff.next_delay()
        if isinstance(e, _RateLimited):
            pause = e.retry_after_s
            delay = max(delay, self.settings.rate_limited_pause_s if pause is None else pause)
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        ctx.log.warning("poll failed (%s); retry in %.2fs", error, delay)
        ctx.emit_status(
            "disconnected",
            {"error": error, "retry_in_s": round(delay, 3), "attempt": backoff.attempt},
        )
        return delay

    async def _pace(self, loop: asyncio.AbstractEventLoop, started: float, interval: float) -> None:
        """Wait out the poll interval, or less if the desired symbols change."""
        delay = interval - (loop.time() - started)
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await self.symbols_changed.wait()
        except TimeoutError:
            return
        gap = self.settings.min_poll_gap_s - (loop.time() - started)
        if gap > 0:
            await asyncio.sleep(gap)
