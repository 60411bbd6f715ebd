"""The FuShu poller: paced GET /tick for the desired symbols, backoff, change-only ticks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterator
from datetime import datetime
from typing import ClassVar

import aiohttp
import msgspec
from pydantic import Field, SecretStr, field_validator
from yarl import URL

from services.feeder_gateway.feeders.base import (
    Feeder,
    FeederConfigError,
    FeederContext,
    ProviderError,
)
from services.feeder_gateway.feeders.fushu.parse import (
    FushuParseError,
    canonical_symbol,
    decode_response,
    decode_tick,
    to_price_update,
)
from services.feeder_gateway.feeders.fushu.wire import FushuTick
from shared.backoff import Backoff
from shared.config import Strict
from shared.dto import PriceUpdate, utcnow


class FushuSettings(Strict):
    """Settings of a ``type: fushu`` source; ``api_key`` belongs in secure.yml."""

    base_url: str
    """Endpoint root; the feeder polls ``{base_url}/tick?symbols=...``. No default: no
    public service implements the contract."""
    api_key: SecretStr | None = None
    """Bearer token, sent as ``Authorization: Bearer <key>``; set it in secure.yml under
    this source's name."""
    poll_interval_s: float = Field(5.0, gt=0)
    """Time between the starts of two polls of the whole symbol set."""
    poll_jitter_s: float = Field(0.25, ge=0)
    """Up to this much random delay is added to each interval so pollers do not align."""
    min_poll_gap_s: float = Field(0.5, ge=0)
    """A symbol change polls at once, but never sooner than this after the last poll."""
    timeout_s: float = Field(10.0, gt=0)
    """Whole-request timeout (connect, send, wait, read); a hung server counts as a failure."""
    max_symbols_per_request: int = Field(50, ge=1, le=1000)
    """Larger symbol sets are split into several requests per poll (sent one after another)."""
    backoff_base_s: float = Field(1.0, gt=0)
    """First retry delay after a failed poll; doubles per failure (full jitter)."""
    backoff_cap_s: float = Field(60.0, gt=0)
    """Longest retry delay."""
    healthy_after_s: float = Field(30.0, ge=0)
    """Polls succeeding this long reset the backoff to ``backoff_base_s``."""
    rate_limited_pause_s: float = Field(30.0, ge=0)
    """Least wait after HTTP 429 when the server gives no ``Retry-After``."""
    stale_after_s: float | None = Field(None, ge=0)
    """Gateway watchdog: no successful poll this long (in session) → restart the feed.
    Unset: 3 x ``poll_interval_s``, at least ``timeout_s + poll_interval_s``; 0 disables."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class _RateLimited(ProviderError):
    """HTTP 429: wait at least ``retry_after_s`` before the next poll."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing, the default pause applies
        return None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# Failures that mean "try again later"; anything else is a bug and propagates.
_RETRYABLE = (aiohttp.ClientError, TimeoutError, ProviderError)


