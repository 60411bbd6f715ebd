"""Ticks → 1-minute and daily bars per symbol, days cut in the market's timezone.

Volume per bar: snapshot sources carry the day's CUMULATIVE volume/amount, which are
differenced per symbol (a decrease means a correction or a new day: that tick adds
nothing); trade streams carry ``last_size``, which is summed. Minute bars are closed by
``close_due`` on a timer too, so the last bar before a break is not left open.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from shared.dto import Bar, PriceUpdate
from shared.symbols import MARKET_TIMEZONES, Market, market_of

_MINUTE_FIELDS = 7

# A move larger than this from the previous tick is implausible (dropped, counted).
JUMP_LIMITS: dict[Market, float] = {Market.CN: 0.21, Market.HK: 0.5, Market.US: 0.5}


@dataclass(slots=True)
class _Ohlcv:
    start: float  # epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    amount: float = 0.0


@dataclass(slots=True)
class _SymbolBars:
    market: Market
    jump_limit: float
    day: date | None = None
    day_start: float = 0.0  # epoch of the trading day's local midnight
    day_end: float = 0.0
    last_ts: float = 0.0
    last_price: float = 0.0
    last_size: float | None = None
    last_cum_volume: float | None = None
    last_cum_amount: float | None = None
    minute: _Ohlcv | None = None
    daily: _Ohlcv | None = None
    prev_close: float | None = None
    source: str = ""
    # closed minute bars, 7 doubles each (start, o, h, l, c, volume, amount): ~56 B a bar
    # instead of ~330 B as Bar objects; Bars are built only when a snapshot asks
    minutes: array[float] = field(default_factory=lambda: array("d"))


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class BarAggregator:
    """In-memory bars for today; ``on_tick`` returns a rejection reason or None."""

    def __init__(self, minute_history: int = 120) -> None:
        self.minute_history = minute_history
        self._symbols: dict[str, _SymbolBars] = {}
        self._open_minutes: dict[float, set[str]] = {}
        self.rejected: dict[str, int] = {}
        self.ticks = 0

    def _state(self, symbol: str) -> _SymbolBars:
        st = self._symbols.get(symbol)
        if st is None:
            market = market_of(symbol)
            st = self._symbols[symbol] = _SymbolBars(market, JUMP_LIMITS[market])
        return st

    def _reject(self, reason: str) -> str:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def on_tick(self, t: PriceUpdate) -> str | None:
        # The hot path of the datamanager: locals and inlined updates on purpose.
        price = t.price
        if not price > 0:
            return self._reject("non_positive_price")
        volume = t.volume
        size = t.last_size
        if (volume is not None and volume < 0) or (size is not None and size < 0):
            return self._reject("negative_volume")
        symbol = t.symbol
        st = self._symbols.get(symbol)
        if st is None:
            st = self._state(symbol)
        ts = t.timestamp.timestamp()
        if ts <= st.last_ts:
            if ts < st.last_ts:
                return self._reject("time_backwards")
            if price == st.last_price and volume == st.last_cum_volume and size == st.last_size:
                return self._reject("duplicate")
        last_price = st.last_price
        if last_price and abs(price / last_price - 1.0) > st.jump_limit:
            return self._reject("implausible_jump")
        if ts >= st.day_end:
            self._new_day(st, ts)
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
        else:
            if m is not None:
                self._close_minute(symbol, st)
            st.minute = _Ohlcv(minute_start, price, price, price, price, dv, da)
            self._open_minutes.setdefault(minute_start, set()).add(symbol)
        d = st.daily
        if d is None:
            opening = t.open_price if t.open_price is not None else price
            st.daily = d = _Ohlcv(st.day_start, opening, max(opening, price), min(opening, price), price)
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
        self.ticks += 1
        return None

    def _new_day(self, st: _SymbolBars, ts: float) -> None:
        tz = MARKET_TIMEZONES[st.market]
        local = datetime.fromtimestamp(ts, tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if st.daily is not None:
            st.prev_close = st.daily.close
        st.day = local.date()
        st.day_start = midnight.timestamp()
        st.day_end = (midnight + timedelta(days=1)).replace(tzinfo=tz).timestamp()
        st.daily = None
        st.last_cum_volume = st.last_cum_amount = None
        del st.minutes[:]

    def _close_minute(self, symbol: str, st: _SymbolBars) -> None:
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
        excess = len(st.minutes) - self.minute_history * _MINUTE_FIELDS
        if excess > 0:
            del st.minutes[:excess]

    def close_due(self, now: datetime) -> int:
        """Close minute bars whose minute has ended by ``now``; returns how many."""
        cutoff = now.timestamp() - 60.0
        closed = 0
        for start in sorted(s for s in self._open_minutes if s <= cutoff):
            for symbol in list(self._open_minutes.get(start, ())):
                self._close_minute(symbol, self._symbols[symbol])
                closed += 1
        return closed

    def _bar(self, symbol: str, st: _SymbolBars, o: _Ohlcv, period: str) -> Bar:
        change = change_pct = None
        if period == "1d" and st.prev_close:
            change = round(o.close - st.prev_close, 6)
            change_pct = round(change / st.prev_close * 100.0, 4)
        return Bar(
            symbol=symbol,
            period=period,  # type: ignore[arg-type]
            open=o.open,
            high=o.high,
            low=o.low,
            close=o.close,
            volume=o.volume,
            amount=round(o.amount, 4),
            change=change,
            change_pct=change_pct,
            timestamp=_utc(o.start),
            source=st.source,
            trading_day=st.day.isoformat() if st.day else None,
        )

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
            self._bar(symbol, st, _Ohlcv(*ms[i : i + _MINUTE_FIELDS]), "1m") for i in range(0, len(ms), _MINUTE_FIELDS)
        ]
        if st.minute is not None:
            bars.append(self._bar(symbol, st, st.minute, "1m"))
        return bars

    def forget(self, symbols: set[str]) -> None:
        """Drop the state of symbols nobody is subscribed to any more."""
        for s in symbols:
            st = self._symbols.pop(s, None)
            if st is not None and st.minute is not None:
                opened = self._open_minutes.get(st.minute.start)
                if opened is not None:
                    opened.discard(s)

    @property
    def symbol_count(self) -> int:
        return len(self._symbols)
