"""Data-quality rules that are not per-tick arithmetic: board price limits, rate-limited alerts.

Real ticks are never dropped for moving: a move beyond the board's daily limit relative to
the previous close is flagged (an alert), because IPO days, ChiNext/STAR, BJ and ST boards
all move differently and a wrong table must not eat real prices.
"""

from __future__ import annotations

from shared.symbols import Market, market_of

# Daily limits relative to the previous close, as fractions.
CN_MAIN_LIMIT = 0.10
CN_GROWTH_LIMIT = 0.20  # ChiNext 300xxx/301xxx, STAR 688xxx/689xxx
CN_BJ_LIMIT = 0.30
CN_ST_LIMIT = 0.05
# HK and US have no daily limit; a move this large against the previous close is flagged.
UNLIMITED_FLAG = 0.50
# Limit prices are rounded to the tick (0.01): allow this much beyond the fraction.
LIMIT_SLACK = 0.005


def board_limit(symbol: str, st: bool = False, no_limit: bool = False) -> float | None:
    """The fraction beyond which a move against the previous close is flagged (None: never)."""
    if no_limit:
        return None
    market = market_of(symbol)
    if market is not Market.CN:
        return UNLIMITED_FLAG
    code, _, exchange = symbol.partition(".")
    if exchange == "BJ":
        return CN_BJ_LIMIT
    if code.startswith(("300", "301", "688", "689")):
        return CN_GROWTH_LIMIT  # ST on these boards keeps the 20 % limit
    if st:
        return CN_ST_LIMIT
    return CN_MAIN_LIMIT


class AlertGate:
    """At most one alert per (code, key) every ``interval_s``; counts what it held back."""

    def __init__(self, interval_s: float, max_keys: int = 100_000) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._max_keys = max_keys
        self.suppressed = 0

    def allow(self, code: str, key: str, now: float) -> bool:
        k = (code, key)
        last = self._last.get(k)
        if last is not None and now - last < self.interval_s:
            self.suppressed += 1
            return False
        if len(self._last) >= self._max_keys:
            cutoff = now - self.interval_s
            self._last = {kk: t for kk, t in self._last.items() if t >= cutoff}
        self._last[k] = now
        return True
