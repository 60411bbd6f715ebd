"""The parameters of the control commands the daemons answer, one model per command.

The datamanager's handler parses them and the tasktimer's job checker reports the same
problems, so a job file is refused for exactly what the handler would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from shared.symbols import Market


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


def command_param_problems(command: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for each bad parameter of a known command (unknown commands: none)."""
    if command == "bar_snapshot":
        return [(p.field, p.problem) for p in BarSnapshotParams.problems(params)]
    return []
