"""Which of our minute bars a provider's minute line belongs to: pure, no clock, no I/O.

Chinese providers (EastMoney kline/trends2, Tencent's minute query) label a minute by its
END, exchange-local: the line ``10:31`` is what traded in [10:30, 10:31), our bar 10:30
(bars are labelled by their start, UTC). Two lines hold an auction instead of a minute,
and go where the datamanager puts the auction's tick (the bar of the tick's own time):

- CN ``09:30`` (the first line of the day) is the opening call auction, matched at
  09:25: our bar 09:25, where the live 09:25 auction tick falls. ``15:00`` is the closing
  call auction (14:57-15:00, matched at 15:00:00; no continuous trading after 14:57), so
  its bar is 15:00, where the live tick stamped 15:00:00 falls, not 14:59.
- HK ``09:30`` is the pre-opening session's auction, matched from 09:20: our bar 09:20.
  HK's closing auction (16:00-16:10, matched at a random time from 16:08) is left to the
  plain rule: its line, if the provider has one, lands in the bar before its label.

US lines follow the plain rule. Several lines that land in one bar (a provider that
splits an auction from its minute) are merged (``merge_into``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from shared.symbols import MARKET_TIMEZONES, Market

_MINUTE = timedelta(minutes=1)

AUCTION_LINES: dict[Market, dict[time, time]] = {
    Market.CN: {time(9, 30): time(9, 25), time(15, 0): time(15, 0)},
    Market.HK: {time(9, 30): time(9, 20)},
    Market.US: {},
}
"""Line label → the start of the bar it belongs to, for the lines that hold an auction."""


def bar_start(market: Market, day: date, label: time) -> datetime:
    """The UTC start of our bar holding the provider line ``label`` of ``day`` (local)."""
    start = AUCTION_LINES[market].get(label)
    local = datetime.combine(day, start if start is not None else label, MARKET_TIMEZONES[market])
    if start is None:
        local -= _MINUTE
    return local.astimezone(UTC)


Ohlcva = list[float]  # [open, high, low, close, volume, amount]


def merge_into(bars: dict[datetime, Ohlcva], start: datetime, line: Ohlcva) -> None:
    """Fold one line (in time order) into the bar at ``start``: first open, highest high,
    lowest low, last close, volumes and amounts added."""
    bar = bars.get(start)
    if bar is None:
        bars[start] = list(line)
        return
    bar[1] = max(bar[1], line[1])
    bar[2] = min(bar[2], line[2])
    bar[3] = line[3]
    bar[4] += line[4]
    bar[5] += line[5]
