"""Tencent minute-line parsing from a recorded-shape answer: cumulative differences, end labels, bad lines."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.feeder_gateway.feeders.tencent.minutes import MinuteQueryError, day_of, decode_answer, parse_day

# minute/query?code=hk00700 as Tencent shapes it, trimmed (qt holds the quote line's fields)
ANSWER = (
    '{"code":0,"msg":"","data":{"hk00700":{"data":{"data":['
    '"0930 380.200 1203400 457532680.000",'
    '"0931 380.600 1390400 528705680.000",'
    '"0932 380.600 1390400 528705680.000",'
    '"0933 380.000 1450400 551505680.000",'
    '"1200 381.000 2450400 932505680.000",'
    '"1300 381.000 2450400 932505680.000",'
    '"1301 381.400 2460400 936319680.000"'
    '],"date":"20240304"},"qt":{"hk00700":["100","腾讯控股","00700","381.400"],'
    '"market":["2024-03-04 13:16:10|HK_open"]}}}}'
).encode()


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_cumulative_differences_by_minute() -> None:
    env = decode_answer(ANSWER)
    assert env.code == 0 and isinstance(env.data, dict)
    entry = env.data["hk00700"]
    assert entry.data is not None and day_of(entry.data.date) == date(2024, 3, 4)
    parsed = parse_day(entry.data.data, date(2024, 3, 4))
    assert parsed.bad == [] and parsed.unknown == 0
    bars = parsed.bars
    # the first line (09:30) is the pre-opening auction: bar 09:20 HK = 01:20 UTC, the whole figure
    assert bars[utc(2024, 3, 4, 1, 20)] == [380.2, 380.2, 380.2, 380.2, 1_203_400.0, 457_532_680.0]
    # 09:31 is [09:30, 09:31): the difference of the two cumulative figures, o = h = l = c
    v, a = bars[utc(2024, 3, 4, 1, 30)][4:]
    assert bars[utc(2024, 3, 4, 1, 30)][:4] == [380.6] * 4
    assert v == 187_000.0 and a == pytest.approx(71_173_000.0)
    # 09:32 and 13:00 repeat the figures: nothing traded, no bar
    assert utc(2024, 3, 4, 1, 31) not in bars and utc(2024, 3, 4, 4, 59) not in bars
    assert bars[utc(2024, 3, 4, 1, 32)][4] == 60_000.0
    assert bars[utc(2024, 3, 4, 3, 59)][4] == 1_000_000.0  # 12:00 → 11:59
    assert bars[utc(2024, 3, 4, 5, 0)][4] == 10_000.0  # 13:01 → 13:00
    assert len(bars) == 5


def test_a_bad_line_also_leaves_out_the_next_minute() -> None:
    parsed = parse_day(
        [
            "0930 10.0 1000 10000.0",
            "0931 10.1 2000",  # short: counted
            "0932 10.2 3000 30200.0",  # its difference would span 09:30-09:32: unknown
            "0933 10.3 4000 40500.0",
            "0934 x 5000 50800.0",  # bad number
            "0935 10.4 6000 61200.0",  # unknown
            "0936 10.5 5500 56000.0",  # a decrease (a correction): unknown
            "0937 10.6 6500 66600.0",
            "0937 10.6 7500 77200.0",  # out of order
            "9999 10.6 8500 87800.0",  # bad label
        ],
        date(2024, 3, 4),
    )
    assert [r for r, _ in parsed.bad] == [
        "bad_minute_line",
        "bad_minute_line",
        "minute_out_of_order",
        "bad_minute_line",
    ]
    assert parsed.unknown == 3
    assert sorted(parsed.bars) == [utc(2024, 3, 4, 1, 20), utc(2024, 3, 4, 1, 32), utc(2024, 3, 4, 1, 36)]
    assert parsed.bars[utc(2024, 3, 4, 1, 36)][4:] == [1000.0, pytest.approx(10_600.0)]


def test_envelopes() -> None:
    assert decode_answer(b'{"code":-1,"msg":"param error","data":[]}').code == -1
    empty = decode_answer(b'{"code":0,"msg":"","data":{"hk99999":{"data":{"data":[],"date":"20240304"}}}}')
    assert isinstance(empty.data, dict) and empty.data["hk99999"].data is not None
    with pytest.raises(MinuteQueryError):
        decode_answer(b"min_data=<html></html>")
    with pytest.raises(ValueError):
        day_of("2024-03-04")
