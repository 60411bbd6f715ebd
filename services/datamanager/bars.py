"""Ticks → 1-minute and daily bars per symbol, days cut in the market's timezone.

Volume per bar: snapshot sources carry the day's CUMULATIVE volume/amount, which are
differenced per symbol (a decrease means a correction or a late tick: that tick adds
nothing); trade streams carry ``last_size``, which is summed. Where a source reports the
day's open/high/low and cumulative volume (EastMoney, Tencent, FuShu), the daily bar takes
those figures, so a datamanager that starts late still reports the exchange's day; where
it does not (Alpaca trades), the day is aggregated from the ticks seen and its ``source``
says so (``alpaca/aggregated``).

Minute bars close on a timer (``close_due``) at their end, so the last bar before a break
is not left open and a break gets no empty bars (bars exist only where ticks are). A tick
older than its symbol's newest by at most ``late_grace_s`` revises the bar it falls in; an
older one is ignored and counted (``late``). Redeliveries are recognised by the record's
(partition, offset) against the newest folded into the symbol, so a replay after a crash
never counts a trade twice. Every changed bar is marked for the store (``drain``).

A provider's minute history (HistoryBars, gap repair) folds in the same call: the merge
lives in repair.py (``RepairMerge``); a minute it made ``repaired`` or ``partial`` keeps the
provider's figures (ticks for it are counted ``repaired_minute``), one it marked
``incomplete`` still takes late ticks.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, Protocol

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
from services.datamanager.quality import LIMIT_SLACK, board_limit
from services.datamanager.repair import RepairMerge, RepairOutcome, StoredWindow
from shared.dto import Bar, HistoryBars, Message, PriceUpdate, TradeCorrection
from shared.symbols import MARKET_TIMEZONES, market_of

__all__ = ["AGGREGATED", "MAX_QUANTITY", "BarAggregator", "BarRow", "FoldReport", "PriceLimitFlag", "row_bar"]


def _implausible(t: PriceUpdate, max_price: float) -> bool:
    """A number no source can mean: a side or day price outside 0..max_price, a quantity
    outside 0..MAX_QUANTITY (NaN fails both). One such tick is dropped, not folded: a day
    high of 1e308 or a cumulative volume of 1e308 would stick for the rest of the day."""
    for p in (t.high_price, t.low_price, t.open_price, t.bid_price, t.ask_price, t.prev_close):
        if p is not None and not 0.0 <= p <= max_price:
            return True
    for q in (t.volume, t.amount, t.last_size, t.bid_volume, t.ask_volume):
        if q is not None and not 0.0 <= q <= MAX_QUANTITY:
            return True
    return False


class PriceLimitFlag(NamedTuple):
    """A price beyond its board's daily limit from the previous close (flagged, kept)."""

    symbol: str
    price: float
    prev_close: float


