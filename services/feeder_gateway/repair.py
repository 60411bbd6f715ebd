"""Gap repair, the gateway's half: holes in the ticks fetched from the providers' minute history.

A hole reaches the worker from the market's feed (a reconnect or a switch of source: from
the last tick before it to the first after it) or from a ``repair_bars`` command (an
operator, or the datamanager after its own downtime or a per-symbol gap). Each becomes a
window of whole minutes, [minute of the last tick before, minute after the first tick
after), for a set of symbols. The worker at once publishes a ``pending`` HistoryBars per
symbol (the datamanager marks those minutes ``incomplete``), waits until the window's last
minute is final at the provider (``settle_s``), then asks the market's sources' minute
histories, the active source's first (a source without one is stood in for by the next in
the market's list that has one, and the messages say so). Each symbol's provider minutes
go out as a ``repaired`` HistoryBars on market data keyed by the symbol, where the
datamanager that owns the symbol merges them. A failure of the history endpoint publishes
``failed`` and retries with backoff (the provider's retry-after honoured) until it works
or the history no longer reaches back (``out_of_reach``).

Automatic windows of the same symbols that overlap or touch merge before they are fetched;
a commanded window is kept as asked (its answer is per request). Pending windows are
bounded (``gateway.repair.max_pending``); windows live in memory only: after a restart of
the gateway the datamanager's sweep asks again for what is still ``incomplete``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from aiokafka import ConsumerRecord

from services.feeder_gateway.feeders.history import (
    HistoryConfigError,
    HistoryOutOfReach,
    HistoryUnavailable,
    MinuteBar,
    MinuteHistory,
    minute_ceil,
    minute_floor,
)
from shared.backoff import Backoff
from shared.commands import ParamError, RepairBarsParams
from shared.config import RepairSettings, SymbolShard
from shared.dto import HISTORY_FIELDS, ControlCommand, HistoryBars, HistoryState, Message, utcnow
from shared.events import SystemEvents
from shared.kafka import KafkaPublisher
from shared.logs import kv
from shared.metrics import ServiceMetrics
from shared.signing import Verifier
from shared.subscriptions import accepted_symbols
from shared.symbols import Market
from shared.tasks import cancel_and_wait

log = logging.getLogger("feeder-gateway.repair")


class RepairedMarket(Protocol):
    """What the worker needs of a market's feed (``MarketFeed``)."""

    @property
    def active_source(self) -> str: ...
    @property
    def symbols(self) -> frozenset[str]: ...
    def histories(self) -> list[MinuteHistory]: ...

PUBLISH_CHUNK = 1000
DEFAULT_SETTLE_S = 5.0


@dataclass(eq=False)
class RepairWindow:
    """Minutes [start, end) of ``symbols`` to fetch; ``request_id`` when a command asked."""

    market: Market
    symbols: frozenset[str]
    start: datetime
    end: datetime
    why: str
    request_id: str | None = None
    attempt: int = 0
    due: float = 0.0  # monotonic time of the next attempt
    refused: set[str] = field(default_factory=set)  # sources whose history refused our settings
    backoff: Backoff = field(default_factory=Backoff)

    def touches(self, other: RepairWindow) -> bool:
        return self.start <= other.end and other.start <= self.end


