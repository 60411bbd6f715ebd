"""Pure EastMoney parsing: envelope bytes → Envelope, positional merging, quote → PriceUpdate.

No clock reads and no I/O: the receive time is passed in. Scaled prices are exact: an
integer divided by ``10**f59`` (Python's int/int division is correctly rounded, so
``1052 / 100`` is the float nearest 10.52, the same float ``float("10.52")`` gives).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.secid import SecidError, from_market_code
from shared.dto import PriceUpdate

_DIVISORS = tuple(10**i for i in range(10))
_MISSING = wire.MISSING
_ABSENT = object()
# Quote times before 2000 or after 2100 are garbage, not quotes.
_MIN_TIME_S, _MAX_TIME_S = 946_684_800, 4_102_444_800

_envelope_decoder = msgspec.json.Decoder(wire.Envelope)


class QuoteError(ValueError):
    """A bad envelope, position or field; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_envelope(raw: bytes) -> wire.Envelope:
    """Decode one response body or SSE ``data`` payload; raises QuoteError on garbage."""
    try:
        return _envelope_decoder.decode(raw)
    except msgspec.DecodeError as e:  # ValidationError subclasses DecodeError
        raise QuoteError("bad_envelope", str(e)) from None


def apply_diff(
    cache: dict[int, wire.Quote], diff: dict[str, wire.Quote], size: int, full: bool
) -> tuple[list[int], list[str]]:
    """Merge a keyed ``diff`` into the per-position cache of a request of ``size`` secids.

    A full event replaces the cache; a delta merges its keys into each position's object.
    Returns the positions whose merged state changed (in diff order) and the diff keys
    that name no position of the request.
    """
    if full:
        cache.clear()
    changed: list[int] = []
    bad: list[str] = []
    for key, fields in diff.items():
        try:
            pos = int(key)
        except ValueError:
            bad.append(key)
            continue
        if not 0 <= pos < size or type(fields) is not dict:
            bad.append(key)
            continue
        entry = cache.get(pos)
        if entry is None or full:
            cache[pos] = dict(fields)
            changed.append(pos)
            continue
        moved = False
        for k, v in fields.items():
            if entry.get(k, _ABSENT) != v:
                entry[k] = v
                moved = True
        if moved:
            changed.append(pos)
    return changed, bad


def symbol_of(quote: wire.Quote, requested: dict[str, str]) -> str:
    """The canonical symbol of a list-form entry, from its f13/f12.

    ``requested`` (secid → symbol of the request) resolves it first, so the answer is
    the symbol that was asked for; otherwise the pure reverse mapping decides.
    """
    market = quote.get(wire.MARKET)
    code = quote.get(wire.CODE)
    if type(market) is not int or type(code) is not str or not code:
        raise QuoteError("missing_f12_f13", f"f13={market!r} f12={code!r}")
    symbol = requested.get(f"{market}.{code}")
    if symbol is not None:
        return symbol
    try:
        return from_market_code(market, code)
    except SecidError as e:
        raise QuoteError("unknown_market", str(e)) from None


def decimals_of(quote: wire.Quote) -> int:
    """The decimal places of the integer-scaled prices: ``f59``, else ``f152``, else ``f1``
    (servers differ in which they return)."""
    d = None
    for key in wire.DECIMALS_KEYS:
        d = quote.get(key)
        if d is not None and d != wire.MISSING:
            break
    if type(d) is not int or not 0 <= d < len(_DIVISORS):
        raise QuoteError("bad_f59", repr(d))
    return d


def price_value(quote: wire.Quote, key: str, divisor: int) -> float | None:
    """A price field: ``"-"``/absent → None; ``divisor`` 0 means decimals (fltt=2)."""
    v = quote.get(key)
    if v is None or v == _MISSING:
        return None
    t = type(v)
    if divisor:
        if t is int:
            return v / divisor  # type: ignore[no-any-return]
        raise QuoteError(f"bad_{key}", f"expected an integer-scaled value, got {v!r}")
    if t is float or t is int:
        return float(v)
    raise QuoteError(f"bad_{key}", repr(v))


def percent_value(quote: wire.Quote, key: str, decimal_values: bool) -> float | None:
    """A percent field (f3): x100 integer unless ``fltt=2``."""
    v = quote.get(key)
    if v is None or v == _MISSING:
        return None
    if decimal_values and type(v) in (float, int):
        return float(v)
    if not decimal_values and type(v) is int:
        return v / 100
    raise QuoteError(f"bad_{key}", repr(v))


def _quantity(quote: wire.Quote, key: str, unit: int) -> float | None:
    v = quote.get(key)
    if v is None or v == _MISSING:
        return None
    t = type(v)
    if t is int or t is float:
        return float(v * unit)
    raise QuoteError(f"bad_{key}", repr(v))


def quote_time(quote: wire.Quote, receive_time: datetime) -> datetime:
    """``f124`` (unix seconds) as aware UTC; absent or ``"-"`` → ``receive_time``."""
    v = quote.get(wire.QUOTE_TIME)
    if v is None or v in (_MISSING, 0):
        return receive_time
    if type(v) is not int or not _MIN_TIME_S <= v < _MAX_TIME_S:
        raise QuoteError("bad_f124", repr(v))
    return datetime.fromtimestamp(v, UTC)


def quote_to_update(
    symbol: str,
    quote: wire.Quote,
    receive_time: datetime,
    source: str,
    *,
    decimal_values: bool,
    volume_unit: int,
) -> PriceUpdate | None:
    """One security's (merged) fields → PriceUpdate; None when it has no last price.

    ``decimal_values``: the request passed ``fltt=2``; otherwise prices are divided by
    ``10**f59``. ``volume_unit``: shares per unit of f5/f20/f40 (100 for A-share lots).
    A missing, ``"-"`` or non-positive last price (suspended, pre-open) is no quote.
    """
    divisor = 0 if decimal_values else _DIVISORS[decimals_of(quote)]
    price = price_value(quote, wire.LAST, divisor)
    if price is None or price <= 0:
        return None
    amount: Any = quote.get(wire.AMOUNT)
    if amount == _MISSING:
        amount = None
    elif amount is not None:
        if type(amount) not in (int, float):
            raise QuoteError("bad_f6", repr(amount))
        amount = float(amount)
    return PriceUpdate(
        symbol=symbol,
        price=price,
        timestamp=quote_time(quote, receive_time),
        source=source,
        volume=_quantity(quote, wire.VOLUME, volume_unit),
        amount=amount,
        bid_price=price_value(quote, wire.BID1, divisor),
        ask_price=price_value(quote, wire.ASK1, divisor),
        bid_volume=_quantity(quote, wire.BID1_VOLUME, volume_unit),
        ask_volume=_quantity(quote, wire.ASK1_VOLUME, volume_unit),
        open_price=price_value(quote, wire.OPEN, divisor),
        high_price=price_value(quote, wire.HIGH, divisor),
        low_price=price_value(quote, wire.LOW, divisor),
        receive_time=receive_time,
    )
