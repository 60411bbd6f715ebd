"""The FuShu REST contract: ``GET {base_url}/tick?symbols=A,B`` → ``{"data": [tick, ...]}``.

Request: ``symbols`` is a comma-separated list of canonical HK symbols (``00700.HK``), as
many as ``max_symbols_per_request`` allows; header ``Authorization: Bearer <api_key>``.
Answers: 200 with the body below; 401/403 the key is wrong or not entitled (a
configuration error); 429 too many requests (``Retry-After`` seconds may be given);
5xx a provider failure.

Units: prices in HKD; ``volume`` is the day's CUMULATIVE volume in shares up to
``timestamp``; ``bid_volume``/``ask_volume`` are shares at the best bid/ask.
"""

from __future__ import annotations

import msgspec


class FushuTick(msgspec.Struct, frozen=True):
    """One element of ``data``; unknown keys are ignored (the contract may grow)."""

    symbol: str  # canonical HK symbol, e.g. "00700.HK"
    price: float  # last traded price, HKD
    timestamp: str  # ISO-8601; naive values are Asia/Hong_Kong local time (see parse)
    volume: float | None = None  # day cumulative, shares
    bid_price: float | None = None
    ask_price: float | None = None
    bid_volume: float | None = None  # shares at best bid
    ask_volume: float | None = None  # shares at best ask


class FushuResponse(msgspec.Struct, frozen=True):
    """The response envelope; items stay raw so one bad item cannot spoil the rest."""

    data: list[msgspec.Raw]
