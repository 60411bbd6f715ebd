"""Canonical symbols and the pure routing from a symbol to its market.

Canonical forms: ``600000.SH``, ``000001.SZ``, ``430047.BJ`` (CN), ``00700.HK`` (HK) and
bare ``AAPL`` (US; ``AAPL.US`` is accepted and normalized to ``AAPL``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from zoneinfo import ZoneInfo


class Market(StrEnum):
    """A market the system serves; each has one timezone and one set of feeders."""

    CN = "CN"
    HK = "HK"
    US = "US"


MARKET_TIMEZONES: dict[Market, ZoneInfo] = {
    Market.CN: ZoneInfo("Asia/Shanghai"),
    Market.HK: ZoneInfo("Asia/Hong_Kong"),
    Market.US: ZoneInfo("America/New_York"),
}

_CN = re.compile(r"^(\d{6})\.(SH|SZ|BJ)$")
_HK = re.compile(r"^(\d{1,5})\.HK$")
_US = re.compile(r"^([A-Z][A-Z0-9]{0,9}(?:[.-][A-Z]{1,2})?)$")


class SymbolError(ValueError):
    """A symbol that is not in any canonical form."""


def normalize(symbol: str) -> str:
    """Return the canonical form of ``symbol`` or raise SymbolError naming it."""
    s = symbol.strip().upper()
    if s.endswith(".US"):
        s = s[:-3]
    if m := _HK.match(s):
        return f"{int(m.group(1)):05d}.HK"
    if _CN.match(s) or _US.match(s):
        return s
    raise SymbolError(f"unknown symbol {symbol!r}: expected 600000.SH, 000001.SZ, 430047.BJ, 00700.HK or AAPL")


_CANONICAL_HK = re.compile(r"^\d{5}\.HK$")


def market_of(symbol: str) -> Market:
    """The market of a CANONICAL symbol (pure; call normalize() first on user input).

    Anything not in canonical form (``1234567.SH``, ``700.HK``, ``aapl``) belongs to no
    market: where symbols enter (subscriptions, interest, ticks) that is the check.
    """
    if _CN.match(symbol):
        return Market.CN
    if _CANONICAL_HK.match(symbol):
        return Market.HK
    if _US.match(symbol):
        return Market.US
    raise SymbolError(f"symbol {symbol!r} belongs to no market (not a canonical symbol)")


def group_by_market(symbols: set[str] | frozenset[str]) -> dict[Market, frozenset[str]]:
    """Split canonical symbols by market; markets without symbols are left out."""
    out: dict[Market, set[str]] = {}
    for s in symbols:
        out.setdefault(market_of(s), set()).add(s)
    return {m: frozenset(v) for m, v in out.items()}
