"""The parameters of the control commands the daemons answer, one model per command.

The datamanager's handler parses them and the tasktimer's job checker reports the same
problems, so a job file is refused for exactly what the handler would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from shared.symbols import MARKET_TIMEZONES, Market, market_of


class ParamError(ValueError):
    """A bad parameter: ``field`` names it (``params.market``), the message says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class BarSnapshotParams:
    """``bar_snapshot``: every market (or ``market``), the market's trading day today (or
    ``date``), daily bars (or ``period: 1m``)."""

    markets: tuple[Market, ...] = tuple(Market)
    day: date | None = None
    period: str = "1d"

    KNOWN = frozenset({"market", "date", "period"})
    PERIODS = ("1d", "1m")

    @classmethod
    def problems(cls, params: Mapping[str, Any]) -> list[ParamError]:
        """Every problem of ``params``, in a stable order (empty: they parse)."""
        out = [
            ParamError(f"params.{key}", "unknown parameter of bar_snapshot (market, date, period)")
            for key in sorted(set(params) - cls.KNOWN)
        ]
        market = params.get("market")
        if market and str(market).upper() not in Market.__members__:
            out.append(ParamError("params.market", f"{market!r} is not a market (CN, HK, US)"))
        if "period" in params and params["period"] not in cls.PERIODS:
            out.append(ParamError("params.period", f"{params['period']!r} is not a period (1d, 1m)"))
        if params.get("date"):
            try:
                date.fromisoformat(str(params["date"]))
            except ValueError:
                out.append(ParamError("params.date", f"{params['date']!r} is not a date (YYYY-MM-DD)"))
        return out

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> BarSnapshotParams:
        """The parameters, or ParamError naming the first bad one."""
        problems = cls.problems(params)
        if problems:
            raise problems[0]
        market = params.get("market")
        day = params.get("date")
        return cls(
            markets=(Market(str(market).upper()),) if market else tuple(Market),
            day=date.fromisoformat(str(day)) if day else None,
            period=str(params.get("period", "1d")),
        )


def _instant(value: Any, market: Market, now: datetime) -> datetime:
    """An ISO-8601 time with a zone, or ``HH:MM`` meaning today in the market's timezone."""
    text = str(value).strip()
    try:
        clock = time.fromisoformat(text)
    except ValueError:
        clock = None
    if clock is not None and clock.tzinfo is None:
        tz = MARKET_TIMEZONES[market]
        return datetime.combine(now.astimezone(tz).date(), clock, tz).astimezone(UTC)
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("no timezone")
    return at.astimezone(UTC)


def _symbol_list(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(s).strip() for s in items if str(s).strip()))


@dataclass(frozen=True, slots=True)
class RepairBarsParams:
    """``repair_bars``: the minute bars of ``market`` (its ``symbols``, or every subscribed
    one) from ``from`` to ``to`` (ISO-8601 with a zone, or ``HH:MM`` today in the market's
    timezone; ``to`` defaults to now) made whole from the provider's minute history.
    ``timeout_s``: how long the answer waits for the provider before saying what is missing."""

    market: Market
    start: datetime
    end: datetime
    symbols: tuple[str, ...] = ()
    timeout_s: float = 60.0

    KNOWN = frozenset({"market", "symbols", "from", "to", "timeout_s"})
    MAX_WINDOW = timedelta(days=7)
    MAX_SYMBOLS = 10_000

    @classmethod
    def problems(cls, params: Mapping[str, Any], now: datetime | None = None) -> list[ParamError]:
        now = now or datetime.now(UTC)
        out = [
            ParamError(f"params.{key}", "unknown parameter of repair_bars (market, symbols, from, to, timeout_s)")
            for key in sorted(set(params) - cls.KNOWN)
        ]
        raw_market = params.get("market")
        market = Market(str(raw_market).upper()) if str(raw_market).upper() in Market.__members__ else None
        if market is None:
            problem = "required (CN, HK, US)" if not raw_market else f"{raw_market!r} is not a market (CN, HK, US)"
            out.append(ParamError("params.market", problem))
            return out
        symbols = _symbol_list(params.get("symbols") or ())
        if len(symbols) > cls.MAX_SYMBOLS:
            out.append(ParamError("params.symbols", f"{len(symbols)} symbols; at most {cls.MAX_SYMBOLS}"))
        for sym in symbols[:5]:
            try:
                if market_of(sym) is not market:
                    out.append(ParamError("params.symbols", f"{sym!r} is not a {market} symbol"))
            except ValueError as e:
                out.append(ParamError("params.symbols", str(e)))
        times: dict[str, datetime] = {}
        for key in ("from", "to"):
            if key not in params:
                if key == "from":
                    out.append(ParamError("params.from", "required (ISO-8601 with a zone, or HH:MM market time)"))
                continue
            try:
                times[key] = _instant(params[key], market, now)
            except ValueError:
                out.append(
                    ParamError(
                        f"params.{key}", f"{params[key]!r} is not a time (ISO-8601 with a zone, or HH:MM market time)"
                    )
                )
        start, end = times.get("from"), times.get("to", now)
        if start is not None and start >= end:
            out.append(ParamError("params.to", f"must be after from ({start.isoformat()})"))
        elif start is not None and end - start > cls.MAX_WINDOW:
            out.append(ParamError("params.from", "the window is longer than 7 days"))
        if "timeout_s" in params:
            try:
                t = float(params["timeout_s"])
                if not 0 < t <= 3600:
                    raise ValueError
            except (TypeError, ValueError):
                out.append(ParamError("params.timeout_s", f"{params['timeout_s']!r} is not seconds in (0, 3600]"))
        return out

    @classmethod
    def parse(cls, params: Mapping[str, Any], now: datetime | None = None) -> RepairBarsParams:
        """The parameters, or ParamError naming the first bad one."""
        now = now or datetime.now(UTC)
        problems = cls.problems(params, now)
        if problems:
            raise problems[0]
        market = Market(str(params["market"]).upper())
        return cls(
            market=market,
            start=_instant(params["from"], market, now),
            end=_instant(params["to"], market, now) if "to" in params else now,
            symbols=_symbol_list(params.get("symbols") or ()),
            timeout_s=float(params.get("timeout_s", 60.0)),
        )

    def as_params(self) -> dict[str, Any]:
        """The wire form (what a daemon that asks for a repair sends)."""
        return {
            "market": self.market.value,
            "symbols": list(self.symbols),
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "timeout_s": self.timeout_s,
        }


def command_param_problems(command: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for each bad parameter of a known command (unknown commands: none)."""
    if command == "bar_snapshot":
        return [(p.field, p.problem) for p in BarSnapshotParams.problems(params)]
    if command == "repair_bars":
        return [(p.field, p.problem) for p in RepairBarsParams.problems(params)]
    return []
