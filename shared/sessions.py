"""Trading sessions per market (local time), for watchdogs, bars and calendars.

Weekends are closed; exchange holidays are not modelled yet (a holiday looks like a
quiet session day).
"""

from __future__ import annotations

from datetime import date, datetime, time

from shared.symbols import MARKET_TIMEZONES, Market

# Continuous sessions plus auctions that produce quotes.
SESSIONS: dict[Market, tuple[tuple[time, time], ...]] = {
    Market.CN: ((time(9, 15), time(11, 30)), (time(13, 0), time(15, 0))),
    Market.HK: ((time(9, 0), time(12, 0)), (time(13, 0), time(16, 10))),
    Market.US: ((time(4, 0), time(20, 0)),),
}


def local_time(market: Market, at: datetime) -> datetime:
    """``at`` (aware) in the market's timezone."""
    return at.astimezone(MARKET_TIMEZONES[market])


def trading_day(market: Market, at: datetime) -> date:
    """The calendar date of ``at`` in the market's timezone."""
    return local_time(market, at).date()


def is_trading_weekday(market: Market, day: date) -> bool:
    return day.weekday() < 5


def in_session(market: Market, at: datetime) -> bool:
    """Whether the market produces quotes at ``at`` (aware datetime)."""
    local = local_time(market, at)
    if not is_trading_weekday(market, local.date()):
        return False
    t = local.time()
    return any(start <= t < end for start, end in SESSIONS[market])
