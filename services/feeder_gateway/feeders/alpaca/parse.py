"""Pure Alpaca parsers: decoded wire messages → PriceUpdate; no clock reads, no I/O.

Choices, so every number keeps one meaning:
- Timestamps: RFC-3339 with up to nanosecond digits (JSON) or a msgpack timestamp
  (msgpack mode), TRUNCATED to microseconds (datetime's resolution; CPython's
  ``fromisoformat`` and msgpack's ``timestamp=3`` both drop the extra digits, so the two
  framings give the same instant), returned timezone-aware UTC.
- Prices: JSON numbers decode to the nearest double, which is the DTO's type; nothing
  is rescaled. A quote's mid is rounded to 6 decimals (sub-dollar stocks quote in
  1/10000ths, their mid needs 5).
- Trades: ``price`` = ``p``, ``last_size`` = ``s``; ``volume``/``amount`` stay None
  because a trade stream has no day cumulative figure.
- Quotes: bid/ask prices and sizes, sizes converted from round lots to shares;
  ``price`` = the symbol's last trade price when one was seen this run (a quote does not
  move the last price), else the mid, else the only side quoted. A quote with neither
  side and no last trade has no price and yields nothing.
- Minute bars (``b``): ``price`` = close at the bar's END (start + 1 min), since the close
  is the last trade price as of then.
- Daily bars (``d``, partial, resent each minute): ``price`` = close, day open/high/low,
  ``volume`` = the day's cumulative shares, ``amount`` = VWAP x volume (rounded to
  cents; VWAP itself is rounded by the provider). The bar carries only its START time,
  so ``timestamp`` is the receive time: its content is as of "now".
- Corrections ``c`` and cancel errors ``x`` → TradeCorrection (original id, price and
  size; the corrected price and size, or ``cancelled``); halts ``s`` and LULD bands ``l``
  → status events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack  # type: ignore[import-untyped]
import msgspec

from services.feeder_gateway.feeders.alpaca.wire import IGNORED_DATA_TYPES
from shared.dto import PriceUpdate, TradeCorrection

_fromisoformat = datetime.fromisoformat
_TRADING_EVENTS = frozenset({"s", "l"})
_MINUTE = timedelta(minutes=1)
_json_decoder = msgspec.json.Decoder()


class WireError(ValueError):
    """A message or field that does not follow the wire format."""


def decode_json(raw: str | bytes) -> Any:
    """A JSON frame → Python objects (raises msgspec.DecodeError on bad input)."""
    return _json_decoder.decode(raw)


def decode_msgpack(raw: bytes) -> Any:
    """A msgpack frame → Python objects, timestamps as aware UTC datetimes (truncated)."""
    return msgpack.unpackb(raw, timestamp=3)


def parse_timestamp(value: object) -> datetime:
    """RFC-3339 string (any number of fraction digits) or datetime → aware UTC datetime."""
    if type(value) is str:
        try:
            dt = _fromisoformat(value)
        except ValueError:
            raise WireError(f"bad timestamp {value[:40]!r}") from None
    elif isinstance(value, datetime):
        dt = value
    else:
        raise WireError(f"timestamp of type {type(value).__name__}")
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None or dt.utcoffset() is None:
        raise WireError(f"timestamp without offset {value!s:.40}")
    return dt.astimezone(UTC)


def _price(value: object, key: str) -> float:
    t = type(value)
    if t is float or t is int:
        p = float(value)  # type: ignore[arg-type]
        if p > 0.0 and p < 1e9:  # also rejects NaN
            return p
    raise WireError(f"bad {key}: {value!r:.40}")


def _side_price(value: object, key: str) -> float | None:
    """A quote side: 0 means the side is empty."""
    t = type(value)
    if t is float or t is int:
        p = float(value)  # type: ignore[arg-type]
        if p == 0.0:
            return None
        if p > 0.0 and p < 1e9:
            return p
    raise WireError(f"bad {key}: {value!r:.40}")


def _count(value: object, key: str) -> int:
    if type(value) is int and value >= 0:  # bool is not an int here
        return value
    raise WireError(f"bad {key}: {value!r:.40}")


def parse_trade(
    msg: dict[str, Any], symbol: str, source: str, receive_time: datetime, delayed: bool = False
) -> PriceUpdate:
    """A trade ``t`` → PriceUpdate(price=p, last_size=s, timestamp=t)."""
    return PriceUpdate(
        symbol=symbol,
        price=_price(msg["p"], "p"),
        timestamp=parse_timestamp(msg["t"]),
        source=source,
        receive_time=receive_time,
        last_size=float(_count(msg["s"], "s")),
        delayed=delayed,
    )


def parse_quote(
    msg: dict[str, Any],
    symbol: str,
    source: str,
    receive_time: datetime,
    last_trade_price: float | None,
    lot_size: int = 100,
    delayed: bool = False,
) -> PriceUpdate | None:
    """A quote ``q`` → PriceUpdate with the book top; None when it has no price at all."""
    bid = _side_price(msg["bp"], "bp")
    ask = _side_price(msg["ap"], "ap")
    bid_size = _count(msg["bs"], "bs")
    ask_size = _count(msg["as"], "as")
    timestamp = parse_timestamp(msg["t"])
    if last_trade_price is not None:
        price = last_trade_price
    elif bid is not None and ask is not None:
        price = round((bid + ask) / 2.0, 6)
    elif bid is not None or ask is not None:
        price = bid if bid is not None else ask  # type: ignore[assignment]
    else:
        return None
    return PriceUpdate(
        symbol=symbol,
        price=price,
        timestamp=timestamp,
        source=source,
        receive_time=receive_time,
        bid_price=bid,
        ask_price=ask,
        bid_volume=float(bid_size * lot_size) if bid is not None else None,
        ask_volume=float(ask_size * lot_size) if ask is not None else None,
        delayed=delayed,
    )


def parse_minute_bar(
    msg: dict[str, Any], symbol: str, source: str, receive_time: datetime, delayed: bool = False
) -> PriceUpdate:
    """A minute bar ``b`` → PriceUpdate(price=close) at the bar's end."""
    return PriceUpdate(
        symbol=symbol,
        price=_price(msg["c"], "c"),
        timestamp=parse_timestamp(msg["t"]) + _MINUTE,
        source=source,
        receive_time=receive_time,
        delayed=delayed,
    )


