"""Pure EastMoney minute history parsing: kline/trends2 answers → minute bars (no clock, no I/O).

Two endpoints on ``push2his.eastmoney.com`` answer the same envelope as push2
(``{"rc":0,...,"data":{"code":"600000","market":1,"decimal":2,...}}``, ``data`` null for an
unknown secid):

- ``/api/qt/stock/kline/get?secid=&klt=1&fqt=0&beg=YYYYMMDD&end=YYYYMMDD&lmt=&fields1=&fields2=f51..f61``
  → ``data.klines``: one comma-separated line per minute, in ``fields2`` order:
  f51 time ``YYYY-MM-DD HH:MM`` (exchange local, the minute's END), f52 open, f53 CLOSE,
  f54 high, f55 low (close before high and low!), f56 volume (lots of 100 shares for
  A-shares, as f5 on the live path), f57 amount, then f58 amplitude %, f59 change %, f60
  change, f61 turnover % (not read). No pagination: ``lmt`` caps the lines (the newest).
- ``/api/qt/stock/trends2/get?secid=&ndays=1..5&iscr=0&fields1=f1..f13&fields2=f51..f58``
  → ``data.trends``: the last ``ndays`` trading days, lines f51 time, f52 open, f53 close,
  f54 high, f55 low, f56 volume, f57 amount, f58 average price. The open is 0 on every day
  but the latest, so those minutes have no open: they are left out (``no_open``).

Prices are decimal strings (``decimal`` places); every session minute has a line, with
volume 0 where nothing traded: such a line is no trade and makes no bar. Which of our bars
a line belongs to is ``minute_lines.bar_start`` (end label, auctions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time

import msgspec

from services.feeder_gateway.feeders.minute_lines import Ohlcva, bar_start, merge_into
from shared.symbols import Market

KLINE_PATH = "/api/qt/stock/kline/get"
TRENDS_PATH = "/api/qt/stock/trends2/get"
KLINE_FIELDS1 = "f1,f2,f3,f4,f5,f6"
KLINE_FIELDS2 = "f51,f52,f53,f54,f55,f56,f57,f58,f59,f60,f61"
TRENDS_FIELDS1 = "f1,f2,f3,f4,f5,f6,f7,f8,f9,f10,f11,f12,f13"
TRENDS_FIELDS2 = "f51,f52,f53,f54,f55,f56,f57,f58"
TRENDS_MAX_DAYS = 5  # trends2 serves at most the last 5 trading days

# positions in a line (both endpoints)
_TIME, _OPEN, _CLOSE, _HIGH, _LOW, _VOLUME, _AMOUNT = range(7)
_MIN_FIELDS = 7


class MinuteData(msgspec.Struct):
    """``data`` of a kline or trends2 answer; unknown keys (name, decimal, preKPrice...) ignored."""

    code: str | None = None
    market: int | None = None
    klines: list[str] | None = None  # kline/get lines
    trends: list[str] | None = None  # trends2/get lines


class MinuteAnswer(msgspec.Struct):
    """The envelope: ``rc`` 0 is an answer; ``data`` null is an unknown secid."""

    rc: int = 0
    data: MinuteData | None = None


_decoder = msgspec.json.Decoder(MinuteAnswer)


class MinuteAnswerError(ValueError):
    """A body that is not a minute answer at all."""


def decode_answer(raw: bytes) -> MinuteAnswer:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise MinuteAnswerError(str(e)) from None


@dataclass
class ParsedMinutes:
    """The bars of one answer by start (UTC), and what was left out."""

    bars: dict[datetime, Ohlcva] = field(default_factory=dict)
    days: set[date] = field(default_factory=set)  # local days the answer has lines of
    bad: list[tuple[str, str]] = field(default_factory=list)  # (reason, line)
    no_open: set[datetime] = field(default_factory=set)  # starts of trends2 minutes of an earlier day (open 0)


def _label(text: str) -> tuple[date, time]:
    # "2024-03-04 09:31" (a trailing ":SS" tolerated)
    if len(text) < 16 or text[10] != " ":
        raise ValueError(text)
    return date.fromisoformat(text[:10]), time.fromisoformat(text[11:16])


def parse_lines(lines: list[str], market: Market, volume_unit: int, *, trends: bool = False) -> ParsedMinutes:
    """Lines of one answer → bars; a bad line is listed in ``bad`` and skipped.

    ``volume_unit``: shares per volume unit (100 for A-share lots). ``trends``: the lines
    are trends2's, whose open is 0 on all days but the latest.
    """
    out = ParsedMinutes()
    rows: list[tuple[date, time, list[str]]] = []
    for line in lines:
        parts = line.split(",") if type(line) is str else []
        if len(parts) < _MIN_FIELDS:
            out.bad.append(("short_line", str(line)[:120]))
            continue
        try:
            day, label = _label(parts[_TIME])
        except ValueError:
            out.bad.append(("bad_time", line[:120]))
            continue
        rows.append((day, label, parts))
        out.days.add(day)
    latest = max(out.days) if out.days else None
    for day, label, parts in rows:
        try:
            o, c, h, low, v, a = (float(parts[i]) for i in (_OPEN, _CLOSE, _HIGH, _LOW, _VOLUME, _AMOUNT))
        except ValueError:
            out.bad.append(("bad_number", ",".join(parts)[:120]))
            continue
        if not all(map(math.isfinite, (o, c, h, low, v, a))) or v < 0 or a < 0:
            out.bad.append(("bad_number", ",".join(parts)[:120]))
            continue
        if v == 0:
            continue  # no trade in the minute: no bar
        start = bar_start(market, day, label)
        if trends and o == 0 and day != latest:
            out.no_open.add(start)
            continue
        if not (0 < low <= min(o, c) and max(o, c) <= h):
            out.bad.append(("inconsistent_ohlc", ",".join(parts)[:120]))
            continue
        merge_into(out.bars, start, [o, h, low, c, v * volume_unit, a])
    return out
