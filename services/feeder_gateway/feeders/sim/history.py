"""The sim feeder's minute history: the minutes of the ticks it generated, last ``keep`` per symbol.

The feeder folds its ticks into an open minute per symbol itself (on the hot path, no call
per tick) and hands each finished minute here; the open minute is read from the feeder's
walk on request. Volume and amount are the differences of the cumulative figures the
feeder published, so a bar is what the datamanager builds from the same ticks (except a
walk's first tick, which the datamanager can only take as the start of the day's figures).
Minutes of a symbol that is no longer wanted are dropped with its walk (``keep_only``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.feeder_gateway.feeders.history import ALL_FIELDS, MinuteBar

Row = tuple[float, float, float, float, float, float, float]  # (start epoch s, o, h, l, c, volume, amount)


class SimMinutes:
    """The MinuteHistory of a ``sim`` source."""

    def __init__(self, source: str, keep: int, open_minute: Callable[[str], Row | None]) -> None:
        self._source = source
        self._keep = keep
        self._open_minute = open_minute
        self._closed: dict[str, deque[Row]] = {}

    def add(self, symbol: str, row: Row) -> None:
        """A finished minute of ``symbol`` (in time order); a second part of the same minute
        (the feeder restarted within it) is merged into the first."""
        rows = self._closed.get(symbol)
        if rows is None:
            rows = self._closed[symbol] = deque(maxlen=self._keep)
        if rows and rows[-1][0] == row[0]:
            t, o, h, low, _c, v, a = rows[-1]
            rows[-1] = (t, o, max(h, row[2]), min(low, row[3]), row[4], v + row[5], a + row[6])
            return
        rows.append(row)

    def keep_only(self, wanted: frozenset[str]) -> None:
        """Drop the minutes of every symbol not wanted any more."""
        for symbol in [s for s in self._closed if s not in wanted]:
            del self._closed[symbol]

    @property
    def source(self) -> str:
        return self._source

    @property
    def fields(self) -> tuple[str, ...]:
        return ALL_FIELDS

    @property
    def max_symbols_per_request(self) -> int:
        return 500

    @property
    def settle_s(self) -> float:
        return 1.0

    def reaches(self, start: datetime, now: datetime) -> bool:
        return (now - start).total_seconds() <= self._keep * 60

    async def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, list[MinuteBar]]:
        lo, hi = start.timestamp(), end.timestamp()
        out: dict[str, list[MinuteBar]] = {}
        for symbol in symbols:
            rows = list(self._closed.get(symbol, ()))
            current = self._open_minute(symbol)
            if current is not None and (not rows or current[0] > rows[-1][0]):
                rows.append(current)
            out[symbol] = [
                MinuteBar(datetime.fromtimestamp(t, UTC), o, h, low, c, v, a)
                for t, o, h, low, c, v, a in rows
                if lo <= t < hi
            ]
        return out
