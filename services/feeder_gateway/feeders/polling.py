"""What every HTTP snapshot poller shares: settings, the paced poll connection, failure classes.

A provider subclasses ``HttpPollingFeeder`` and keeps only its protocol: the request path
(``path``), which wire key a symbol is requested under (``_wire_key``), how many keys one
request takes (``_keys_per_request``), how the answers become ticks (``_parse``) and what
an HTTP error status means (``_http_error``). Connecting, backoff, holds, resubscribe and
gap reports are the reconnect driver's (``lifecycle.py``).
"""

from __future__ import annotations

import abc
import asyncio
import errno
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
from yarl import URL

from services.feeder_gateway.feeders.base import FeederContext, ProviderError
from services.feeder_gateway.feeders.http_body import read_capped
from services.feeder_gateway.feeders.lifecycle import (
    Failure,
    FailureKind,
    ReconnectingFeeder,
    RetryPolicy,
    SourceFailure,
    describe,
)
from services.feeder_gateway.feeders.polling_settings import HttpPollingSettings
from shared.dto import PriceUpdate, utcnow


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None when absent or an HTTP date."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing, the default pause applies
        return None


def is_reset(exc: BaseException) -> bool:
    """A connection reset or a close before any answer (how throttling providers look too)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False  # refused/unreachable: not an answer from a live server
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


def rate_limited(message: str, resp: aiohttp.ClientResponse) -> SourceFailure:
    return SourceFailure(
        FailureKind.RATE_LIMITED, message, retry_after_s=retry_after_s(resp.headers.get("Retry-After"))
    )


SettingsT = TypeVar("SettingsT", bound=HttpPollingSettings)
QuoteT = TypeVar("QuoteT")  # what a provider remembers of a key's last quote, to compare


@dataclass
class PollSet(Generic[QuoteT]):
    """The symbols one generator run polls, and what it remembers of their quotes."""

    symbols: frozenset[str] = frozenset()
    keys: dict[str, str] = field(default_factory=dict)  # wire key → canonical symbol, sorted
    last: dict[str, QuoteT] = field(default_factory=dict)  # wire key → last emitted quote


class HttpPollingFeeder(ReconnectingFeeder[SettingsT], Generic[SettingsT, QuoteT]):
    """Polls every wanted symbol each ``poll_interval_s``; yields only what changed.

    A poll sends its requests one after another (``_keys_per_request`` keys each), then
    parses every answer, so a failed request or an unreadable body fails the whole poll
    before any state changes. Every successful poll yields a batch, empty when nothing
    changed: the market watchdog thus measures poll success, not market activity, and
    judges frozen quotes apart (``news_at``). A symbol added to the wanted set is polled
    at once (but not sooner than ``min_poll_gap_s`` after the last poll) and its first
    quote always emitted; a new connection emits the whole current snapshot.
    """

    def __init__(self, settings: SettingsT, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._resets = 0  # consecutive resets before an answer
        self._news_at: float | None = None
        self._moves: dict[str, tuple[float, float | None]] = {}  # symbol → (price, volume)

    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            s.backoff_base_s,
            s.backoff_cap_s,
            s.healthy_after_s,
            s.rate_limited_pause_s,
            s.ban_hold_s,
            s.ban_jitter_cap_s,
        )

    @property
    def stale_after_s(self) -> float | None:
        s = self.settings
        if s.stale_after_s is None:
            return max(3 * s.poll_interval_s, s.timeout_s + s.poll_interval_s)
        return s.stale_after_s or None

    @property
    def frozen_after_s(self) -> float | None:
        return self.settings.frozen_after_s or None

    def news_at(self) -> float | None:
        return self._news_at

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
            return SourceFailure(
                FailureKind.CONFIGURATION,
                f"{name}: {endpoint} not found (HTTP 404): check 'base_url' of source '{name}' in data_sources.yml",
                setting="base_url",
            )
        if status == 429:
            return rate_limited("HTTP 429 too many requests", resp)
        return ProviderError(f"HTTP {status}: {body[:120]!r}")

    def _on_first_ticks(self, batch: list[PriceUpdate]) -> None:
        """Called with the first non-empty batch of each connection."""

    def classify(self, exc: Exception) -> Failure | None:
        if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError) and is_reset(exc):
            self._resets += 1
            if self._resets >= self.settings.ban_after_resets:
                return Failure(FailureKind.BANNED, f"{describe(exc)} ({self._resets} resets in a row)")
        if isinstance(exc, aiohttp.ClientError):
            return Failure(FailureKind.TRANSIENT, describe(exc))
        return super().classify(exc)

    async def open_connection(self) -> _PollConnection[QuoteT]:
        s = self.settings
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.timeout_s), headers=self._session_headers()
        )
        return _PollConnection(self, session)

    # ---- one poll -----------------------------------------------------------------------

    async def _poll(self, session: aiohttp.ClientSession, polled: PollSet[QuoteT]) -> list[PriceUpdate]:
        """One poll of the whole set: every request first, then parse (which commits state)."""
        keys = list(polled.keys)
        size = self._keys_per_request
        bodies = [await self._fetch(session, self._url(keys[i : i + size])) for i in range(0, len(keys), size)]
        ctx = self.ctx
        ctx.metrics.frames.labels(ctx.name).inc(len(bodies))
        batch = self._parse(bodies, polled, utcnow())
        self._note_news(batch)
        return batch

    def _note_news(self, batch: list[PriceUpdate]) -> None:
        """Remember when a quote last moved (price or volume), for the frozen check."""
        moves = self._moves
        moved = False
        for t in batch:
            move = (t.price, t.volume)
            if moves.get(t.symbol) != move:
                moves[t.symbol] = move
                moved = True
        if moved or self._news_at is None:
            self._news_at = time.monotonic()

    def _url(self, keys: list[str]) -> URL:
        path = self.path.format(keys=",".join(keys))
        return URL(self.settings.base_url + path, encoded=True)

    async def _before_request(self) -> None:
        """Called before every request (a provider's request pacer waits here)."""

    def _answer_error(self, resp: aiohttp.ClientResponse, body: bytes) -> Exception | None:
        """None when an answer carries data; else what it means (``_http_error``)."""
        return None if resp.status == 200 else self._http_error(resp, body)

    async def _fetch(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        await self._before_request()
        async with session.get(url) as resp:
            self._resets = 0  # an answer, whatever it says
            body = await self._read_capped(resp)
            error = self._answer_error(resp, body)
            if error is None:
                return body
            raise error

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body up to ``max_body_bytes``; a larger one is counted as malformed
        (``body_too_large``) and fails the poll."""
        limit = self.settings.max_body_bytes
        body = await read_capped(resp, limit)
        if body is not None:
            return body
        self.ctx.malformed("body_too_large", f"HTTP {resp.status}: more than max_body_bytes ({limit})")
        raise ProviderError(f"answer body larger than max_body_bytes ({limit} bytes)")

    def _poll_set(self, wanted: frozenset[str], polled: PollSet[QuoteT]) -> None:
        """Poll ``wanted`` from now on; a removed key forgets its last quote."""
        keys: dict[str, str] = {}
        for sym in sorted(wanted):
            key = self._wire_key(sym)
            if key is None:
                self.ctx.malformed("unmappable_symbol", sym)
            else:
                keys[key] = sym
        for key in [k for k in polled.last if k not in keys]:
            del polled.last[key]
        for sym in [k for k in self._moves if k not in wanted]:
            del self._moves[sym]
        polled.symbols, polled.keys = wanted, keys


class _PollConnection(Generic[QuoteT]):
    """A session polling the wanted set; a failed poll ends it (the driver reconnects)."""

    up_on_first_batch: ClassVar[bool] = True

    def __init__(self, feeder: HttpPollingFeeder[Any, QuoteT], session: aiohttp.ClientSession) -> None:
        self._feeder = feeder
        self._session = session
        self._polled: PollSet[QuoteT] = PollSet()
        self._poll_now = asyncio.Event()
        self._aborted = False
        self.detail: dict[str, Any] = {"url": feeder.settings.base_url}

    async def sync(self, wanted: frozenset[str]) -> None:
        self._feeder._poll_set(wanted, self._polled)
        self.detail["symbols"] = len(self._polled.keys)
        self._poll_now.set()

    def abort(self) -> None:
        self._aborted = True
        self._poll_now.set()

    async def batches(self) -> AsyncGenerator[list[PriceUpdate], None]:
        feeder, s = self._feeder, self._feeder.settings
        loop = asyncio.get_running_loop()
        rng = random.Random()
        ticked = False
        while not self._aborted:
            self._poll_now.clear()
            if not self._polled.keys:
                await self._poll_now.wait()
                continue
            started = loop.time()
            batch = await feeder._poll(self._session, self._polled)
            yield batch
            if batch and not ticked:
                ticked = True
                feeder._on_first_ticks(batch)
            await self._pace(loop, started, s.poll_interval_s + rng.uniform(0, s.poll_jitter_s))

    async def _pace(self, loop: asyncio.AbstractEventLoop, started: float, interval: float) -> None:
        """Wait out the poll interval, or less if the wanted symbols change."""
        delay = interval - (loop.time() - started)
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await self._poll_now.wait()
        except TimeoutError:
            return
        gap = self._feeder.settings.min_poll_gap_s - (loop.time() - started)
        if gap > 0:
            await asyncio.sleep(gap)

    async def close(self) -> None:
        await self._session.close()
