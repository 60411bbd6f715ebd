"""Gap repair in the bars: a provider's minute history (``HistoryBars``) merged into a
symbol's minute and daily bars, in record order with its ticks (``BarAggregator.fold``).

- pending / failed / out_of_reach: every minute bar of [start, end) not already repaired
  or partial becomes ``incomplete`` (revision + 1);
- repaired: the provider's bar of each minute of the window replaces ours (``repaired``,
  its source, revision + 1) or is added (revision 0); a minute we have that the provider
  lacks keeps our figures and becomes ``incomplete`` (the sources disagree). With close,
  volume and amount only (Tencent): open is ours (or the close), high/low ours widened by
  the close, ``partial``;
- a daily bar aggregated from the ticks (Alpaca) moves by each replaced minute's
  difference (volume, amount; high/low widened); one with the source's own day figures is
  left alone;
- minutes outside [start, end) are never touched; a merge that changes nothing (a replay)
  revises nothing.

Memory holds a symbol's minutes of its day from ``held_since`` on; the older ones are read
from the store by the intake before the fold (``StoredWindow``) and revised as rows only.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, NamedTuple

from services.datamanager.bar_state import (
    AGGREGATED,
    FINAL_QUALITIES,
    MAX_QUANTITY,
    MINUTE_FIELDS,
    BarRow,
    Mark,
    Ohlcv,
    SymbolBars,
    shared_mark,
)
from shared.dto import HISTORY_FIELDS, HistoryBars
from shared.symbols import MARKET_TIMEZONES, Market, market_of

FULL_FIELDS = frozenset(HISTORY_FIELDS)
DAY_MS = 93_600_000  # a day and two hours: a daily bar's start is at most this before its minutes

Figures = tuple[float, float, float, float, float, float]  # open, high, low, close, volume, amount
BarKey = tuple[str, str, int]  # symbol, period, start (epoch ms)


class StoredWindow:
    """Stored rows of the windows memory does not hold (minutes and their days' bars),
    read before the fold; a merge revises them as rows."""

    def __init__(self, rows: list[BarRow] | None = None) -> None:
        self.minutes: dict[str, dict[int, BarRow]] = {}
        self.days: dict[tuple[str, date], BarRow] = {}
        self.add(rows or [])

    def add(self, rows: list[BarRow]) -> None:
        """Rows in order: a later row of the same bar replaces an earlier one."""
        for r in rows:
            if r.period == "1m":
                self.minutes.setdefault(r.symbol, {})[r.start_ms] = r
            elif r.period == "1d":
                self.days[(r.symbol, r.trading_day)] = r

    def __len__(self) -> int:
        return sum(len(m) for m in self.minutes.values()) + len(self.days)


@dataclass(slots=True)
class RepairOutcome:
    """What merging one HistoryBars did to its symbol's window (minute counts)."""

    symbol: str
    state: str  # pending, failed, out_of_reach, repaired, or partial (close/volume/amount only)
    source: str
    request_id: str | None
    start: float  # window, epoch s
    end: float
    reason: str | None = None
    replaced: int = 0  # minutes whose figures are the provider's now
    added: int = 0  # minutes the provider had and we lacked
    incomplete: int = 0  # minutes of the window not known to be right
    revised: dict[str, int] = field(default_factory=dict)  # bars revised (stored anew), by quality

    @property
    def final(self) -> bool:
        return self.state in ("repaired", "partial", "out_of_reach")


class _Ours(NamedTuple):
    figures: Figures
    quality: str
    revision: int
    source: str
    row: BarRow | None  # the stored row (a minute memory does not hold), None: held


def _day_of(epoch: float, market: Market) -> date:
    return datetime.fromtimestamp(epoch, MARKET_TIMEZONES[market]).date()


class RepairMerge:
    """The merge half of ``BarAggregator`` (a mixin: the state is the aggregator's)."""

    _symbols: dict[str, SymbolBars]
    _closed: list[BarRow]
    _dirty: set[str]
    _revised: set[BarKey]
    max_price: float

    if TYPE_CHECKING:  # the aggregator's own

        def _reject(self, reason: str) -> str: ...
        def _row(self, symbol: str, st: SymbolBars, o: Ohlcv, period: str) -> BarRow: ...
        def _close_minute(self, symbol: str, st: SymbolBars) -> None: ...

    def take_revised(self) -> set[BarKey]:
        """The bars revised by repairs since the last call (to publish once stored)."""
        out, self._revised = self._revised, set()
        return out

    def stored_span(self, h: HistoryBars) -> tuple[int, int] | None:
        """The part of ``h``'s window (epoch ms) memory may not hold, to read from the store
        before folding ``h``; None when memory holds it all."""
        start, end = h.start.timestamp(), h.end.timestamp()
        st = self._symbols.get(h.symbol)
        if st is not None and st.day is not None and max(st.held_since, st.day_start) <= start and end <= st.day_end:
            return None
        return round(start * 1000), round(end * 1000)

    def incomplete_held(self) -> dict[str, list[float]]:
        """Minute starts of the ``incomplete`` minutes memory holds, per symbol."""
        out: dict[str, list[float]] = {}
        for symbol, st in self._symbols.items():
            if st.marks:
                found = sorted(s for s, m in st.marks.items() if m.quality == "incomplete")
                if found:
                    out[symbol] = found
        return out

    def newest_tick_per_market(self) -> dict[Market, float]:
        """Epoch s of the newest tick held per market (markets without one are absent)."""
        out: dict[Market, float] = {}
        for st in self._symbols.values():
            if st.last_ts > out.get(st.market, 0.0):
                out[st.market] = st.last_ts
        return out

    def held_from(self, symbol: str) -> tuple[date | None, float]:
        """The day memory holds for ``symbol`` and the minute start it holds it from."""
        st = self._symbols.get(symbol)
        if st is None or st.day is None:
            return None, math.inf
        return st.day, max(st.held_since, st.day_start)

    def on_history(
        self, h: HistoryBars, prior: StoredWindow | None = None, partition: int = -1, offset: int = -1
    ) -> RepairOutcome | str:
        """Merge one HistoryBars; its outcome, or a rejection reason."""
        symbol = h.symbol
        try:
            market = market_of(symbol)
        except ValueError:
            return self._reject("history_bad_symbol")
        start, end = h.start.timestamp(), h.end.timestamp()
        if not start < end:
            return self._reject("history_bad_window")
        full = FULL_FIELDS.issubset(h.fields)
        if h.state == "repaired" and "close" not in h.fields:
            return self._reject("history_fields")
        quality = "repaired" if full else "partial"
        out = RepairOutcome(
            symbol, quality if h.state == "repaired" else h.state, h.source, h.request_id, start, end, h.reason
        )
        st = self._symbols.get(symbol)
        if st is not None and offset >= 0 and partition == st.last_partition and offset <= st.last_offset:
            out.reason = "redelivered: merged and stored before"  # a tick after it was stored
            return out
        ours = self._ours(symbol, st, start, end, prior)
        if h.state != "repaired":
            for s in sorted(ours):
                m = ours[s]
                if m.quality in FINAL_QUALITIES:
                    continue
                out.incomplete += 1
                if m.quality != "incomplete":
                    self._put(
                        symbol,
                        market,
                        st,
                        s,
                        m.figures,
                        Mark("incomplete", m.revision + 1, m.source),
                        m,
                        out,
                        partition,
                    )
            return out
        provided = self._provided(h, start, end)
        days: dict[date, list[float]] = {}  # day → volume, amount, high, low moved by the replaced minutes
        for s in sorted(provided):
            had = ours.get(s)
            figures = _figures(provided[s], had, h.fields, full)
            if had is None:
                out.added += 1
            else:
                out.replaced += 1
                if had.figures == figures and had.quality == quality and had.source == h.source:
                    continue  # already so (a replay): nothing revised
            self._put(
                symbol,
                market,
                st,
                s,
                figures,
                Mark(quality, had.revision + 1 if had else 0, h.source),
                had,
                out,
                partition,
            )
            old = had.figures if had is not None else (0.0, 0.0, math.inf, 0.0, 0.0, 0.0)
            d = days.setdefault(_day_of(s, market), [0.0, 0.0, 0.0, math.inf])
            d[0] += figures[4] - old[4]
            d[1] += figures[5] - old[5]
            d[2] = max(d[2], figures[1])
            d[3] = min(d[3], figures[2])
        for s in sorted(ours):
            if s in provided:
                continue
            m = ours[s]
            out.incomplete += 1  # we have it, the provider has not: the sources disagree
            if m.quality != "incomplete":
                self._put(
                    symbol, market, st, s, m.figures, Mark("incomplete", m.revision + 1, m.source), m, out, partition
                )
        for day, (dv, da, high, low) in days.items():
            self._move_day(symbol, st, day, dv, da, high, low, prior)
        return out

    def _provided(self, h: HistoryBars, start: float, end: float) -> dict[float, tuple[float, ...]]:
        """The provider's minutes of the window by start (epoch s); a bad row is skipped."""
        idx = [i + 1 for i, f in enumerate(HISTORY_FIELDS) if f in h.fields]
        out: dict[float, tuple[float, ...]] = {}
        for row in h.bars:
            s = row[0] / 1000.0
            s -= s % 60.0
            if not start <= s < end:
                continue  # outside the window: never touched
            if not all(_plausible(row[i], i, self.max_price) for i in idx):
                self._reject("history_bad_bar")
                continue
            out[s] = row
        return out

    def _ours(
        self, symbol: str, st: SymbolBars | None, start: float, end: float, prior: StoredWindow | None
    ) -> dict[float, _Ours]:
        """Our minute bars of [start, end): memory's where it holds them, else the store's."""
        out: dict[float, _Ours] = {}
        held_lo, held_hi = math.inf, -math.inf
        if st is not None and st.day is not None:
            held_lo, held_hi = max(st.held_since, st.day_start), st.day_end
            marks = st.marks or {}
            ms = st.minutes
            for i in range(len(ms) - MINUTE_FIELDS, -1, -MINUTE_FIELDS):
                s = ms[i]
                if s < start:
                    break
                if s < end:
                    out[s] = self._held(st, s, ms[i + 1 : i + MINUTE_FIELDS], marks)
            m = st.minute
            if m is not None and start <= m.start < end:
                out[m.start] = self._held(st, m.start, (m.open, m.high, m.low, m.close, m.volume, m.amount), marks)
        if prior is not None:
            for start_ms, r in prior.minutes.get(symbol, {}).items():
                s = start_ms / 1000.0
                if start <= s < end and not held_lo <= s < held_hi:
                    out[s] = _Ours(
                        (r.open, r.high, r.low, r.close, r.volume, r.amount), r.quality, r.revision, r.source, r
                    )
        return out

    @staticmethod
    def _held(st: SymbolBars, s: float, f: array[float] | tuple[float, ...], marks: dict[float, Mark]) -> _Ours:
        mark = marks.get(s)
        figures: Figures = (f[0], f[1], f[2], f[3], f[4], f[5])
        if mark is None:
            return _Ours(figures, "", 0, st.source, None)
        return _Ours(figures, mark.quality, mark.revision, mark.source, None)

    def _put(
        self,
        symbol: str,
        market: Market,
        st: SymbolBars | None,
        s: float,
        f: Figures,
        mark: Mark,
        ours: _Ours | None,
        out: RepairOutcome,
        partition: int,
    ) -> None:
        """Give minute ``s`` figures ``f`` and ``mark``: in memory where it is held (or
        belongs, when added), as a stored row otherwise."""
        out.revised[mark.quality] = out.revised.get(mark.quality, 0) + 1
        start_ms = round(s * 1000)
        self._revised.add((symbol, "1m", start_ms))
        held = st is not None and st.day is not None and max(st.held_since, st.day_start) <= s < st.day_end
        if st is None or not held or (ours is not None and ours.row is not None):
            if ours is not None and ours.row is not None:
                row = ours.row._replace(
                    open=f[0], high=f[1], low=f[2], close=f[3], volume=f[4], amount=round(f[5], 4),
                    source=mark.source, quality=mark.quality, revision=mark.revision,
                )  # fmt: skip
            else:
                row = BarRow(
                    symbol, "1m", start_ms, _day_of(s, market), *f[:5], round(f[5], 4), None, mark.source,
                    0, partition, -1, None, None, mark.quality, mark.revision,
                )  # fmt: skip
            self._closed.append(row)
            return
        if st.marks is None:
            st.marks = {}
        st.marks[s] = shared_mark(mark)
        m = st.minute
        if m is not None and m.start == s:  # the open minute: replaced the same way
            m.open, m.high, m.low, m.close, m.volume, m.amount = f
            self._dirty.add(symbol)
            return
        ms = st.minutes
        for i in range(len(ms) - MINUTE_FIELDS, -1, -MINUTE_FIELDS):
            if ms[i] == s:
                ms[i + 1 : i + MINUTE_FIELDS] = array("d", f)
                self._closed.append(self._row(symbol, st, Ohlcv(s, *f), "1m"))
                return
        # added: after the open minute (no tick of it yet) the open one closes first
        if m is not None and s > m.start:
            self._close_minute(symbol, st)
        i = len(ms)
        while i > 0 and ms[i - MINUTE_FIELDS] > s:
            i -= MINUTE_FIELDS
        ms[i:i] = array("d", (s, *f))
        self._closed.append(self._row(symbol, st, Ohlcv(s, *f), "1m"))

    def _move_day(
        self,
        symbol: str,
        st: SymbolBars | None,
        day: date,
        dv: float,
        da: float,
        high: float,
        low: float,
        prior: StoredWindow | None,
    ) -> None:
        """A daily bar aggregated from the ticks follows its replaced minutes."""
        if st is not None and st.day == day:
            d = st.daily
            if d is None or st.day_true:
                return  # the source's own day figures are the truth
            d.volume = max(0.0, d.volume + dv)
            d.amount = max(0.0, d.amount + da)
            d.high = max(d.high, high)
            d.low = min(d.low, low)
            st.day_revision += 1
            self._dirty.add(symbol)
            self._revised.add((symbol, "1d", round(st.day_start * 1000)))
            return
        if prior is None:
            return
        r = prior.days.get((symbol, day))
        if r is None or not r.source.endswith(AGGREGATED):
            return
        r = r._replace(
            volume=max(0.0, r.volume + dv),
            amount=round(max(0.0, r.amount + da), 4),
            high=max(r.high, high),
            low=min(r.low, low),
            revision=r.revision + 1,
        )
        prior.days[(symbol, day)] = r
        self._closed.append(r)
        self._revised.add((symbol, "1d", r.start_ms))


def _plausible(value: float, index: int, max_price: float) -> bool:
    if index <= 4:  # a price
        return 0.0 < value <= max_price
    return 0.0 <= value <= MAX_QUANTITY


def _figures(row: tuple[float, ...], ours: _Ours | None, fields: tuple[str, ...], full: bool) -> Figures:
    """The minute's figures after the provider's: all of its own, or (partial) the close,
    volume and amount it gives with open/high/low from ours, widened by the close."""
    _, o, hi, lo, c, v, a = row
    if not full:
        mine = ours.figures if ours is not None else None
        if "volume" not in fields:
            v = mine[4] if mine else 0.0
        if "amount" not in fields:
            a = mine[5] if mine else v * c
        if "open" not in fields:
            o = mine[0] if mine else c
        if "high" not in fields:
            hi = max(mine[1], c) if mine else c
        if "low" not in fields:
            lo = min(mine[2], c) if mine else c
    return o, max(hi, o, c), min(lo, o, c), c, v, a
