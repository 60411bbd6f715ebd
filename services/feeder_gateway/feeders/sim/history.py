"""The sim feeder's minute history: the minutes of the ticks it generated, last ``keep`` per symbol.

The feeder folds its ticks into an open minute per symbol itself (on the hot path, no call
per tick) and hands each finished minute here; the open minute is read from the feeder's
walk on request. Volume and amount are the differences of the cumulative figures the
feeder published, so a bar is what the datamanager builds from the same ticks (except a
walk's first tick, which the datamanager can only take as the start of the day's figures).
Minutes of a symbol that is no longer wanted are dropped with its walk (``keep_only``).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.feeder_gateway.feeders.history import ALL_FIELDS, MinuteBar

Row = tuple[float, float, float, float, float, float, float]  # (start epoch s, o, h, l, c, volume, amount)
_WIDTH = 7  # doubles a stored minute takes: 56 bytes (a tuple of 7 floats would take ~280)


class SimMinutes:
    """The MinuteHistory of a ``sim`` source."""

    def __init__(self, source: str, keep: int, open_minute: Callable[[str], Row | None]) -> None:
        self._source = source
        self._keep = keep
        self._open_minute = open_minute
        self._closed: dict[str, array[float]] = {}  # per symbol, minutes of 7 doubles, oldest first

    def add(self, symbol: str, row: Row) -> None:
        """A finished minute of ``symbol`` (in time order); a second part of the same minute
        (the feeder restarted within it) is merged into the first."""
        rows = self._closed.get(symbol)
        if rows is None:
            rows = self._closed[symbol] = array("d")
        if rows and rows[-_WIDTH] == row[0]:
            last = len(rows) - _WIDTH
            rows[last + 2] = max(rows[last + 2], row[2])
            rows[last + 3] = min(rows[last + 3], row[3])
            rows[last + 4] = row[4]
            rows[last + 5] += row[5]
            rows[last + 6] += row[6]
            return
        rows.extend(row)
        if len(rows) > self._keep * _WIDTH:
            del rows[:_WIDTH]

    def _rows(self, symbol: str) -> list[Row]:
        rows = self._closed.get(symbol)
        if not rows:
            return []
        return [
            (rows[i], rows[i + 1], rows[i + 2], rows[i + 3], rows[i + 4], rows[i + 5], rows[i + 6])
            for i in range(0, len(rows), _WIDTH)
        ]

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
            rows = self._rows(symbol)
            current = self._open_minute(symbol)
            if current is not None and (not rows or current[0] > rows[-1][0]):
                rows.append(current)
            out[symbol] = [
                MinuteBar(datetime.fromtimestamp(t, UTC), o, h, low, c, v, a)
                for t, o, h, low, c, v, a in rows
                if lo <= t < hi
            ]
        return out
