"""What a feeder's minute history is: the provider's own 1-minute bars for a window.

A feeder that can fetch its provider's minute bars offers a ``MinuteHistory`` from
``Feeder.history()``. The gateway's repair worker (``services/feeder_gateway/repair.py``)
asks it for the bars of a hole and publishes them as ``HistoryBars``; the datamanager
merges them. A history shares its provider's request budget with the live connection
(one pacer per host) and leaves the live connection its share: a repair waits, the live
feed does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from shared.dto import HISTORY_FIELDS


@dataclass(frozen=True, slots=True)
class MinuteBar:
    """One provider minute: ``start`` is the minute's start (UTC, whole minute); volume in
    shares (lots already multiplied out), amount in the quote currency."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    amount: float

    def row(self) -> tuple[float, float, float, float, float, float, float]:
        """The ``HistoryBars.bars`` form: (epoch ms, o, h, l, c, volume, amount)."""
        return (
            float(int(self.start.timestamp() * 1000)),
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.amount,
        )


class MinuteBars(dict[str, list[MinuteBar]]):
    """What ``minute_bars`` may return: bars by canonical symbol, plus ``note`` (None, or
    what the answer stood in for, e.g. minutes another feed supplied: ``HistoryBars.reason``)."""

    note: str | None = None


class HistoryUnavailable(Exception):
    """The history endpoint cannot answer now (outage, rate limit, server error): retry
    later, after ``retry_after_s`` when the provider said how long."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HistoryOutOfReach(Exception):
    """The provider's minute history no longer reaches back to the window: retrying will
    not help."""


class HistoryConfigError(Exception):
    """Our settings are refused by the history endpoint (key, plan): names the setting."""


class MinuteHistory(Protocol):
    """A provider's minute history, as one feeder offers it."""

    @property
    def source(self) -> str:
        """The feeder's name (``HistoryBars.source``)."""
        ...

    @property
    def fields(self) -> tuple[str, ...]:
        """Which of HISTORY_FIELDS the bars carry truly (Tencent: close, volume, amount)."""
        ...

    @property
    def max_symbols_per_request(self) -> int:
        """How many symbols one ``minute_bars`` call should be given at most."""
        ...

    @property
    def settle_s(self) -> float:
        """How long after a minute ends the provider's bar of it is final."""
        ...

    def reaches(self, start: datetime, now: datetime) -> bool:
        """Whether the history still holds minutes from ``start`` (False: out of reach)."""
        ...

    async def minute_bars(
        self, symbols: Sequence[str], start: datetime, end: datetime
    ) -> dict[str, list[MinuteBar]]:
        """Every provider minute of ``symbols`` with ``start <= minute start < end``.

        Symbols are canonical (``AAPL``, ``600000.SH``, ``00700.HK``); a symbol with no
        trade in the window maps to an empty list (or is absent). Pages through the
        provider's pagination; waits at the host's pacer before every request. Raises
        HistoryUnavailable (retry later), HistoryOutOfReach, HistoryConfigError.
        """
        ...


ALL_FIELDS = HISTORY_FIELDS
CLOSE_VOLUME_AMOUNT = ("close", "volume", "amount")


def minute_floor(t: datetime) -> datetime:
    """The start of ``t``'s minute."""
    return t.replace(second=0, microsecond=0)


def minute_ceil(t: datetime) -> datetime:
    """The first minute start at or after ``t``."""
    floor = minute_floor(t)
    return floor if floor == t else floor + timedelta(minutes=1)
