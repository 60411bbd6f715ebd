"""Gap watch: subscribed symbols (of the partitions this instance owns) without a tick for
``gap_alert_s`` while their market is in session raise a ``tick_gap`` alert (rate-limited
per symbol) and are counted."""

from __future__ import annotations

from collections.abc import Callable

from services.datamanager.bars import BarAggregator
from services.datamanager.interest import SubscribedSymbols
from services.datamanager.metrics import DatamanagerMetrics
from services.datamanager.ownership import Ownership
from services.datamanager.quality import AlertGate
from shared.dto import utcnow
from shared.events import SystemEvents
from shared.sessions import in_session
from shared.symbols import Market


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
    ) -> None:
        self._gap_s = gap_alert_s
        self._gate = AlertGate(alert_interval_s)
        self._registry = registry
        self._bars = bars
        self._events = events
        self._metrics = metrics
        self._own = ownership

    def check(self, now: float, since: float) -> int:
        """Alert on symbols silent for the gap window (counted from ``since`` at the
        latest: the instance's takeover); returns how many are in a gap."""
        if now - since < self._gap_s:
            return 0
        at = utcnow()
        open_markets = [m for m in Market if in_session(m, at)]
        bars = self._bars()
        gapped = 0
        for market in open_markets:
            for symbol in self._registry.market_symbols(market):
                if not self._own.owns(symbol):
                    continue  # another instance's partition watches it
                silent = now - max(bars.last_tick_time(symbol), since)
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
        return gapped