def window_of(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The whole minutes a hole from ``since`` (last tick before) to ``until`` (first
    after) leaves unknown: the minute of each end included."""
    return minute_floor(since), minute_floor(until) + timedelta(minutes=1)


class RepairWorker:
    """Holds the repair windows of every served market and works them off, one market's
    windows at a time per market (a slow HK history never holds up US repairs)."""

    def __init__(
        self,
        feeds: Mapping[Market, RepairedMarket],
        publisher: KafkaPublisher,
        topic: str,
        events: SystemEvents,
        metrics: ServiceMetrics,
        settings: RepairSettings,
        shard: SymbolShard | None = None,
        verifier: Verifier | None = None,
        require_signed: bool = False,
    ) -> None:
        self._feeds = feeds
        self._publisher = publisher
        self._topic = topic
        self._events = events
        self._settings = settings
        self._shard = shard
        self._verifier = verifier
        self._require_signed = require_signed
        self._windows: dict[Market, list[RepairWindow]] = {m: [] for m in feeds}
        self._announce: dict[Market, list[RepairWindow]] = {m: [] for m in feeds}
        self._wake = {m: asyncio.Event() for m in feeds}
        self._windows_total = metrics.counter(
            "livedata_gateway_repair_windows", "Repair windows by outcome", ["market", "state"]
        )
        self._symbols_total = metrics.counter(
            "livedata_gateway_repair_symbols", "Symbol windows answered, by state", ["market", "state"]
        )
        self._requests = metrics.counter(
            "livedata_gateway_history_requests", "Minute-history calls by outcome", ["source", "outcome"]
        )
        self._pending_gauge = metrics.gauge("livedata_gateway_repair_pending", "Repair windows waiting", ["market"])

    # ---- what comes in ----------------------------------------------------------------

    def hole(self, market: Market, symbols: frozenset[str], since: datetime, until: datetime, why: str) -> None:
        """A hole in the market's ticks (MarketFeed's ``on_hole``)."""
        start, end = window_of(since, until)
        self.add(RepairWindow(market, symbols, start, end, why))

    def add(self, window: RepairWindow) -> None:
        if not self._settings.enabled or window.market not in self._windows or not window.symbols:
            return
        windows = self._windows[window.market]
        loop_now = time.monotonic()
        window.due = loop_now + max(0.0, (window.end - utcnow()).total_seconds()) + self._settle_s(window.market)
        window.backoff = Backoff(base_s=self._settings.retry_base_s, cap_s=self._settings.retry_cap_s)
        if window.request_id is None:
            for w in windows:
                if w.request_id is None and w.attempt == 0 and w.symbols == window.symbols and w.touches(window):
                    w.start, w.end = min(w.start, window.start), max(w.end, window.end)
                    w.due = max(w.due, window.due)
                    self._announce[w.market].append(w)
                    self._wake[w.market].set()
                    return
        windows.append(window)
        if sum(len(ws) for ws in self._windows.values()) > self._settings.max_pending:
            self._drop_oldest(window.market)
        self._windows_total.labels(window.market.value, "queued").inc()
        self._pending_gauge.labels(window.market.value).set(len(windows))
        self._events.status(
            "repair",
            "queued",
            market=window.market.value,
            symbols=len(window.symbols),
            start=window.start.isoformat(),
            end=window.end.isoformat(),
            why=window.why,
            request_id=window.request_id,
        )
        self._announce[window.market].append(window)
        self._wake[window.market].set()

    def _drop_oldest(self, market: Market) -> None:
        windows = self._windows[market]
        for i, w in enumerate(windows):
            if w.request_id is None:
                del windows[i]
                self._windows_total.labels(market.value, "dropped").inc()
                self._events.alert(
                    "repair_dropped",
                    f"{market}: more than {self._settings.max_pending} repair windows pending; "
                    f"dropped the oldest ({len(w.symbols)} symbols from {w.start.isoformat()})",
                    market=market.value,
                )
                return

    async def on_records(self, records: Sequence[tuple[ConsumerRecord[bytes, bytes], Message]]) -> None:
        """Control commands: every fresh ``repair_bars`` (whatever its target) for a market
        this gateway serves becomes a window of this gateway's share of its symbols."""
        now = utcnow()
        for rec, msg in records:
            if not isinstance(msg, ControlCommand) or msg.command != "repair_bars":
                continue
            age = (now - msg.timestamp).total_seconds()
            if age > self._settings.command_freshness_s:
                log.info("stale repair_bars ignored", extra=kv(correlation_id=msg.correlation_id, age_s=round(age)))
                continue
            if self._verifier is not None:
                refused = self._verifier.check(rec.value or b"", msg, now.timestamp(), self._require_signed)
                if refused is not None:
                    log.warning("repair_bars refused", extra=kv(correlation_id=msg.correlation_id, reason=refused))
                    continue
            try:
                params = RepairBarsParams.parse(msg.params, now)
            except ParamError as e:  # the datamanager answers the asker; here it is only logged
                log.warning("repair_bars with bad params", extra=kv(correlation_id=msg.correlation_id, error=str(e)))
                continue
            feed = self._feeds.get(params.market)
            if feed is None:
                continue
            if params.symbols:
                symbols, _ = accepted_symbols(params.market, params.symbols, self._shard)
            else:
                symbols = feed.symbols
            if not symbols:
                continue
            self.add(
                RepairWindow(
                    params.market,
                    symbols,
                    minute_floor(params.start),
                    minute_ceil(params.end),
                    f"command from {msg.source}",
                    request_id=msg.correlation_id,
                )
            )

    # ---- the work ---------------------------------------------------------------------

    def pending(self, market: Market) -> int:
        return len(self._windows.get(market, ()))

    def _settle_s(self, market: Market) -> float:
        histories = self._feeds[market].histories()
        return histories[0].settle_s if histories else DEFAULT_SETTLE_S

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._market_loop(m, stop), name=f"repair.{m.value}") for m in self._windows]
        try:
            await stop.wait()
        finally:
            await cancel_and_wait(tasks)

    async def _market_loop(self, market: Market, stop: asyncio.Event) -> None:
        windows, wake = self._windows[market], self._wake[market]
        while not stop.is_set():
            wake.clear()
            await self._publish_announcements(market)
            now = time.monotonic()
            due = [w for w in windows if w.due <= now]
            if not due:
                next_due = min((w.due for w in windows), default=None)
                timeout = None if next_due is None else max(next_due - now, 0.0)
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            window = min(due, key=lambda w: w.due)
            try:
                done = await self._attempt(window)
            except Exception:  # a bug in one provider's history must not end repairs
                log.exception("repair attempt failed", extra=kv(market=market.value))
                done = False
                self._retry_later(window, None)
            if done and window in windows:
                windows.remove(window)
            self._pending_gauge.labels(market.value).set(len(windows))

    async def _publish_announcements(self, market: Market) -> None:
        queue = self._announce[market]
        while queue:
            w = queue.pop(0)
            await self._publish(w, sorted(w.symbols), "pending", source=self._source_name(market), reason=w.why)

    def _source_name(self, market: Market) -> str:
        histories = self._feeds[market].histories()
        return histories[0].source if histories else self._feeds[market].active_source

    async def _attempt(self, w: RepairWindow) -> bool:
        """One try at a window; True when it is finished (repaired, out of reach, or given up)."""
        feed = self._feeds[w.market]
        histories = [h for h in feed.histories() if h.source not in w.refused]
        market = w.market.value
        if not histories:
            why = f"no source of {market} has a minute history this gateway may use"
            await self._publish(w, sorted(w.symbols), "out_of_reach", source=feed.active_source, reason=why)
            self._finished(w, "out_of_reach", why)
            return True
        history = histories[0]
        active = feed.active_source
        stood_in = None if history.source == active else f"{active} has no minute history; {history.source} stood in"
        now = utcnow()
        if not history.reaches(w.start, now):
            why = f"{history.source}'s minute history no longer reaches back to {w.start.isoformat()}"
            await self._publish(w, sorted(w.symbols), "out_of_reach", source=history.source, reason=why)
            self._finished(w, "out_of_reach", why)
            return True
        w.attempt += 1
        remaining = sorted(w.symbols)
        failure: HistoryUnavailable | None = None
        step = max(history.max_symbols_per_request, 1)
        while remaining:
            chunk, rest = remaining[:step], remaining[step:]
            try:
                bars = await history.minute_bars(chunk, w.start, w.end)
            except HistoryUnavailable as e:
                self._requests.labels(history.source, "unavailable").inc()
                failure = e
                break
            except HistoryOutOfReach as e:
                self._requests.labels(history.source, "out_of_reach").inc()
                await self._publish(w, chunk, "out_of_reach", source=history.source, reason=str(e))
                remaining = rest
                continue
            except HistoryConfigError as e:
                self._requests.labels(history.source, "refused").inc()
                w.refused.add(history.source)
                self._events.alert(
                    "history_refused",
                    f"{history.source} ({market}) refused our minute-history request: {e}",
                    severity="error",
                    market=market,
                    source=history.source,
                )
                w.symbols = frozenset(remaining)
                w.due = time.monotonic()  # at once, from the next source with a history
                return False
            self._requests.labels(history.source, "ok").inc()
            note = "; ".join(n for n in (stood_in, getattr(bars, "note", None)) if n) or None
            await self._publish(w, chunk, "repaired", source=history.source, reason=note, history=history, bars=bars)
            remaining = rest
        if failure is None:
            self._finished(w, "repaired", stood_in)
            return True
        w.symbols = frozenset(remaining)
        await self._publish(w, remaining, "failed", source=history.source, reason=str(failure))
        self._retry_later(w, failure)
        return False

    def _retry_later(self, w: RepairWindow, failure: HistoryUnavailable | None) -> None:
        delay = w.backoff.next_delay()
        if failure is not None and failure.retry_after_s is not None:
            delay = max(delay, failure.retry_after_s)
        w.due = time.monotonic() + delay
        self._windows_total.labels(w.market.value, "retried").inc()
        self._events.status(
            "repair",
            "failed",
            market=w.market.value,
            symbols=len(w.symbols),
            attempt=w.attempt,
            error=str(failure) if failure is not None else "internal error",
            retry_in_s=round(delay, 2),
            request_id=w.request_id,
        )

    def _finished(self, w: RepairWindow, state: str, note: str | None) -> None:
        self._windows_total.labels(w.market.value, state).inc()
        self._events.status(
            "repair",
            state,
            market=w.market.value,
            symbols=len(w.symbols),
            start=w.start.isoformat(),
            end=w.end.isoformat(),
            attempts=w.attempt,
            note=note,
            request_id=w.request_id,
        )

    async def _publish(
        self,
        w: RepairWindow,
        symbols: Sequence[str],
        state: HistoryState,
        *,
        source: str,
        reason: str | None = None,
        history: MinuteHistory | None = None,
        bars: dict[str, list[MinuteBar]] | None = None,
    ) -> None:
        stamp = utcnow()
        fields = history.fields if history is not None else HISTORY_FIELDS
        start_ms, end_ms = w.start.timestamp() * 1000, w.end.timestamp() * 1000
        items: list[tuple[str, Message]] = []
        for sym in symbols:
            rows: tuple[tuple[float, float, float, float, float, float, float], ...] = ()
            if bars is not None:
                rows = tuple(
                    sorted(r for b in bars.get(sym, ()) if start_ms <= (r := b.row())[0] < end_ms)
                )
            msg = HistoryBars(
                symbol=sym,
                start=w.start,
                end=w.end,
                source=source,
                state=state,
                timestamp=stamp,
                bars=rows,
                request_id=w.request_id,
                reason=reason,
                attempt=w.attempt,
                fields=fields,
            )
            items.append((sym, msg))
        self._symbols_total.labels(w.market.value, state).inc(len(items))
        for i in range(0, len(items), PUBLISH_CHUNK):
            await self._publisher.publish_many(self._topic, items[i : i + PUBLISH_CHUNK])