class Folded(Protocol):
    """Where a folded message came from (a consumer record): redeliveries are told by it."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(slots=True)
class FoldReport:
    """What ``BarAggregator.fold`` did with one batch."""

    rejected: dict[str, int] = field(default_factory=dict)  # reason → ticks dropped
    flags: list[PriceLimitFlag] = field(default_factory=list)
    newest: dict[str, float] = field(default_factory=dict)  # source → provider time (epoch s) of its newest tick
    failed: list[tuple[Any, Exception]] = field(default_factory=list)  # (record, what its folding raised)
    repairs: list[RepairOutcome] = field(default_factory=list)  # what each HistoryBars did


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class BarAggregator(RepairMerge):
    """In-memory bars for today; ``on_tick`` returns a rejection reason or None.

    ``fold(records, clock_limit)`` folds one consumed batch and reports what happened to
    it: rejections by reason, moves beyond the board's limit (``PriceLimitFlag``), each
    source's newest provider time, and the records whose folding raised. Ticks stamped
    after ``clock_limit`` (epoch s) are rejected (``future_timestamp``), ticks stamped
    before ``clock_floor`` too (``past_timestamp``: a tick dated 1990 must not make bars for
    that day). ``on_tick`` and ``on_correction`` fold one message outside a batch (no clock
    limits).
    """

    def __init__(
        self,
        minute_history: int = 120,
        late_grace_s: float = 10.0,
        max_price: float = 1e9,
        st_symbols: frozenset[str] = frozenset(),
        no_limit_symbols: frozenset[str] = frozenset(),
    ) -> None:
        self.minute_history = minute_history
        self.late_grace_s = late_grace_s
        self.max_price = max_price
        self.st_symbols = st_symbols
        self.no_limit_symbols = no_limit_symbols
        self._clock_limit = math.inf  # set by fold for its batch
        self._clock_floor = -math.inf
        self._symbols: dict[str, SymbolBars] = {}
        self._open_minutes: dict[float, set[str]] = {}
        self._dirty: set[str] = set()  # daily / open minute changed since the last drain
        self._closed: list[BarRow] = []  # minute bars closed or revised since the last drain
        self._revised: set[tuple[str, str, int]] = set()  # bars revised by repairs since take_revised
        self.rejected: dict[str, int] = {}
        self._flags: list[PriceLimitFlag] = []  # the batch's, handed over by fold
        self.ticks = 0
        self.revisions = 0
        self.corrections = 0  # trade corrections and cancels applied

    def _state(self, symbol: str) -> SymbolBars:
        st = self._symbols.get(symbol)
        if st is None:
            market = market_of(symbol)  # SymbolError for a symbol of no market
            limit = board_limit(symbol, symbol in self.st_symbols, symbol in self.no_limit_symbols)
            st = self._symbols[symbol] = SymbolBars(market, limit)
        return st

    def _reject(self, reason: str) -> str:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def _set_prev_close(self, st: SymbolBars, prev: float | None) -> None:
        st.prev_close = prev
        if prev and st.limit is not None:
            st.limit_lo = prev * (1.0 - st.limit - LIMIT_SLACK)
            st.limit_hi = prev * (1.0 + st.limit + LIMIT_SLACK)
        else:
            st.limit_lo, st.limit_hi = 0.0, math.inf

    def on_tick(self, t: PriceUpdate, partition: int = -1, offset: int = -1) -> str | None:
        # The hot path of the datamanager: locals and inlined updates on purpose.
        price = t.price
        if not 0.0 < price <= self.max_price:  # also NaN and inf
            return self._reject("non_positive_price" if price <= 0.0 else "bad_price")
        volume = t.volume
        size = t.last_size
        if (volume is not None and not volume >= 0) or (size is not None and not size >= 0):
            return self._reject("negative_volume")
        if _implausible(t, self.max_price):
            return self._reject("bad_number")
        if t.snapshot:
            return self._reject("snapshot_replay")  # our own replay of a latest price
        symbol = t.symbol
        note = None
        st = self._symbols.get(symbol)
        if st is None:
            st = self._state(symbol)
        if offset >= 0:
            if partition == st.last_partition and offset <= st.last_offset:
                return self._reject("redelivered")
            st.last_partition, st.last_offset = partition, offset
        ts = t.timestamp.timestamp()
        if ts > self._clock_limit:
            return self._reject("future_timestamp")
        if ts < self._clock_floor:
            return self._reject("past_timestamp")
        if ts <= st.last_ts:
            if ts < st.last_ts:
                if ts < st.last_ts - self.late_grace_s:
                    return self._reject("late")
                return self._late(t, st, ts)
            if price == st.last_price and volume == st.last_cum_volume and size == st.last_size:
                return self._reject("duplicate")
        if ts >= st.day_end:
            self._new_day(symbol, st, ts)
        if t.prev_close is not None and t.prev_close != st.prev_close and t.prev_close > 0:
            self._set_prev_close(st, t.prev_close)
        if price > st.limit_hi or price < st.limit_lo:
            self._flags.append(PriceLimitFlag(symbol, price, st.prev_close or 0.0))
        # volume and amount traded since the previous tick
        if volume is not None:
            prev = st.last_cum_volume
            dv = volume - prev if prev is not None and volume >= prev else 0.0
            st.last_cum_volume = volume
            amount = t.amount
            if amount is not None:
                prev_a = st.last_cum_amount
                da = amount - prev_a if prev_a is not None and amount >= prev_a else 0.0
                st.last_cum_amount = amount
            else:
                da = dv * price
        else:
            amount = None
            dv = size or 0.0
            da = dv * price
        st.last_ts = ts
        st.last_price = price
        st.last_size = size
        st.last_tick = t
        st.source = t.source
        minute_start = ts - ts % 60.0
        m = st.minute
        if m is not None and m.start == minute_start:
            if price > m.high:
                m.high = price
            elif price < m.low:
                m.low = price
            m.close = price
            m.volume += dv
            m.amount += da
        elif not self._open_minute(symbol, st, minute_start, price, dv, da):
            # a repaired minute keeps the provider's figures (and the day they moved)
            dv = da = 0.0
            note = self._reject("repaired_minute")
        d = st.daily
        opening = t.open_price
        if d is None:
            st.day_true = opening is not None and volume is not None
            first = opening if opening is not None else price
            st.daily = d = Ohlcv(st.day_start, first, max(first, price), min(first, price), price)
        elif opening is not None and st.day_true:
            d.open = opening  # the source's day open is the truth
        high = t.high_price
        if high is None or high < price:
            high = price
        d.high = max(d.high, high)
        low = t.low_price
        if low is None or low <= 0 or low > price:
            low = price
        d.low = min(d.low, low)
        d.close = price
        if volume is not None:  # the day's cumulative figures are the truth when known
            d.volume = volume
            d.amount = amount if amount is not None else d.amount + da
        else:
            d.volume += dv
            d.amount += da
        self._dirty.add(symbol)
        self.ticks += 1
        return note

    def _open_minute(self, symbol: str, st: SymbolBars, start: float, price: float, dv: float, da: float) -> bool:
        """A tick in a minute other than the open one: close that and open this one (or,
        behind minutes a repair added, revise the closed one); False if it is repaired."""
        marks = st.marks
        if marks and start in marks and marks[start].quality in FINAL_QUALITIES:
            return False
        ms = st.minutes
        if ms and ms[-MINUTE_FIELDS] >= start:  # a repair added minutes beyond our ticks
            self._revise_closed(symbol, st, start, price, dv, da)
            return True
        if st.minute is not None:
            self._close_minute(symbol, st)
        st.minute = Ohlcv(start, price, price, price, price, dv, da)
        self._open_minutes.setdefault(start, set()).add(symbol)
        return True

    def _late(self, t: PriceUpdate, st: SymbolBars, ts: float) -> str | None:
        """A tick within the grace behind its symbol's newest: revise the bar it falls in."""
        symbol = t.symbol
        price = t.price
        if ts < st.day_start or st.daily is None:
            return self._reject("late")  # yesterday's, once today has begun
        volume = t.volume
        if volume is not None:
            dv = da = 0.0  # cumulative figures behind the newest add nothing
        else:
            dv = t.last_size or 0.0
            da = dv * price
        minute_start = ts - ts % 60.0
        if st.marks and minute_start in st.marks and st.marks[minute_start].quality in FINAL_QUALITIES:
            return self._reject("repaired_minute")
        m = st.minute
        if m is not None and m.start == minute_start:
            m.high = max(m.high, price)
            m.low = min(m.low, price)
            m.volume += dv
            m.amount += da
        elif not self._revise_closed(symbol, st, minute_start, price, dv, da):
            return self._reject("late")
        d = st.daily
        d.high = max(d.high, price)
        d.low = min(d.low, price)
        if volume is None:
            d.volume += dv
            d.amount += da
        self._dirty.add(symbol)
        self.revisions += 1
        self.ticks += 1
        return None

    def _revise_closed(
        self, symbol: str, st: SymbolBars, start: float, price: float | None, dv: float, da: float
    ) -> bool:
        """Revise the closed minute bar at ``start`` (``price`` None: volumes only); a late
        tick (price given) in a minute without a bar inserts one."""
        ms = st.minutes
        for i in range(len(ms) - MINUTE_FIELDS, -1, -MINUTE_FIELDS):
            if ms[i] == start:
                if price is not None:
                    ms[i + 2] = max(ms[i + 2], price)
                    ms[i + 3] = min(ms[i + 3], price)
                ms[i + 5] = max(0.0, ms[i + 5] + dv)
                ms[i + 6] = max(0.0, ms[i + 6] + da)
                self._closed.append(self._row(symbol, st, Ohlcv(*ms[i : i + MINUTE_FIELDS]), "1m"))
                return True
            if ms[i] < start:  # no bar in that minute yet: insert one in order
                if price is None:
                    return False
                j = i + MINUTE_FIELDS
                ms[j:j] = array("d", (start, price, price, price, price, dv, da))
                self._closed.append(self._row(symbol, st, Ohlcv(start, price, price, price, price, dv, da), "1m"))
                return True
        return False

    def on_correction(self, c: TradeCorrection) -> str | None:
        """A trade counted earlier was corrected or cancelled: take its size and turnover
        out of the minute and daily bars it fell in and, unless cancelled, put the
        corrected ones in. High/low only widen (the trades behind a bar are not kept, so a
        cancelled extreme stays); returns a rejection reason or None."""
        st = self._symbols.get(c.symbol)
        if st is None or st.daily is None:
            return self._reject("correction_unknown_symbol")
        ts = c.timestamp.timestamp()
        if not st.day_start <= ts < st.day_end:
            return self._reject("correction_other_day")
        new_size = 0.0 if c.cancelled else (c.corrected_size if c.corrected_size is not None else c.original_size)
        new_price = c.original_price if c.cancelled else (c.corrected_price or c.original_price)
        dv = new_size - c.original_size
        da = new_size * new_price - c.original_size * c.original_price
        price = new_price if not c.cancelled else None
        minute_start = ts - ts % 60.0
        if st.marks and minute_start in st.marks and st.marks[minute_start].quality in FINAL_QUALITIES:
            return self._reject("repaired_minute")  # the provider's figures include the exchange's correction
        m = st.minute
        if m is not None and m.start == minute_start:
            m.volume = max(0.0, m.volume + dv)
            m.amount = max(0.0, m.amount + da)
            if price is not None:
                m.high, m.low = max(m.high, price), min(m.low, price)
        elif not self._revise_closed(symbol=c.symbol, st=st, start=minute_start, price=price, dv=dv, da=da):
            return self._reject("correction_bar_gone")
        if not st.day_true:  # a source's own day figures already include the exchange's correction
            d = st.daily
            d.volume = max(0.0, d.volume + dv)
            d.amount = max(0.0, d.amount + da)
            if price is not None:
                d.high, d.low = max(d.high, price), min(d.low, price)
        self._dirty.add(c.symbol)
        self.corrections += 1
        return None

    def fold(
        self,
        records: Iterable[tuple[Folded, Message]],
        clock_limit: float,
        clock_floor: float = -math.inf,
        stored: StoredWindow | None = None,
    ) -> FoldReport:
        """Fold one consumed batch of (record, message) in order; never raises for one
        record. ``stored``: what the store holds of the windows of the batch's HistoryBars
        that memory does not (``stored_span``)."""
        report = FoldReport()
        rejected = report.rejected
        newest = report.newest
        on_tick = self.on_tick
        self._clock_limit = clock_limit
        self._clock_floor = clock_floor
        self._flags = report.flags
        try:
            for rec, msg in records:
                try:
                    if type(msg) is PriceUpdate:
                        reason = on_tick(msg, rec.partition, rec.offset)
                        if reason is None:
                            newest[msg.source] = msg.timestamp.timestamp()
                            continue
                    elif type(msg) is TradeCorrection:
                        reason = self.on_correction(msg)
                        if reason is None:
                            continue
                    elif type(msg) is HistoryBars:
                        outcome = self.on_history(msg, stored, rec.partition, rec.offset)
                        if not isinstance(outcome, str):
                            report.repairs.append(outcome)
                            continue
                        reason = outcome
                    else:
                        continue  # the consumer's inbox passes only ticks, corrections and history
                except Exception as e:
                    report.failed.append((rec, e))
                    continue
                rejected[reason] = rejected.get(reason, 0) + 1
        finally:
            self._clock_limit = math.inf
            self._clock_floor = -math.inf
            self._flags = []
        return report

    def _new_day(self, symbol: str, st: SymbolBars, ts: float) -> None:
        if st.minute is not None:
            self._close_minute(symbol, st)
        tz = MARKET_TIMEZONES[st.market]
        local = datetime.fromtimestamp(ts, tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if st.daily is not None:
            self._set_prev_close(st, st.daily.close)
        st.day = local.date()
        st.day_start = midnight.timestamp()
        st.day_end = (midnight + timedelta(days=1)).replace(tzinfo=tz).timestamp()
        st.daily = None
        st.last_cum_volume = st.last_cum_amount = None
        del st.minutes[:]
        st.held_since, st.marks, st.day_revision = st.day_start, None, 0

    def _close_minute(self, symbol: str, st: SymbolBars) -> None:
        m = st.minute
        if m is None:
            return
        st.minute = None
        opened = self._open_minutes.get(m.start)
        if opened is not None:
            opened.discard(symbol)
            if not opened:
                del self._open_minutes[m.start]
        st.minutes.extend((m.start, m.open, m.high, m.low, m.close, m.volume, m.amount))
        self._closed.append(self._row(symbol, st, m, "1m"))
        excess = len(st.minutes) - self.minute_history * MINUTE_FIELDS
        if excess > 0:
            st.held_since = st.minutes[excess - MINUTE_FIELDS] + 60.0  # older minutes: the store's
            del st.minutes[:excess]
            if st.marks:
                st.marks = {s: mk for s, mk in st.marks.items() if s >= st.held_since} or None

    def close_due(self, now: datetime) -> int:
        """Close minute bars whose minute has ended by ``now``; returns how many."""
        cutoff = now.timestamp() - 60.0
        closed = 0
        for start in sorted(s for s in self._open_minutes if s <= cutoff):
            for symbol in list(self._open_minutes.get(start, ())):
                self._close_minute(symbol, self._symbols[symbol])
                closed += 1
        return closed

    # -- the store's view -----------------------------------------------------------------

    def _row(self, symbol: str, st: SymbolBars, o: Ohlcv, period: str) -> BarRow:
        daily = period == "1d"
        source = st.source + AGGREGATED if daily and not st.day_true else st.source
        quality, revision = "", st.day_revision if daily else 0
        if not daily and st.marks:
            mark = st.marks.get(o.start)
            if mark is not None:
                quality, revision, source = mark
        return BarRow(
            symbol,
            period,
            round(o.start * 1000),
            st.day or date(1970, 1, 1),
            o.open,
            o.high,
            o.low,
            o.close,
            o.volume,
            round(o.amount, 4),
            st.prev_close,
            source,
            round(st.last_ts * 1000),
            st.last_partition,
            st.last_offset,
            st.last_cum_volume,
            st.last_cum_amount,
            quality,
            revision,
        )

    def drain(self) -> list[BarRow]:
        """Every bar changed since the last drain, latest state (closed minutes, open
        minutes and daily bars of symbols that ticked)."""
        rows, self._closed = self._closed, []
        for symbol in self._dirty:
            st = self._symbols.get(symbol)
            if st is None:
                continue
            if st.minute is not None:
                rows.append(self._row(symbol, st, st.minute, "1m"))
            if st.daily is not None:
                rows.append(self._row(symbol, st, st.daily, "1d"))
        self._dirty.clear()
        return rows

    def latest_ticks(self, symbols: set[str] | None = None) -> list[PriceUpdate]:
        """The newest accepted tick of ``symbols`` (default: those changed since drain)."""
        out = []
        for s in self._dirty if symbols is None else symbols:
            st = self._symbols.get(s)
            if st is not None and st.last_tick is not None:
                out.append(st.last_tick)
        return out

    def last_tick_time(self, symbol: str) -> float:
        """Epoch seconds of the symbol's newest tick (0 if none)."""
        st = self._symbols.get(symbol)
        return st.last_ts if st is not None else 0.0

    def restore(self, rows: list[BarRow]) -> int:
        """Resume from stored rows: each symbol's daily bar and its newest minute bar (memory
        holds the day's minutes from that one on; the older ones stay in the store)."""
        restored = 0
        for r in sorted(rows, key=lambda r: (r.period != "1d", -r.start_ms)):  # newest minute first
            try:
                st = self._state(r.symbol)
            except ValueError:
                continue
            if r.period == "1d":
                tz = MARKET_TIMEZONES[st.market]
                st.day = r.trading_day
                st.day_start = r.start_ms / 1000.0
                midnight = datetime.fromtimestamp(st.day_start, tz)
                st.day_end = (midnight + timedelta(days=1)).replace(tzinfo=tz).timestamp()
                st.daily = Ohlcv(st.day_start, r.open, r.high, r.low, r.close, r.volume, r.amount)
                self._set_prev_close(st, r.prev_close)
                st.day_true = not r.source.endswith(AGGREGATED)
                st.source = r.source.removesuffix(AGGREGATED)
                st.last_ts = r.last_tick_ms / 1000.0
                st.last_price = r.close
                st.last_partition, st.last_offset = r.tick_partition, r.tick_offset
                st.last_cum_volume, st.last_cum_amount = r.cum_volume, r.cum_amount
                st.held_since, st.day_revision = st.day_start, r.revision
                restored += 1
            elif st.day == r.trading_day and st.minute is None:
                start = r.start_ms / 1000.0
                st.minute = Ohlcv(start, r.open, r.high, r.low, r.close, r.volume, r.amount)
                self._open_minutes.setdefault(start, set()).add(r.symbol)
                st.held_since = start  # the older minutes stay in the store
                if r.quality:
                    st.marks = {start: shared_mark(Mark(r.quality, r.revision, r.source))}
        return restored

    # -- bars for snapshots -----------------------------------------------------------------

    def _bar(self, symbol: str, st: SymbolBars, o: Ohlcv, period: str) -> Bar:
        return row_bar(self._row(symbol, st, o, period))

    def daily_bar(self, symbol: str, day: date | None = None) -> Bar | None:
        """Today's (or ``day``'s, if it is the day held) daily bar of a symbol so far."""
        st = self._symbols.get(symbol)
        if st is None or st.daily is None or (day is not None and st.day != day):
            return None
        return self._bar(symbol, st, st.daily, "1d")

    def minute_bars(self, symbol: str, day: date | None = None) -> list[Bar]:
        """Closed minute bars held for a symbol, plus the open one."""
        st = self._symbols.get(symbol)
        if st is None or (day is not None and st.day != day):
            return []
        ms = st.minutes
        bars = [
            self._bar(symbol, st, Ohlcv(*ms[i : i + MINUTE_FIELDS]), "1m") for i in range(0, len(ms), MINUTE_FIELDS)
        ]
        if st.minute is not None:
            bars.append(self._bar(symbol, st, st.minute, "1m"))
        return bars

    @property
    def symbol_count(self) -> int:
        return len(self._symbols)


def row_bar(r: BarRow) -> Bar:
    """The wire bar of a stored row (change from its previous close)."""
    change = change_pct = None
    if r.period == "1d" and r.prev_close:
        change = round(r.close - r.prev_close, 6)
        change_pct = round(change / r.prev_close * 100.0, 4)
    return Bar(
        symbol=r.symbol,
        period=r.period,  # type: ignore[arg-type]
        open=r.open,
        high=r.high,
        low=r.low,
        close=r.close,
        volume=r.volume,
        amount=round(r.amount, 4),
        change=change,
        change_pct=change_pct,
        timestamp=_utc(r.start_ms / 1000.0),
        source=r.source,
        trading_day=r.trading_day.isoformat(),
        quality=r.quality or None,  # type: ignore[arg-type]
        revision=r.revision,
    )
