"""Gap watch: subscribed symbols (of the partitions this instance owns) without a tick for
``gap_alert_s`` while their market is in session raise a ``tick_gap`` alert (rate-limited
per symbol) and are counted; one that ticks again is handed to ``on_closed`` with its last
tick before and its newest after (a repair window), all of one check at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from services.datamanager.bars import BarAggregator
from services.datamanager.interest import SubscribedSymbols
from services.datamanager.metrics import DatamanagerMetrics
from services.datamanager.ownership import Ownership
from services.datamanager.quality import AlertGate
from shared.dto import utcnow
from shared.events import SystemEvents
from shared.sessions import in_session
from shared.symbols import Market


class ClosedGap(NamedTuple):
    """A symbol that was in a gap and ticks again (times in epoch s)."""

    market: Market
    symbol: str
    before: float  # its last tick before the gap
    after: float  # its newest tick since


class GapWatch:
    def __init__(
        self,
        gap_alert_s: float,
        alert_interval_s: float,
        registry: SubscribedSymbols,
        bars: Callable[[], BarAggregator],
        events: SystemEvents,
        metrics: DatamanagerMetrics,
        ownership: Ownership,
        on_closed: Callable[[list[ClosedGap]], None] | None = None,
    ) -> None:
        self._gap_s = gap_alert_s
        self._gate = AlertGate(alert_interval_s)
        self._registry = registry
        self._bars = bars
        self._events = events
        self._metrics = metrics
        self._own = ownership
        self._on_closed = on_closed
        self._in_gap: dict[str, float] = {}  # symbol in a gap → its last tick before it

    @property
    def in_gap(self) -> frozenset[str]:
        """The symbols in a gap at the last check (that had ticked before it)."""
        return frozenset(self._in_gap)

    def check(self, now: float, since: float) -> int:
        """Alert on symbols silent for the gap window (counted from ``since`` at the
        latest: the instance's takeover); returns how many are in a gap."""
        if now - since < self._gap_s:
            return 0
        at = utcnow()
        open_markets = [m for m in Market if in_session(m, at)]
        bars = self._bars()
        gapped = 0
        was, in_gap = self._in_gap, {}
        closed: list[ClosedGap] = []
        for market in open_markets:
            for symbol in self._registry.market_symbols(market):
                if not self._own.owns(symbol):
                    continue  # another instance's partition watches it
                last = bars.last_tick_time(symbol)
                before = was.get(symbol)
                silent = now - max(last, since)
                if before is not None and last > before:
                    closed.append(ClosedGap(market, symbol, before, last))
                elif silent > self._gap_s and last > 0:
                    in_gap[symbol] = before if before is not None else last
                if silent > self._gap_s:
                    gapped += 1
                    if self._gate.allow("gap", symbol, now):
                        self._events.alert(
                            "tick_gap",
                            f"no tick for {symbol} for {silent:.0f}s in session",
                            symbol=symbol,
                            silent_s=round(silent, 1),
                        )
        self._metrics.gaps.set(gapped)
        self._in_gap = in_gap  # symbols no longer watched (market closed, unsubscribed) are forgotten
        if closed and self._on_closed is not None:
            self._on_closed(closed)
        return gapped
