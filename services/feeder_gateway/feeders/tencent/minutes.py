"""Pure Tencent minute-line parsing: today's ``minute/query`` answer → minute bars (no clock, no I/O).

``GET {history_base_url}/appstock/app/minute/query?code=hk00700`` answers JSON
``{"code":0,"msg":"","data":{"hk00700":{"data":{"data":[...],"date":"YYYYMMDD"},"qt":{...}}}}``:
one line per session minute of the latest day, ``"HHMM price cumvol cumamount"`` (space
separated; HK local time, as delayed as the quotes). A line is the state at its label
(the END of a minute): the price then, and the day's CUMULATIVE volume (shares for HK)
and amount up to then. The minute before a label traded the difference of two
consecutive lines; the day's first line (09:30) holds the pre-opening auction. Only the
close of each minute is known, so a bar has open = high = low = close (the history's
fields are close, volume and amount).

A malformed line is skipped and so is the line after it (its difference would span two
minutes); a cumulative figure that goes down (a correction) makes no bar either. A zero
difference is no trade: no bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time

import msgspec

from services.feeder_gateway.feeders.minute_lines import Ohlcva, bar_start, merge_into
from shared.symbols import Market

MINUTE_PATH = "/appstock/app/minute/query"


class DayLines(msgspec.Struct):
    """``data.<code>.data``: the day's lines and its date."""

    data: list[str] = []
    date: str = ""  # YYYYMMDD


class CodeMinutes(msgspec.Struct):
    """``data.<code>``; ``qt`` (the quote line's fields) and others ignored."""

    data: DayLines | None = None


class MinuteQueryAnswer(msgspec.Struct):
    """The envelope: ``code`` 0 is an answer."""

    code: int = 0
    msg: str = ""
    data: dict[str, CodeMinutes] | list[object] | None = None  # [] when nothing is known


_decoder = msgspec.json.Decoder(MinuteQueryAnswer)


class MinuteQueryError(ValueError):
    """A body that is not a minute-query answer."""


def decode_answer(raw: bytes) -> MinuteQueryAnswer:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise MinuteQueryError(str(e)) from None


def day_of(text: str) -> date:
    """``20241203`` → date; raises ValueError."""
    if len(text) != 8 or not text.isdigit():
        raise ValueError(text)
    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


@dataclass
class ParsedDay:
    """One day's bars by start (UTC) and the lines left out."""

    bars: dict[datetime, Ohlcva] = field(default_factory=dict)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (reason, line), counted as malformed
    unknown: int = 0  # good lines whose minute is unknown (after a bad line, a decrease)


def _label(text: str) -> time:
    if len(text) != 4 or not text.isdigit():
        raise ValueError(text)
    return time(int(text[:2]), int(text[2:]))


def parse_day(lines: list[str], day: date, market: Market = Market.HK) -> ParsedDay:
    """The minutes of one day's lines (in order)."""
    out = ParsedDay()
    prev_v = prev_a = 0.0
    prev_label: time | None = None
    known = True  # the previous line was good, so this one's difference is one minute's
    for line in lines:
        parts = line.split() if type(line) is str else []
        try:
            if len(parts) < 4:
                raise ValueError("short")
            label = _label(parts[0])
            price, cum_v, cum_a = float(parts[1]), float(parts[2]), float(parts[3])
            if not all(map(math.isfinite, (price, cum_v, cum_a))) or price <= 0 or cum_v < 0 or cum_a < 0:
                raise ValueError("number")
        except ValueError:
            out.bad.append(("bad_minute_line", str(line)[:120]))
            known = False
            continue
        if prev_label is not None and label <= prev_label:
            out.bad.append(("minute_out_of_order", line[:120]))
            known = False
            continue
        dv, da = cum_v - prev_v, cum_a - prev_a
        prev_v, prev_a, prev_label = cum_v, cum_a, label
        if not known or dv < 0 or da < 0:
            out.unknown += 1
            known = True
            continue
        if dv == 0:
            continue  # nothing traded in the minute
        merge_into(out.bars, bar_start(market, day, label), [price, price, price, price, dv, da])
    return out
