"""Pure parsers of Alpaca's historical bars API; no clock reads (``now`` is passed in), no I/O.

``GET /v2/stocks/bars?symbols=A,B&timeframe=1Min&start=..&end=..&limit=N&feed=..&sort=asc``
answers ``{"bars": {"A": [{"t","o","h","l","c","v","n","vw"}, ...]}, "next_page_token": ..}``,
sorted by symbol, then time; ``limit`` counts the bars of all symbols of a page; the next
page is asked for with ``page_token`` until the token is null. ``start`` and ``end`` are
both inclusive. Errors carry ``{"message": ...}``; every answer carries
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds).

Choices: a bar's ``amount`` is ``vw * v`` (the provider sends the VWAP, not the turnover;
its VWAP is rounded, so the amount is as exact as that rounding). A bar that does not parse
fails the page: a skipped bar would read as a minute without trades.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from services.feeder_gateway.feeders.alpaca.parse import WireError, parse_timestamp
from services.feeder_gateway.feeders.history import (
    HistoryConfigError,
    HistoryUnavailable,
    MinuteBar,
    minute_floor,
)

BARS_PATH = "/v2/stocks/bars"
RECENT_SIP = timedelta(minutes=15)
"""A plan without real-time SIP may not ask for SIP data this close to now."""
RECENT_SIP_MARGIN = timedelta(minutes=1)
"""Kept clear of that limit, for clocks that differ a little."""
_MINUTE = timedelta(minutes=1)


class WireBar(msgspec.Struct, frozen=True):
    """One bar of the historical API."""

    t: str  # bar start, RFC-3339 (``2024-03-04T14:30:00Z``)
    o: float  # open
    h: float  # high
    l: float  # low  # noqa: E741
    c: float  # close
    v: float  # volume, shares
    n: int = 0  # number of trades
    vw: float = 0.0  # volume-weighted average price


class WirePage(msgspec.Struct, frozen=True):
    """One page of ``GET /v2/stocks/bars``."""

    bars: dict[str, list[WireBar]] | None = None  # by symbol; {} or null when none
    next_page_token: str | None = None  # null on the last page


class WireErrorBody(msgspec.Struct, frozen=True):
    message: str = ""


_page_decoder = msgspec.json.Decoder(WirePage)
_error_decoder = msgspec.json.Decoder(WireErrorBody)


class RecentSipRefused(Exception):
    """403: the plan does not include SIP data of the last 15 minutes."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A parsed page: bars by Alpaca symbol (ascending), and the next page's token."""

    bars: dict[str, list[MinuteBar]]
    next_page_token: str | None


def minute_bar(bar: WireBar) -> MinuteBar:
    """A wire bar → MinuteBar (raises WireError on a bar that makes no sense)."""
    start = parse_timestamp(bar.t)
    if start != minute_floor(start):
        raise WireError(f"bar start not on a minute: {bar.t[:40]!r}")
    prices = (bar.o, bar.h, bar.l, bar.c)
    if not all(p > 0.0 and p < 1e9 for p in prices) or bar.l > min(bar.o, bar.c) or bar.h < max(bar.o, bar.c):
        raise WireError(f"bar prices inconsistent at {bar.t[:40]}: o={bar.o} h={bar.h} l={bar.l} c={bar.c}")
    if not bar.v >= 0.0 or not bar.vw >= 0.0:
        raise WireError(f"bad volume or vwap at {bar.t[:40]}: v={bar.v} vw={bar.vw}")
    # the provider sends the VWAP, not the turnover: amount = vw x v
    return MinuteBar(start, bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw * bar.v)


def parse_page(body: bytes) -> HistoryPage:
    """A 200 answer → HistoryPage (raises WireError when the body or a bar is malformed)."""
    try:
        page = _page_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise WireError(f"history page: {e}") from None
    bars = {sym: [minute_bar(b) for b in wire] for sym, wire in (page.bars or {}).items()}
    token = page.next_page_token or None  # an empty token ends the pages too
    return HistoryPage(bars, token)


def error_message(body: bytes) -> str:
    """The ``message`` of an error body, or a short snippet of whatever came."""
    try:
        message = _error_decoder.decode(body).message
    except msgspec.DecodeError:
        message = body[:120].decode("utf-8", "replace")
    return message[:200]


def retry_after_s(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """How long a 429 asks us to wait: until ``X-RateLimit-Reset`` (epoch seconds), else
    ``Retry-After`` seconds; None when neither says."""
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now_epoch)
        except ValueError:
            pass
    after = headers.get("Retry-After")
    if after:
        try:
            return max(0.0, float(after))
        except ValueError:  # an HTTP date: the caller's backoff applies
            return None
    return None


def answer_error(
    name: str, status: int, headers: Mapping[str, str], body: bytes, now_epoch: float
) -> Exception | None:
    """What a non-200 answer means (None for 200): HistoryConfigError naming the setting,
    RecentSipRefused, or HistoryUnavailable (retry later, after ``retry_after_s``)."""
    if status == 200:
        return None
    message = error_message(body)
    if status in (401, 403):
        if status == 403 and "recent sip" in message.lower():
            return RecentSipRefused(message)
        return HistoryConfigError(
            f"{name}: the history API refused the API key (HTTP {status}: {message}): check key and "
            f"secret of '{name}' in secure.yml (sources.{name}.key) and the plan's market data"
        )
    if status == 404:
        return HistoryConfigError(
            f"{name}: {BARS_PATH} not found (HTTP 404): check 'history_url' of source '{name}' "
            f"in data_sources.yml (sources.{name}.history_url)"
        )
    if status == 429:
        return HistoryUnavailable(
            f"{name}: history rate limited (HTTP 429: {message})", retry_after_s(headers, now_epoch)
        )
    retry = retry_after_s({"Retry-After": headers.get("Retry-After", "")}, now_epoch)
    return HistoryUnavailable(f"{name}: history answered HTTP {status}: {message}", retry)


def rfc3339(t: datetime) -> str:
    """An aware datetime → ``2024-03-04T14:30:00Z`` (whole seconds)."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def bars_query(
    symbols: list[str], first: datetime, last: datetime, feed: str, limit: int, page_token: str | None
) -> dict[str, str]:
    """The query of one page: minutes ``first`` to ``last`` (both minute starts, inclusive),
    unadjusted (repair replaces bars built from the same raw trades)."""
    query = {
        "symbols": ",".join(symbols),
        "timeframe": "1Min",
        "start": rfc3339(first),
        "end": rfc3339(last),
        "limit": str(limit),
        "feed": feed,
        "sort": "asc",
        "adjustment": "raw",
    }
    if page_token is not None:
        query["page_token"] = page_token
    return query


def split_recent_sip(first: datetime, last: datetime, now: datetime) -> list[tuple[str, datetime, datetime]]:
    """Minutes ``first`` to ``last`` (inclusive) as (feed, first, last) segments for a plan
    without recent SIP: sip up to 16 minutes before ``now``, iex for the newer minutes."""
    iex_from = minute_floor(now - RECENT_SIP - RECENT_SIP_MARGIN)
    segments: list[tuple[str, datetime, datetime]] = []
    if first < iex_from:
        segments.append(("sip", first, min(last, iex_from - _MINUTE)))
    if last >= iex_from:
        segments.append(("iex", max(first, iex_from), last))
    return segments
