"""Pure FuShu parsers: response body → raw items → PriceUpdate (no clock reads, no I/O)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec

from services.feeder_gateway.feeders.fushu.wire import FushuResponse, FushuTick
from shared.dto import PriceUpdate
from shared.symbols import MARKET_TIMEZONES, Market, SymbolError, normalize

HK_TZ = MARKET_TIMEZONES[Market.HK]

# Numbers may arrive as JSON numbers or numeric strings (a generic contract, loosely kept).
_response_decoder = msgspec.json.Decoder(FushuResponse)
_tick_decoder = msgspec.json.Decoder(FushuTick, strict=False)


class FushuParseError(ValueError):
    """A response or item that does not follow the contract; ``reason`` labels the metric."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


def decode_response(body: bytes) -> list[msgspec.Raw]:
    """The raw items of a response body; FushuParseError if the envelope is wrong."""
    try:
        return _response_decoder.decode(body).data
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise FushuParseError("bad_response", str(e)) from None


def decode_tick(raw: msgspec.Raw | bytes) -> FushuTick:
    """One item; FushuParseError("bad_item") if a field is missing or has the wrong type."""
    try:
        return _tick_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise FushuParseError("bad_item", str(e)) from None


def canonical_symbol(tick: FushuTick) -> str:
    """The item's symbol in canonical form (``700.hk`` → ``00700.HK``); HK only."""
    try:
        symbol = normalize(tick.symbol)
    except SymbolError:
        raise FushuParseError("bad_symbol", repr(tick.symbol)) from None
    if not symbol.endswith(".HK"):
        raise FushuParseError("bad_symbol", repr(tick.symbol))
    return symbol


def parse_timestamp(text: str) -> datetime:
    """ISO-8601 → aware UTC datetime.

    An offset or ``Z`` is kept as given. A naive value is read as Asia/Hong_Kong local
    time: the contract never said, and an HK quote server that omits the offset almost
    certainly speaks exchange time. Digits past microseconds are truncated.
    """
    try:
        ts = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise FushuParseError("bad_timestamp", repr(text)) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=HK_TZ)
    return ts.astimezone(UTC)


def _optional(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise FushuParseError(f"bad_{field}", repr(value))
    return value


def _optional_price(value: float | None, field: str) -> float | None:
    """A bid/ask price; 0 means "no order on that side", like a missing value."""
    return _optional(value, field) or None


def to_price_update(
    tick: FushuTick, symbol: str, source: str, receive_time: datetime
) -> PriceUpdate:
    """Build the DTO from a decoded item whose canonical ``symbol`` is already known.

    Numbers stay as decoded: a JSON decimal becomes its nearest double, which is exact to
    every digit an HK price has (3 decimals), so no rounding or scaling is applied.
    """
    price = tick.price
    if not math.isfinite(price) or price <= 0:
        raise FushuParseError("bad_price", repr(price))
    return PriceUpdate(
        symbol=symbol,
        price=price,
        timestamp=parse_timestamp(tick.timestamp),
        source=source,
        volume=_optional(tick.volume, "volume"),
        bid_price=_optional_price(tick.bid_price, "bid_price"),
        ask_price=_optional_price(tick.ask_price, "ask_price"),
        bid_volume=_optional(tick.bid_volume, "bid_volume"),
        ask_volume=_optional(tick.ask_volume, "ask_volume"),
        receive_time=receive_time,
    )


def parse_response(
    body: bytes, source: str, receive_time: datetime
) -> tuple[list[PriceUpdate], list[tuple[str, bytes]]]:
    """Every good item of a body as a PriceUpdate, plus (reason, raw item) for each bad one.

    Raises FushuParseError only when the envelope itself is wrong.
    """
    out: list[PriceUpdate] = []
    bad: list[tuple[str, bytes]] = []
    for raw in decode_response(body):
        try:
            tick = decode_tick(raw)
            out.append(to_price_update(tick, canonical_symbol(tick), source, receive_time))
        except FushuParseError as e:
            bad.append((e.reason, bytes(raw)))
    return out, bad
