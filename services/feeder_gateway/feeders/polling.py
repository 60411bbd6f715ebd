"""What every HTTP snapshot poller shares: settings, the paced poll loop, backoff, status events.

A provider subclasses ``HttpPollingFeeder`` and keeps only its protocol: the request path
(``path``), which wire key a symbol is requested under (``_wire_key``), how many keys one
request takes (``_keys_per_request``), how the answers become ticks (``_parse``) and what
an HTTP error status means (``_http_error``).
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Generic, TypeVar

import aiohttp
from pydantic import Field, field_validator
from yarl import URL

from services.feeder_gateway.feeders.base import (
    Feeder,
    FeederConfigError,
    FeederContext,
    ProviderError,
)
from shared.backoff import Backoff
from shared.config import Strict
from shared.dto import PriceUpdate, utcnow


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
    """Least wait after the provider throttles us (HTTP 429, and whatever else the
    provider throttles with) when it gives no ``Retry-After``."""
    stale_after_s: float | None = Field(None, ge=0)
    """Gateway watchdog: no successful poll this long (in session) → restart the feed.
    Judged by poll success, not quote time: a quiet stock repeats the same quote. Unset:
    3 x ``poll_interval_s``, at least ``timeout_s + poll_interval_s``; 0 disables."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class RateLimited(ProviderError):
    """The provider throttles us: wait at least ``retry_after_s`` before the next poll."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None when absent or an HTTP date."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing, the default pause applies
        return None


# Failures that mean "try again later"; anything else is a bug and propagates.
_RETRYABLE = (aiohttp.ClientError, TimeoutError, ProviderError)

SettingsT = TypeVar("SettingsT", bound=HttpPollingSettings)
QuoteT = TypeVar("QuoteT")  # what a provider remembers of a key's last quote, to compare


@dataclass
class PollSet(Generic[QuoteT]):
    """The symbols one generator run polls, and what it remembers of their quotes."""

    symbols: frozenset[str] = frozenset()
    keys: dict[str, str] = field(default_factory=dict)  # wire key → canonical symbol, sorted
    last: dict[str, QuoteT] = field(default_factory=dict)  # wire key → last emitted quote


class HttpPollingFeeder(Feeder[SettingsT], Generic[SettingsT, QuoteT]):
    """Polls every desired symbol each ``poll_interval_s``; yields only what changed.

    A poll sends its requests one after another (``_keys_per_request`` keys each), then
    parses every answer, so a failed request or an unreadable body fails the whole poll
    before any state changes. Every successful poll yields a batch, empty when nothing
    changed: the gateway's stale watchdog thus measures poll success, not market
    activity. A symbol added to the desired set is polled at once (but not sooner than
    ``min_poll_gap_s`` after the last poll) and its first quote always emitted; a
    (re)started generator emits the whole current snapshot and reports the ``gap``.
    """

    def __init__(self, settings: SettingsT, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._last_tick_time: datetime | None = None  # survives generator restarts

    @property
    def stale_after_s(self) -> float | None:
        s = self.settings
        if s.stale_after_s is None:
            return max(3 * s.poll_interval_s, s.timeout_s + s.poll_interval_s)
        return s.stale_after_s or None

    # ---- the provider's protocol ------------------------------------------------------

    path: ClassVar[str]
    """Request path after ``base_url``; ``{keys}`` stands for the comma-separated wire keys."""

    @property
    @abc.abstractmethod
    def _keys_per_request(self) -> int:
        """Wire keys one request asks for at most; larger sets take several requests."""

    @abc.abstractmethod
    def _parse(self, bodies: list[bytes], polled: PollSet[QuoteT], receive_time: datetime) -> list[PriceUpdate]:
        """One poll's answers → ticks of the quotes that differ from ``polled.last[key]``.

        ``polled.keys`` maps each requested wire key to its symbol; record each emitted
        quote in ``polled.last``. Count and skip a bad item; raise ProviderError (before
        touching ``polled.last``) for an answer that fails the whole poll.
        """

    def _wire_key(self, symbol: str) -> str | None:
        """The key a symbol is requested and answered under; None: the provider has none."""
        return symbol

    def _session_headers(self) -> dict[str, str] | None:
        """Headers of every request; raise FeederConfigError if the settings cannot work."""
        return None

    def _http_error(self, resp: aiohttp.ClientResponse, body: bytes) -> Exception:
        """What a non-200 answer means: a configuration error, a throttle, or a failure."""
        status = resp.status
        if status == 404:
            name = self.ctx.name
            endpoint = self.settings.base_url + self.path.partition("?")[0].format(keys="...")
            return FeederConfigError(
                f"{name}: {endpoint} not found (HTTP 404): "
                f"check 'base_url' of source '{name}' in data_sources.yml"
            )
        if status == 429:
            return RateLimited(
                "HTTP 429 too many requests", retry_after_s(resp.headers.get("Retry-After"))
            )
        return ProviderError(f"HTTP {status}: {body[:120]!r}")

    def _on_first_ticks(self, batch: list[PriceUpdate]) -> None:
        """Called with the first non-empty batch of each generator run."""

    # ---- the loop -------------------------------------------------------------------------

    async def ticks(self) -> AsyncGenerator[list[PriceUpdate], None]:
        s = self.settings
        ctx = self.ctx
        headers = self._session_headers()
        backoff = Backoff(s.backoff_base_s, s.backoff_cap_s, s.healthy_after_s)
        rng = random.Random()
        loop = asyncio.get_running_loop()
        polled: PollSet[QuoteT] = PollSet()
        up = False
        ticked = False
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.timeout_s), headers=headers
        )
        self.symbols_changed.clear()  # a (re)started generator polls the whole desired set
        self._apply_symbols(polled, up)
        try:
            while True:
                if self.symbols_changed.is_set():
                    self.symbols_changed.clear()
                    self._apply_symbols(polled, up)
                if not polled.keys:
                    await self.symbols_changed.wait()
                    continue
                started = loop.time()
                try:
                    batch = await self._poll(session, polled)
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
                    ctx.emit_status("connected", {"symbols": len(polled.keys), "url": s.base_url})
                    if self._last_tick_time is not None:
                        ctx.emit_status("gap", {"last_tick": self._last_tick_time.isoformat()})
                if batch:
                    ctx.metrics.ticks.labels(ctx.name).inc(len(batch))
                    newest = max(t.timestamp for t in batch)
                    if self._last_tick_time is None or newest > self._last_tick_time:
                        self._last_tick_time = newest
                    if not ticked:
                        ticked = True
                        self._on_first_ticks(batch)
                yield batch
                await self._pace(loop, started, s.poll_interval_s + rng.uniform(0, s.poll_jitter_s))
        finally:
            if up:
                self.connected = False
                ctx.emit_status("disconnected", {"error": "feed closed"})
            await session.close()

    async def _poll(self, session: aiohttp.ClientSession, polled: PollSet[QuoteT]) -> list[PriceUpdate]:
        """One poll of the whole set: every request first, then parse (which commits state)."""
        keys = list(polled.keys)
        size = self._keys_per_request
        bodies = [await self._fetch(session, self._url(keys[i : i + size])) for i in range(0, len(keys), size)]
        ctx = self.ctx
        ctx.metrics.frames.labels(ctx.name).inc(len(bodies))
        return self._parse(bodies, polled, utcnow())

    def _url(self, keys: list[str]) -> URL:
        path = self.path.format(keys=",".join(keys))
        return URL(self.settings.base_url + path, encoded=True)

    async def _fetch(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        async with session.get(url) as resp:
            body = await resp.read()
            if resp.status == 200:
                return body
            raise self._http_error(resp, body)

    def _apply_symbols(self, polled: PollSet[QuoteT], up: bool) -> None:
        """Poll the desired set from now on; a removed key forgets its last quote."""
        wanted = self.symbols
        if wanted == polled.symbols:
            return
        keys: dict[str, str] = {}
        for sym in sorted(wanted):
            key = self._wire_key(sym)
            if key is None:
                self.ctx.malformed("unmappable_symbol", sym)
            else:
                keys[key] = sym
        for key in [k for k in polled.last if k not in keys]:
            del polled.last[key]
        added, removed = sorted(wanted - polled.symbols), sorted(polled.symbols - wanted)
        polled.symbols, polled.keys = wanted, keys
        self.ctx.log.info("polling %d symbols (+%d -%d)", len(keys), len(added), len(removed))
        if up:
            self.ctx.emit_status(
                "resubscribed",
                {"symbols": len(keys), "added": added[:20], "removed": removed[:20]},
            )

    def _failed(self, e: BaseException, backoff: Backoff) -> float:
        """Count, log and report a failed poll; the delay before the next attempt."""
        ctx = self.ctx
        ctx.metrics.reconnects.labels(ctx.name).inc()
        delay = backoff.next_delay()
        if isinstance(e, RateLimited):
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
