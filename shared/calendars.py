"""Trading calendars per market: trading days, half days and session times, with a horizon.

Holidays and half days come from the ``holidays`` library's exchange calendars (XSHG for
CN, XHKG for HK, XNYS for US). A year is *confirmed* by a checked-in override file,
``shared/calendar_overrides/<MARKET>/<YEAR>.yml`` with ``confirmed: true``, which may
also correct the library (``closed``, ``open``, ``half_days``); years before a market's
earliest file are the library's history, taken as confirmed. Past the confirmed horizon
the library's dates for that market and year are used all the same: rule-based holidays
(US exchange holidays, HK fixed and lunar ones, CN fixed ones) are known years ahead, and
what is not (China's make-up working days, how long the Spring Festival and National Day
closures last) is the library's estimate. Every weekday of such a year is marked
``estimated`` (``confirmed`` is False), for callers to say so and alert on; a draft file
(``confirmed: false``) still applies its corrections, as estimates.

Times are exchange-local. ``quote_sessions`` are the windows in which the market produces
quotes (auctions and, for US, extended hours included); ``open``/``close`` are the regular
continuous session.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import yaml

from shared.symbols import MARKET_TIMEZONES, Market

OVERRIDES_DIR = Path(__file__).resolve().parent / "calendar_overrides"

Session = tuple[time, time]


@dataclass(frozen=True)
class MarketHours:
    """A market's regular day, exchange-local."""

    exchange: str
    """The ``holidays`` financial calendar (ISO 10383 MIC)."""
    open: time
    close: time
    lunch: Session | None
    """The midday break of the continuous session, if any."""
    quote_sessions: tuple[Session, ...]
    """Windows that produce quotes: continuous sessions plus auctions / extended hours."""
    quote_tail: timedelta
    """How long quotes go on after the close (closing auction, after-hours)."""
    half_day_close: time | None
    """The close on the library's half days (None: the market has none)."""


HOURS: dict[Market, MarketHours] = {
    Market.CN: MarketHours(
        exchange="XSHG",
        open=time(9, 30),
        close=time(15, 0),
        lunch=(time(11, 30), time(13, 0)),
        quote_sessions=((time(9, 15), time(11, 30)), (time(13, 0), time(15, 0))),
        quote_tail=timedelta(0),
        half_day_close=None,
    ),
    Market.HK: MarketHours(
        exchange="XHKG",
        open=time(9, 30),
        close=time(16, 0),
        lunch=(time(12, 0), time(13, 0)),
        quote_sessions=((time(9, 0), time(12, 0)), (time(13, 0), time(16, 10))),
        quote_tail=timedelta(minutes=10),  # closing auction session
        half_day_close=time(12, 0),
    ),
    Market.US: MarketHours(
        exchange="XNYS",
        open=time(9, 30),
        close=time(16, 0),
        lunch=None,
        quote_sessions=((time(4, 0), time(20, 0)),),
        quote_tail=timedelta(hours=4),  # after-hours trading
        half_day_close=time(13, 0),
    ),
}


@dataclass(frozen=True)
class TradingDay:
    """One calendar date of one market."""

    market: Market
    day: date
    is_open: bool
    confirmed: bool
    """False: the year is past the calendar's confirmed horizon."""
    estimated: bool = False
    """The day's status (open, closed, half day) is the library's estimate for a year not
    confirmed yet: it may change when the year's arrangement is published. Weekends are
    never estimated."""
    half_day: bool = False
    close: time | None = None
    """The regular close (None when closed)."""
    quote_sessions: tuple[Session, ...] = ()
    note: str = ""
    """Why the day is what it is (holiday name, override source, horizon)."""


class CalendarFileError(ValueError):
    """A calendar override file is invalid; the message names the file and key."""


@dataclass(frozen=True)
class YearOverrides:
    """One ``<MARKET>/<YEAR>.yml`` file."""

    path: Path
    confirmed: bool
    source: str
    closed: frozenset[date] = frozenset()
    open: frozenset[date] = frozenset()
    half_days: dict[date, time] = field(default_factory=dict)