class FushuFeeder(Feeder[FushuSettings]):
    """Polls every desired symbol each ``poll_interval_s``; yields only what changed.

    A snapshot poller repeats identical quotes between trades, so an item equal to the
    symbol's previous one is not re-emitted. Every successful poll yields a batch, empty
    when nothing changed: the gateway's stale watchdog thus measures poll success, not
    market activity. A symbol added to the desired set is polled at once and its first
    quote always emitted.
    """

    type_name = "fushu"
    settings_model = FushuSettings
    follows_sessions: ClassVar[bool] = True

    def __init__(self, settings: FushuSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._last_tick_time: datetime | None = None  # survives generator restarts

    @property
    def stale_after_s(self) -> float | None:
        s = self.settings
        if s.stale_after_s is None:
            return max(3 * s.poll_interval_s, s.timeout_s + s.poll_interval_s)
        return s.stale_after_s or None

    def _key_hint(self) -> str:
        return f"check 'api_key' in secure.yml under '{self.ctx.name}'"

    def _urls(self, symbols: frozenset[str]) -> list[URL]:
        base = self.settings.base_url
        return [
            URL(f"{base}/tick?symbols={','.join(chunk)}", encoded=True)
            for chunk in _chunks(sorted(symbols), self.settings.max_symbols_per_request)
        ]

    async def _fetch(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        async with session.get(url) as resp:
            body = await resp.read()
            status = resp.status
            if status == 200:
                return body
            name = self.ctx.name
            if status in (401, 403):
                raise FeederConfigError(
                    f"{name}: authentication failed (HTTP {status}): {self._key_hint()}"
                )
            if status == 404:
                raise FeederConfigError(
                    f"{name}: {url.with_query(None)} not found (HTTP 404): "
                    f"check 'base_url' of source '{name}' in data_sources.yml"
                )
            if status == 429:
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                raise _RateLimited("HTTP 429 too many requests", retry_after)
            raise ProviderError(f"HTTP {status}: {body[:120]!r}")

    async def _poll(
        self,
        session: aiohttp.ClientSession,
        polled: frozenset[str],
        last_seen: dict[str, FushuTick],
    ) -> list[PriceUpdate]:
        """One poll of the whole set: every request first, then parse, then commit state.

        A failed request or an unreadable body fails the whole poll before ``last_seen``
        changes, so nothing is lost to a half-done poll.
        """
        bodies = [await self._fetch(session, url) for url in self._urls(polled)]
        ctx = self.ctx
        ctx.metrics.frames.labels(ctx.name).inc(len(bodies))
        items: list[msgspec.Raw] = []
        for body in bodies:
            try:
                items.extend(decode_response(body))
            except FushuParseError as e:
                ctx.malformed(e.reason, body[:160])
                raise ProviderError(f"unreadable response: {e}") from None
        receive = utcnow()
        source = ctx.name
        batch: list[PriceUpdate] = []
        for raw in items:
            try:
                tick = decode_tick(raw)
                symbol = canonical_symbol(tick)
                if symbol not in polled:
                    raise FushuParseError("unrequested_symbol", symbol)
                if last_seen.get(symbol) == tick:
                    continue
                batch.append(to_price_update(tick, symbol, source, receive))
                last_seen[symbol] = tick
            except FushuParseError as e:
                ctx.malformed(e.reason, bytes(raw))
        return batch

    async def ticks(self) -> AsyncGenerator[list[PriceUpdate], None]:
        s = self.settings
        ctx = self.ctx
        if s.api_key is None or not s.api_key.get_secret_value():
            ctx.emit_status("config_error", {"error": "no api_key"})
            raise FeederConfigError(f"{ctx.name}: no API key: {self._key_hint()}")
        backoff = Backoff(s.backoff_base_s, s.backoff_cap_s, s.healthy_after_s)
        rng = random.Random()
        loop = asyncio.get_running_loop()
        polled: frozenset[str] = frozenset()
        last_seen: dict[str, FushuTick] = {}
        up = False
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.timeout_s),
            headers={
                "Authorization": f"Bearer {s.api_key.get_secret_value()}",
                "Accept": "application/json",
            },
        )
        self.symbols_changed.clear()  # a (re)started generator polls the whole desired set
        polled = self._apply_symbols(polled, last_seen, up)
        try:
            while True:
                if self.symbols_changed.is_set():
                    self.symbols_changed.clear()
                    polled = self._apply_symbols(polled, last_seen, up)
                if not polled:
                    await self.symbols_changed.wait()
                    continue
                started = loop.time()
                try:
                    batch = await self._poll(session, polled, last_seen)
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
                    ctx.emit_status("connected", {"symbols": len(polled), "url": s.base_url})
                    if self._last_tick_time is not None:
                        ctx.emit_status("gap", {"last_tick": self._last_tick_time.isoformat()})
                if batch:
                    ctx.metrics.ticks.labels(ctx.name).inc(len(batch))
                    newest = max(t.timestamp for t in batch)
                    if self._last_tick_time is None or newest > self._last_tick_time:
                        self._last_tick_time = newest
                yield batch
                await self._pace(loop, started, s.poll_interval_s + rng.uniform(0, s.poll_jitter_s))
        finally:
            if up:
                self.connected = False
                ctx.emit_status("disconnected", {"error": "feed closed"})
            await session.close()

    def _apply_symbols(
        self, polled: frozenset[str], last_seen: dict[str, FushuTick], up: bool
    ) -> frozenset[str]:
        """The new polled set; a removed symbol forgets its last quote (re-adding re-emits)."""
        wanted = self.symbols
        if wanted == polled:
            return polled
        added, removed = sorted(wanted - polled), sorted(polled - wanted)
        for sym in removed:
            last_seen.pop(sym, None)
        self.ctx.log.info(
            "polling %d symbols (+%d -%d)", len(wanted), len(added), len(removed)
        )
        if up:
            self.ctx.emit_status(
                "resubscribed",
                {"symbols": len(wanted), "added": added[:20], "removed": removed[:20]},
            )
        return wanted

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