def parse_daily_bar(
    msg: dict[str, Any], symbol: str, source: str, receive_time: datetime, delayed: bool = False
) -> PriceUpdate:
    """A partial daily bar ``d`` → PriceUpdate with the day's OHLC and cumulative volume."""
    parse_timestamp(msg["t"])  # validated; the bar start is not the update's time
    volume = _count(msg["v"], "v")
    vwap = msg.get("vw")
    amount = round(_price(vwap, "vw") * volume, 2) if vwap else None
    return PriceUpdate(
        symbol=symbol,
        price=_price(msg["c"], "c"),
        timestamp=receive_time,
        source=source,
        receive_time=receive_time,
        open_price=_price(msg["o"], "o"),
        high_price=_price(msg["h"], "h"),
        low_price=_price(msg["l"], "l"),
        volume=float(volume),
        amount=amount,
        delayed=delayed,
    )


class RecentTradeIds:
    """Per symbol, the last ``window`` (exchange, trade id) keys: trade ids are unique per
    exchange only. Insertion-ordered dicts make the eviction of the oldest O(1)."""

    __slots__ = ("_by_symbol", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._by_symbol: dict[str, dict[tuple[object, object], None]] = {}

    def seen(self, symbol: str, exchange: object, trade_id: object) -> bool:
        """True if (symbol, exchange, id) was seen recently; otherwise record it."""
        ids = self._by_symbol.get(symbol)
        if ids is None:
            ids = self._by_symbol[symbol] = {}
        key = (exchange, trade_id)
        if key in ids:
            return True
        ids[key] = None
        if len(ids) > self._window:
            del ids[next(iter(ids))]
        return False

    def forget(self, symbol: str) -> None:
        self._by_symbol.pop(symbol, None)


MalformedSink = Callable[[str, str], None]
TradingEventSink = Callable[[str, dict[str, Any]], None]  # (status state, detail)
CorrectionSink = Callable[[TradeCorrection], None]


def parse_correction(m: dict[str, Any], symbol: str, source: str, receive_time: datetime) -> TradeCorrection:
    """A correction ``c`` → TradeCorrection: x exchange, oi/op/os original id/price/size,
    ci/cp/cs the corrected ones (the corrected id is not kept: the trade is known by oi)."""
    return TradeCorrection(
        symbol=symbol,
        original_id=_trade_id(m["oi"], "oi"),
        original_price=_price(m["op"], "op"),
        original_size=float(_count(m["os"], "os")),
        corrected_price=_price(m["cp"], "cp"),
        corrected_size=float(_count(m["cs"], "cs")),
        exchange=_exchange(m["x"]),
        timestamp=parse_timestamp(m["t"]),
        source=source,
        receive_time=receive_time,
    )


def parse_cancel(m: dict[str, Any], symbol: str, source: str, receive_time: datetime) -> TradeCorrection:
    """A cancel error ``x`` → TradeCorrection(cancelled): i trade id, p price, s size, x
    exchange, a action (C cancel, E error: either way the trade is void)."""
    return TradeCorrection(
        symbol=symbol,
        original_id=_trade_id(m["i"], "i"),
        original_price=_price(m["p"], "p"),
        original_size=float(_count(m["s"], "s")),
        cancelled=True,
        exchange=_exchange(m["x"]),
        timestamp=parse_timestamp(m["t"]),
        source=source,
        receive_time=receive_time,
    )


def _trade_id(value: object, key: str) -> int:
    if type(value) is int:
        return value
    raise WireError(f"bad {key}: {value!r:.40}")


def _exchange(value: object) -> str:
    if type(value) is str:
        return value
    raise WireError(f"bad x: {value!r:.40}")


def trading_event(m: dict[str, Any], symbol: str) -> tuple[str, dict[str, Any]]:
    """A trading status ``s`` or LULD ``l`` message → the status event that reports it:
    (state, detail) with the provider's values under readable names."""
    kind = m["T"]
    t = parse_timestamp(m["t"]).isoformat()
    if kind == "s":  # sc/sm status code/message, rc/rm reason code/message
        return "trading_status", {
            "symbol": symbol,
            "timestamp": t,
            "status_code": m["sc"],
            "status": m.get("sm"),
            "reason_code": m.get("rc"),
            "reason": m.get("rm"),
        }
    # l: u/d limit up/down price, i indicator
    return "luld", {
        "symbol": symbol,
        "timestamp": t,
        "limit_up": _price(m["u"], "u"),
        "limit_down": _price(m["d"], "d"),
        "indicator": m.get("i"),
    }


class FrameParser:
    """Decoded frames → ticks for the wanted symbols, plus the control messages.

    State kept across frames and reconnects (one instance per feeder): the wanted
    wire symbols, the last trade price per symbol (a quote's price) and recent trade ids
    (dedup). Data for symbols not wanted (just unsubscribed: the server keeps sending
    briefly) is dropped. A bad message is reported to ``malformed`` and skipped.
    """

    def __init__(
        self,
        source: str,
        malformed: MalformedSink,
        *,
        delayed: bool = False,
        quote_lot_size: int = 100,
        dedup_window: int = 512,
        trading_events: TradingEventSink | None = None,
        corrections: CorrectionSink | None = None,
    ) -> None:
        self.source = source
        self._trading_events = trading_events
        self._corrections = corrections
        self.delayed = delayed
        self.quote_lot_size = quote_lot_size
        self._malformed = malformed
        self._wanted: dict[str, str] = {}  # wire symbol → canonical symbol
        self.last_trade_price: dict[str, float] = {}  # canonical → price
        self.recent_ids = RecentTradeIds(dedup_window)
        self.duplicates = 0
        self._bar_parsers: dict[str, Callable[..., PriceUpdate]] = {
            "b": parse_minute_bar,
            "d": parse_daily_bar,
        }
        self._correction_parsers: dict[str, Callable[..., TradeCorrection]] = {
            "c": parse_correction,
            "x": parse_cancel,
        }
        self._ignored = IGNORED_DATA_TYPES

    def set_wanted(self, wire_to_canonical: dict[str, str]) -> None:
        """Replace the wanted symbols; per-symbol state of the others is forgotten."""
        keep = set(wire_to_canonical.values())
        for canonical in self._wanted.values():
            if canonical not in keep:
                self.last_trade_price.pop(canonical, None)
                self.recent_ids.forget(canonical)
        self._wanted = dict(wire_to_canonical)

    def _symbol(self, m: dict[str, Any]) -> str | None:
        """The wanted canonical symbol of a data message; None (a malformed ``S`` counted)."""
        symbol = self._wanted.get(m["S"])
        if symbol is None:
            self._unwanted(m)
        return symbol

    def _unwanted(self, m: dict[str, Any]) -> None:
        """Data for a symbol not wanted: dropped; an ``S`` that is no string is malformed."""
        if type(m["S"]) is not str:
            raise WireError(f"bad S: {m['S']!r:.40}")

    def parse(self, msgs: Any, receive_time: datetime) -> tuple[list[PriceUpdate], list[dict[str, Any]], int]:
        """One decoded frame → (ticks, control messages, count of data messages)."""
        if type(msgs) is not list:
            self._malformed("frame_not_array", repr(msgs)[:160])
            return [], [], 0
        ticks: list[PriceUpdate] = []
        controls: list[dict[str, Any]] = []
        data = 0
        wanted = self._wanted
        source = self.source
        delayed = self.delayed
        last_price = self.last_trade_price
        for m in msgs:
            try:
                kind = m["T"]
                if kind == "t":
                    data += 1
                    symbol = wanted.get(m["S"])
                    if symbol is None:
                        self._unwanted(m)
                        continue
                    if self.recent_ids.seen(symbol, m["x"], m["i"]):
                        self.duplicates += 1
                        continue
                    tick = parse_trade(m, symbol, source, receive_time, delayed)
                    last_price[symbol] = tick.price
                    ticks.append(tick)
                elif kind == "q":
                    data += 1
                    symbol = wanted.get(m["S"])
                    if symbol is None:
                        self._unwanted(m)
                        continue
                    quote = parse_quote(
                        m,
                        symbol,
                        source,
                        receive_time,
                        last_price.get(symbol),
                        self.quote_lot_size,
                        delayed,
                    )
                    if quote is not None:
                        ticks.append(quote)
                elif kind in self._bar_parsers:
                    data += 1
                    symbol = self._symbol(m)
                    if symbol is not None:
                        ticks.append(self._bar_parsers[kind](m, symbol, source, receive_time, delayed))
                elif kind in self._correction_parsers:
                    data += 1
                    symbol = self._symbol(m)
                    if symbol is not None and self._corrections is not None:
                        self._corrections(self._correction_parsers[kind](m, symbol, source, receive_time))
                elif kind in _TRADING_EVENTS:
                    data += 1
                    symbol = self._symbol(m)
                    if symbol is not None and self._trading_events is not None:
                        self._trading_events(*trading_event(m, symbol))
                elif kind in self._ignored:
                    data += 1
                elif type(kind) is str and kind in ("success", "error", "subscription"):
                    controls.append(m)
                else:
                    self._malformed("unknown_type", repr(m)[:160])
            except (KeyError, TypeError, ValueError) as e:
                # KeyError: missing field; TypeError: not an object / unhashable S;
                # ValueError (WireError): a field of the wrong form.
                self._malformed("bad_message", f"{type(e).__name__}: {e}: {m!r}"[:200])
        return ticks, controls, data