def _as_date(value: Any, where: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CalendarFileError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _as_time(value: Any, where: str) -> time:
    if isinstance(value, int):  # YAML 1.1 reads 12:00 as sexagesimal minutes
        return time(value // 60, value % 60)
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise CalendarFileError(f"{where}: {value!r} is not a time (HH:MM)") from None


def read_overrides(path: Path, year: int) -> YearOverrides:
    """Parse and check one override file (every date must fall in ``year``)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CalendarFileError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise CalendarFileError(f"{path}: <root>: expected a mapping")
    unknown = set(raw) - {"confirmed", "source", "closed", "open", "half_days"}
    if unknown:
        raise CalendarFileError(f"{path}: {sorted(unknown)[0]}: unknown key")
    confirmed = raw.get("confirmed")
    if not isinstance(confirmed, bool):
        raise CalendarFileError(f"{path}: confirmed: required, true or false")

    def dates(key: str) -> frozenset[date]:
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise CalendarFileError(f"{path}: {key}: expected a list of dates")
        out = {_as_date(v, f"{path}: {key}[{i}]") for i, v in enumerate(items)}
        for d in out:
            if d.year != year:
                raise CalendarFileError(f"{path}: {key}: {d} is not in {year}")
        return frozenset(out)

    halves_raw = raw.get("half_days") or {}
    if not isinstance(halves_raw, dict):
        raise CalendarFileError(f"{path}: half_days: expected a mapping of date: close time")
    halves = {_as_date(k, f"{path}: half_days"): _as_time(v, f"{path}: half_days.{k}") for k, v in halves_raw.items()}
    for d in halves:
        if d.year != year:
            raise CalendarFileError(f"{path}: half_days: {d} is not in {year}")
    return YearOverrides(
        path=path,
        confirmed=confirmed,
        source=str(raw.get("source", "")),
        closed=dates("closed"),
        open=dates("open"),
        half_days=halves,
    )


class TradingCalendar:
    """The trading calendar of one market: the library's dates, the override files, a horizon."""

    def __init__(self, market: Market, overrides_dir: Path = OVERRIDES_DIR) -> None:
        self.market = market
        self.hours = HOURS[market]
        self.timezone: ZoneInfo = MARKET_TIMEZONES[market]
        self._holidays = holidays.financial_holidays(self.hours.exchange)
        self._half_days = (
            holidays.financial_holidays(self.hours.exchange, categories=(holidays.HALF_DAY,))
            if self.hours.half_day_close is not None
            else None
        )
        self.overrides: dict[int, YearOverrides] = {}
        directory = overrides_dir / market.value
        if directory.is_dir():
            for path in sorted(directory.glob("*.yml")):
                if not path.stem.isdigit():
                    raise CalendarFileError(f"{path}: the file name must be the year, e.g. 2026.yml")
                year = int(path.stem)
                self.overrides[year] = read_overrides(path, year)
        self._history_before = min(self.overrides, default=0)

    def confirmed(self, year: int) -> bool:
        """Whether ``year``'s dates are known (a confirmed override file, or history)."""
        o = self.overrides.get(year)
        if o is not None:
            return o.confirmed
        return year < self._history_before

    @property
    def confirmed_through(self) -> int | None:
        """The last year of the unbroken run of confirmed years (None: none)."""
        confirmed = sorted(y for y, o in self.overrides.items() if o.confirmed)
        if not confirmed:
            return None
        last = self._history_before - 1
        for y in confirmed:
            if y != last + 1:
                break
            last = y
        return last

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - calendars live as long as the process
    def day(self, d: date) -> TradingDay:
        """What ``d`` is for this market (past the horizon: the library's estimate, marked)."""
        m = self.market
        confirmed = self.confirmed(d.year)
        if d.weekday() >= 5:
            return TradingDay(m, d, is_open=False, confirmed=confirmed, note="weekend")
        estimated = not confirmed
        est = f" (estimated: {m.value} {d.year} not confirmed)" if estimated else ""
        o = self.overrides.get(d.year)
        if o is not None and d in o.closed:
            return TradingDay(
                m,
                d,
                is_open=False,
                confirmed=confirmed,
                estimated=estimated,
                note=f"closed ({o.path.name}: {o.source}){est}",
            )
        opened = o is not None and d in o.open
        name = self._holidays.get(d)
        if name is not None and not opened:
            return TradingDay(m, d, is_open=False, confirmed=confirmed, estimated=estimated, note=f"{name}{est}")
        if o is not None and d in o.half_days:
            return self._half_day(d, o.half_days[d], confirmed, f"half day ({o.path.name}: {o.source}){est}")
        if self._half_days is not None and self.hours.half_day_close is not None:
            half = self._half_days.get(d)
            if half is not None:
                return self._half_day(d, self.hours.half_day_close, confirmed, f"{half}{est}")
        note = "open" if not opened else f"open ({o.path.name if o else ''})"
        return self._full_day(d, confirmed, note + est)

    def _full_day(self, d: date, confirmed: bool, note: str) -> TradingDay:
        h = self.hours
        return TradingDay(
            self.market,
            d,
            is_open=True,
            confirmed=confirmed,
            estimated=not confirmed,
            close=h.close,
            quote_sessions=h.quote_sessions,
            note=note,
        )

    def _half_day(self, d: date, close: time, confirmed: bool, note: str) -> TradingDay:
        h = self.hours
        limit = (datetime.combine(d, close) + h.quote_tail).time()
        kept = [(s, e) for s, e in h.quote_sessions if s < limit]
        sessions = (*kept[:-1], (kept[-1][0], limit)) if kept else ()
        return TradingDay(
            self.market,
            d,
            is_open=True,
            confirmed=confirmed,
            estimated=not confirmed,
            half_day=True,
            close=close,
            quote_sessions=sessions,
            note=note,
        )

    def is_trading_day(self, d: date) -> bool:
        return self.day(d).is_open

    def in_session(self, at: datetime) -> bool:
        """Whether the market produces quotes at ``at`` (aware)."""
        local = at.astimezone(self.timezone)
        t = local.time()
        return any(s <= t < e for s, e in self.day(local.date()).quote_sessions)

    def close_at(self, d: date) -> datetime | None:
        """The regular close of ``d`` as an aware datetime (None: not a trading day)."""
        td = self.day(d)
        return datetime.combine(d, td.close, self.timezone) if td.close is not None else None

    def next_trading_day(self, d: date) -> date:
        """The first trading day strictly after ``d``."""
        for i in range(1, 30):
            nxt = d + timedelta(days=i)
            if self.is_trading_day(nxt):
                return nxt
        raise ValueError(f"{self.market.value}: no trading day within 30 days after {d}")


@functools.cache
def calendar(market: Market | str) -> TradingCalendar:
    """The process-wide calendar of a market (override files read once)."""
    return TradingCalendar(Market(market))


def check_overrides(overrides_dir: Path = OVERRIDES_DIR) -> list[str]:
    """Every problem with the override files (empty: all good)."""
    problems = []
    for m in Market:
        try:
            TradingCalendar(m, overrides_dir)
        except CalendarFileError as e:
            problems.append(str(e))
    return problems
