"""Pure Tencent parsers: body → lines → (code, fields) → PriceUpdate (no clock, no I/O)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from services.feeder_gateway.feeders.tencent.wire import (
    CODE_PREFIX,
    F_AMOUNT,
    F_CODE,
    F_HIGH,
    F_LAST,
    F_LOW,
    F_OPEN,
    F_TIME,
    F_VOLUME,
    LINE_PREFIX,
    MIN_FIELDS,
    NO_MATCH_PREFIX,
)
from shared.dto import PriceUpdate
from shared.symbols import MARKET_TIMEZONES, Market

HK_TZ = MARKET_TIMEZONES[Market.HK]
_DIGITS_AT = len(CODE_PREFIX)
_CODE_LEN = _DIGITS_AT + 5


class TencentParseError(ValueError):
    """A line or field that does not follow the format; ``reason`` labels the metric."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class UnknownCode(TencentParseError):
    """The ``v_pv_none_match="1";`` line Tencent sends for a code it does not know."""

    def __init__(self, line: str) -> None:
        super().__init__("unknown_code", line[:60])


def decode_body(body: bytes, encoding: str) -> tuple[str, bool]:
    """The response text, and whether it decoded cleanly (bad bytes become U+FFFD)."""
    try:
        return body.decode(encoding), True
    except UnicodeDecodeError:
        return body.decode(encoding, "replace"), False


def split_lines(text: str) -> list[str]:
    """The non-blank lines of a response (lines end with ``;`` and ``\\n``)."""
    return [line for raw in text.split("\n") if (line := raw.strip())]


def parse_line(line: str) -> tuple[str, list[str]]:
    """``v_r_hk00700="f0~f1~...";`` → ("r_hk00700", ["f0", "f1", ...]).

    Raises UnknownCode for the no-match line and TencentParseError for anything that
    is not a well-formed HK quote line.
    """
    eq = line.find('="')
    if not line.startswith(LINE_PREFIX) or eq < 0:
        raise TencentParseError("bad_line", line[:80])
    end = len(line) - 1 if line.endswith(";") else len(line)
    if end <= eq + 2 or line[end - 1] != '"':
        raise TencentParseError("bad_line", line[:80])
    var = line[len(LINE_PREFIX) : eq]
    payload = line[eq + 2 : end - 1]
    if var.startswith(NO_MATCH_PREFIX) or not payload or payload == "1":
        raise UnknownCode(line)
    if not var.startswith(CODE_PREFIX) or len(var) != _CODE_LEN or not var[_DIGITS_AT:].isdigit():
        raise TencentParseError("bad_code", var[:40])
    fields = payload.split("~")
    if len(fields) < MIN_FIELDS:
        raise TencentParseError("short_line", f"{var}: {len(fields)} fields")
    return var, fields


@functools.lru_cache(maxsize=8192)
def parse_quote_time(text: str) -> datetime:
    """Field 30, ``2024/03/04 16:08:10`` in Asia/Hong_Kong → aware UTC datetime.

    Cached: the codes of one answer mostly share a handful of seconds, and a cache hit
    costs a tenth of a parse.
    """
    if len(text) != 19 or text[4:11:3] != "// " or text[13:17:3] != "::":
        raise TencentParseError("bad_time", repr(text))
    try:
        local = datetime.fromisoformat(text.replace("/", "-"))
    except ValueError:
        raise TencentParseError("bad_time", repr(text)) from None
    return local.replace(tzinfo=HK_TZ).astimezone(UTC)


def _number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TencentParseError(f"bad_{field}", repr(text[:20])) from None
    if not value >= 0:  # also rejects nan
        raise TencentParseError(f"bad_{field}", repr(text[:20]))
    return value


def _day_price(text: str, field: str) -> float | None:
    """Open/high/low: empty or 0 before the first trade of the day → None."""
    if not text or text == "-":
        return None
    return _number(text, field) or None


def to_price_update(
    code: str, fields: list[str], source: str, receive_time: datetime
) -> PriceUpdate:
    """One parsed line → PriceUpdate (``delayed=True``; time from field 30).

    Numbers are decimal strings with up to 3 places; ``float()`` of such a string is the
    nearest double, exact for every HK tick size, so no rounding is applied.
    """
    digits = code[_DIGITS_AT:]
    if fields[F_CODE] != digits:
        raise TencentParseError("code_mismatch", f"{code} carries {fields[F_CODE]!r}")
    price = _number(fields[F_LAST], "last")
    if price == 0:
        raise TencentParseError("no_price", code)
    return PriceUpdate(
        symbol=f"{digits}.HK",
        price=price,
        timestamp=parse_quote_time(fields[F_TIME]),
        source=source,
        volume=_number(fields[F_VOLUME], "volume"),
        amount=_number(fields[F_AMOUNT], "amount"),
        open_price=_day_price(fields[F_OPEN], "open"),
        high_price=_day_price(fields[F_HIGH], "high"),
        low_price=_day_price(fields[F_LOW], "low"),
        receive_time=receive_time,
        delayed=True,
    )


def parse_body(
    body: bytes, encoding: str, source: str, receive_time: datetime
) -> tuple[list[PriceUpdate], list[tuple[str, str]]]:
    """Every good line of a body as a PriceUpdate, plus (reason, line) for each bad one."""
    text, _clean = decode_body(body, encoding)
    out: list[PriceUpdate] = []
    bad: list[tuple[str, str]] = []
    for line in split_lines(text):
        try:
            code, fields = parse_line(line)
            out.append(to_price_update(code, fields, source, receive_time))
        except TencentParseError as e:
            bad.append((e.reason, line))
    return out, bad
