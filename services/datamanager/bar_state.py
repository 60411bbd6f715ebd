"""The aggregator's per-symbol state and the stored row of a bar (shared by bars.py and repair.py)."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

from shared.dto import PriceUpdate
from shared.symbols import Market

MINUTE_FIELDS = 7
AGGREGATED = "/aggregated"
FINAL_QUALITIES = frozenset({"repaired", "partial"})
"""A minute with one of these qualities holds the provider's figures: ticks no longer change it."""
MAX_QUANTITY = 1e15
"""Largest volume or turnover any source can mean (shares or currency, per day): a bigger
one is a bad number, and taken in it would freeze the day's cumulative figures."""


class BarRow(NamedTuple):
    """One stored version of a bar (the ClickHouse row); times in epoch milliseconds."""

    symbol: str
    period: str
    start_ms: int
    trading_day: date
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float
    prev_close: float | None
    source: str
    last_tick_ms: int
    tick_partition: int
    tick_offset: int
    cum_volume: float | None
    cum_amount: float | None
    quality: str = ""  # "" (built from the ticks), repaired, partial or incomplete
    revision: int = 0


class Mark(NamedTuple):
    """A revised minute bar's quality, revision and source (most minutes have none)."""

    quality: str
    revision: int
    source: str


_MARKS: dict[Mark, Mark] = {}


def shared_mark(mark: Mark) -> Mark:
    """One instance per distinct mark (a hole marks thousands of minutes alike): a held
    mark then costs its map entry only."""
    found = _MARKS.get(mark)
    if found is None:
        if len(_MARKS) >= 10_000:
            _MARKS.clear()
        found = _MARKS[mark] = mark
    return found


@dataclass(slots=True)
class Ohlcv:
    start: float  # epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    amount: float = 0.0


@dataclass(slots=True)
class SymbolBars:
    market: Market
    limit: float | None  # board limit vs previous close (fraction), None: none
    day: date | None = None
    day_start: float = 0.0  # epoch of the trading day's local midnight
    day_end: float = 0.0
    last_ts: float = 0.0
    last_price: float = 0.0
    last_size: float | None = None
    last_cum_volume: float | None = None
    last_cum_amount: float | None = None
    last_partition: int = -1
    last_offset: int = -1
    last_tick: PriceUpdate | None = None
    minute: Ohlcv | None = None
    daily: Ohlcv | None = None
    prev_close: float | None = None
    limit_lo: float = 0.0  # prices outside [limit_lo, limit_hi] are flagged (0, inf: none)
    limit_hi: float = math.inf
    source: str = ""
    day_true: bool = False  # the daily bar carries the source's own day figures
    # closed minute bars, 7 doubles each (start, o, h, l, c, volume, amount): ~56 B a bar
    # instead of ~330 B as Bar objects; Bars are built only when a snapshot asks
    minutes: array[float] = field(default_factory=lambda: array("d"))
    held_since: float = 0.0  # memory holds every minute bar of ``day`` from here on (older: the store)
    marks: dict[float, Mark] | None = None  # revised minutes held (by start): a side map, few entries
    day_revision: int = 0  # the daily bar's revisions by repairs
