"""One market's ordered sources and wanted symbols: run the active feeder, watch it, fail over and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from prometheus_client import Histogram

from services.feeder_gateway.feeders.base import Feeder, FeederConfigError
from services.feeder_gateway.feeders.history import MinuteHistory
from services.feeder_gateway.feeders.wanted import WantedSymbols
from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import PriceUpdate, utcnow
from shared.events import SystemEvents
from shared.logs import kv
from shared.sessions import in_session
from shared.symbols import Market
from shared.tasks import cancel_and_wait

log = logging.getLogger("market_feed")

HoleCallback = Callable[[Market, frozenset[str], datetime, datetime, str], None]
"""(market, symbols, last tick before the hole, first tick after it, why)."""


class Outcome(StrEnum):
    """Why the active source's run ended."""

    STOP = "stop"
    CONFIG_ERROR = "config_error"
    FAILED = "failed"
    STALE = "stale"  # no batch at all (in session)
    FROZEN = "frozen"  # batches, but no quote moved (in session)
    FAILBACK = "failback"


@dataclass
class _SourceState:
    feeder: Feeder[Any]
    failed_at: float | None = None  # monotonic time of the last failure
    disabled: str | None = None  # configuration error: never retried


class MarketFeed:
    """Feeds one market's ticks into the queue from the best available source.

    ``wanted`` is the market's one registry of wanted symbols; every feeder reads it
    (read-only), so a failover or a restart replays the whole set. The active source is
    the first healthy one in preference order. The market's one watchdog replaces it when
    its generator fails for good (configuration error), when it goes stale (no batch for
    its ``stale_after_s``) or frozen (no quote moved for its ``frozen_after_s``), counting
    only time while the market is in session and symbols are wanted. With one source a
    replacement is a restart of that source (status ``restarted``).
    A preferred source that failed is probed beside the active one once
    ``failback_after_s`` has passed (its ticks unpublished); the feed switches back as soon
    as the probe delivers data, and probes again later if it does not.
    """

    def __init__(
        self,
        market: Market,
        feeders: list[Feeder[Any]],
        wanted: WantedSymbols,
        queue: ConflatingTickQueue,
        events: SystemEvents,
        failback_after_s: float = 30.0,
        watchdog_interval_s: float = 0.25,
        stale_in_session_only: bool = True,
        latency: Histogram | None = None,
        on_hole: HoleCallback | None = None,
    ) -> None:
        if not feeders:
            raise ValueError(f"market {market} has no sources")
        self.market = market
        self._sources = [_SourceState(f) for f in feeders]
        self._queue = queue
        self._events = events
        self._failback_after_s = failback_after_s
        self._watchdog_interval_s = watchdog_interval_s
        self._stale_in_session_only = stale_in_session_only
        self._latency = latency
        self.wanted = wanted
        self.active = 0
        self.last_data = time.monotonic()
        self.watched_since = self.last_data  # silence before this does not count
        self.switches = 0
        self._failback_to = 0
        self._on_hole = on_hole
        self.last_tick_at: datetime | None = None  # provider time of the newest tick published
        self._hole: tuple[datetime, str] | None = None  # (last tick before a hole, why), until data comes
        for f in feeders:
            f.ctx.on_gap = self._reconnected

    def _reconnected(self) -> None:
        self.note_hole("reconnect")

    def note_hole(self, why: str) -> None:
        """The market's ticks have a hole from the last one published (reported on the next batch)."""
        if self._hole is None and self.last_tick_at is not None:
            self._hole = (self.last_tick_at, why)

    def histories(self) -> list[MinuteHistory]:
        """The minute histories of the market's sources: the active source's first, then
        the others in preference order."""
        order = [self._sources[self.active], *(s for i, s in enumerate(self._sources) if i != self.active)]
        return [h for s in order if (h := s.feeder.history()) is not None]

    @property
    def active_feeder(self) -> Feeder[Any]:
        return self._sources[self.active].feeder

    @property
    def active_source(self) -> str:
        return self.active_feeder.ctx.name

    @property
    def connected(self) -> bool:
        return self.active_feeder.connected

    @property
    def symbols(self) -> frozenset[str]:
        return self.wanted.symbols

    def set_symbols(self, symbols: frozenset[str]) -> None:
        had = bool(self.wanted.symbols)
        if self.wanted.replace(symbols) and not had:
            self.watched_since = time.monotonic()  # the watchdog's clocks start with interest

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            source = self._sources[self.active]
            if source.disabled is not None:  # every source is misconfigured: nothing to run
                await stop.wait()
                return
            outcome = await self._run_source(source, stop)
            if outcome is Outcome.STOP:
                return
            self._choose_next(outcome)

    async def _pump(self, feeder: Feeder[Any]) -> None:
        gen = cast(AsyncGenerator[list[PriceUpdate], None], feeder.ticks())  # feeders are async generators
        async with contextlib.aclosing(gen):
            async for batch in gen:
                self.last_data = time.monotonic()
                if batch:
                    self._queue.put_batch(batch)
                    if self._hole is not None:
                        self._report_hole(batch)
                    self.last_tick_at = batch[-1].timestamp
                    if self._latency is not None:  # one sample per batch: its newest tick
                        last = batch[-1]
                        if last.receive_time is not None:
                            self._latency.observe(max((last.receive_time - last.timestamp).total_seconds(), 0.0))

    def _report_hole(self, batch: list[PriceUpdate]) -> None:
        assert self._hole is not None
        since, why = self._hole
        self._hole = None
        first = max(t.timestamp for t in batch)  # snapshots of quiet symbols carry old times
        if self._on_hole is not None and self.wanted.symbols and first > since:
            self._on_hole(self.market, self.wanted.symbols, since, first, why)

    async def _run_source(self, source: _SourceState, stop: asyncio.Event) -> Outcome:
        feeder = source.feeder
        name = feeder.ctx.name
        self.watched_since = time.monotonic()
        pump = asyncio.create_task(self._pump(feeder), name=f"feed.{self.market}.{name}")
        probe: asyncio.Task[bool] | None = None
        probed = -1
        try:
            while True:
                stop_wait = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait(
                        {pump, stop_wait}, timeout=self._watchdog_interval_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    stop_wait.cancel()
                if stop.is_set():
                    return Outcome.STOP
                if pump.done():
                    exc = pump.exception()
                    if isinstance(exc, FeederConfigError):
                        source.disabled = str(exc)
                        self._events.alert(
                            "feeder_config_error", str(exc), severity="error", market=self.market.value, source=name
                        )
                        return Outcome.CONFIG_ERROR
                    if exc is not None:
                        log.error("feeder failed", exc_info=exc, extra=kv(market=self.market.value, source=name))
                    else:
                        log.warning("feeder generator ended", extra=kv(market=self.market.value, source=name))
                    return Outcome.FAILED
                now = time.monotonic()
                verdict = self._watch(feeder, now)
                if verdict is not None:
                    return verdict
                if probe is not None and probe.done():
                    if not probe.cancelled() and probe.exception() is None and probe.result():
                        self._failback_to = probed
                        return Outcome.FAILBACK
                    self._sources[probed].failed_at = now  # still down: probe again later
                    probe = None
                if probe is None and self.active > 0:
                    probed = self._preferred_ready(now)
                    if probed >= 0:
                        probe = asyncio.create_task(
                            self._probe(self._sources[probed].feeder), name=f"feed.{self.market}.probe"
                        )
        finally:
            await cancel_and_wait([pump] if probe is None else [pump, probe])

    def _watch(self, feeder: Feeder[Any], now: float) -> Outcome | None:
        """The market watchdog: STALE or FROZEN when the active source is, else None."""
        if not self.symbols or not self._watch_now(feeder):
            self.watched_since = now  # out of session or nothing wanted: silence does not count
            return None
        since = self.watched_since
        stale_after = feeder.stale_after_s
        silent = now - max(self.last_data, since)
        if stale_after is not None and silent > stale_after:
            self._events.status(
                f"feed.{self.market.value}", "stale", source=feeder.ctx.name, silent_s=round(silent, 1)
            )
            return Outcome.STALE
        frozen_after, news = feeder.frozen_after_s, feeder.news_at()
        if frozen_after is not None and news is not None and now - max(news, since) > frozen_after:
            self._events.status(
                f"feed.{self.market.value}", "frozen", source=feeder.ctx.name, unchanged_s=round(now - news, 1)
            )
            return Outcome.FROZEN
        return None

    async def _probe(self, feeder: Feeder[Any]) -> bool:
        """Whether a preferred source delivers data again, tried beside the active one;
        its ticks are not published. Gives up after its stale threshold (or 10 s)."""
        gen = cast(AsyncGenerator[list[PriceUpdate], None], feeder.ticks())
        try:
            async with asyncio.timeout(feeder.stale_after_s or 10.0), contextlib.aclosing(gen):
                async for batch in gen:
                    if batch:
                        return True
        except TimeoutError:
            pass
        except FeederConfigError as e:
            log.warning("preferred source has a configuration error", extra=kv(source=feeder.ctx.name, error=str(e)))
        except Exception as e:  # a broken source is simply not ready yet
            log.info("preferred source not ready", extra=kv(source=feeder.ctx.name, error=repr(e)))
        return False

    def _watch_now(self, feeder: Feeder[Any]) -> bool:
        """Whether silence counts now: always, or only while the market is in session."""
        if not (self._stale_in_session_only and feeder.follows_sessions):
            return True
        return in_session(self.market, utcnow())

    def _preferred_ready(self, now: float) -> int:
        """The index of the most preferred source due for another try, or -1."""
        for i, s in enumerate(self._sources[: self.active]):
            if s.disabled is None and (s.failed_at is None or now - s.failed_at >= self._failback_after_s):
                return i
        return -1

    def _choose_next(self, outcome: Outcome) -> None:
        now = time.monotonic()
        old = self.active
        if outcome is Outcome.FAILBACK:
            self.active = self._failback_to
        else:
            self._sources[old].failed_at = now
            n = len(self._sources)
            for step in range(1, n + 1):
                i = (old + step) % n
                if self._sources[i].disabled is None:
                    self.active = i
                    break
            else:
                self._events.alert(
                    "market_down",
                    f"every source of {self.market} has a configuration error",
                    severity="critical",
                    market=self.market.value,
                )
                return
        new = self._sources[self.active].feeder.ctx.name
        switched = self.active != old
        self.switches += switched
        if switched:
            self.note_hole(outcome.value)
        state = "failback" if outcome is Outcome.FAILBACK else "failover" if switched else "restarted"
        self._events.status(
            f"feed.{self.market.value}",
            state,
            reason=outcome.value,
            source=new,
            previous=self._sources[old].feeder.ctx.name,
        )
