"""Trading sessions per market (local time), for watchdogs, bars and calendars.

A thin, stable face over ``shared.calendars``: holidays, half days and lunch breaks
come from each market's trading calendar (past its confirmed horizon, the holidays
library's estimated dates for that market and year).
"""

from __future__ import annotations

from datetime import date, datetime

from shared.calendars import HOURS, Session, calendar
from shared.symbols import MARKET_TIMEZONES, Market

# Continuous sessions plus auctions that produce quotes, on a regular (full) day.
SESSIONS: dict[Market, tuple[Session, ...]] = {m: h.quote_sessions for m, h in HOURS.items()}


def local_time(market: Market, at: datetime) -> datetime:
    """``at`` (aware) in the market's timezone."""
    return at.astimezone(MARKET_TIMEZONES[market])


def trading_day(market: Market, at: datetime) -> date:
    """The calendar date of ``at`` in the market's timezone."""
    return local_time(market, at).date()


def is_trading_weekday(market: Market, day: date) -> bool:
    """Whether ``day`` is a trading day of ``market`` (weekends and exchange holidays are not)."""
    return calendar(market).is_trading_day(day)


def in_session(market: Market, at: datetime) -> bool:
    """Whether the market produces quotes at ``at`` (aware datetime): holidays, half days
    and lunch breaks included."""
    return calendar(market).in_session(at)
