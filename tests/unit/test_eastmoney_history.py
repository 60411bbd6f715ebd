"""EastMoney minute history parsing from recorded-shape answers: field order, lots, end labels, auctions, bad lines."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from services.feeder_gateway.feeders.eastmoney.minutes import MinuteAnswerError, decode_answer, parse_lines
from services.feeder_gateway.feeders.minute_lines import bar_start, merge_into
from shared.symbols import Market

# A kline/get answer as push2his shapes it (klt=1, fqt=0, fields2=f51..f61), trimmed.
KLINE = (
    b'{"rc":0,"rt":17,"svr":181669449,"lt":1,"full":0,"dlmkts":"","data":{"code":"600000","market":1,'
    b'"name":"\xe6\xb5\xa6\xe5\x8f\x91\xe9\x93\xb6\xe8\xa1\x8c","decimal":2,"dktotal":4870,"preKPrice":10.45,"klines":['
    b'"2024-03-04 09:30,10.46,10.46,10.46,10.46,3061,3201806.00,0.00,0.10,0.01,0.01",'
    b'"2024-03-04 09:31,10.46,10.50,10.52,10.45,12345,12941234.00,0.67,0.38,0.04,0.04",'
    b'"2024-03-04 09:32,10.50,10.49,10.51,10.48,0,0.00,0.29,-0.10,-0.01,0.00",'
    b'"2024-03-04 11:30,10.55,10.56,10.57,10.55,800,844800.00,0.19,0.10,0.01,0.00",'
    b'"2024-03-04 13:01,10.56,10.54,10.56,10.53,900,948600.00,0.28,-0.19,-0.02,0.00",'
    b'"2024-03-04 14:58,10.54,10.54,10.54,10.54,0,0.00,0.00,0.00,0.00,0.00",'
    b'"2024-03-04 15:00,10.53,10.53,10.53,10.53,5200,5475600.00,0.00,-0.09,-0.01,0.02"]}}'
)


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_kline_field_order_lots_and_end_labels() -> None:
    env = decode_answer(KLINE)
    assert env.rc == 0 and env.data is not None and env.data.klines is not None
    parsed = parse_lines(env.data.klines, Market.CN, 100)
    assert parsed.bad == [] and parsed.days == {date(2024, 3, 4)}
    bars = parsed.bars
    # 09:31 is [09:30, 09:31) local = 01:30 UTC; f52 open, f53 CLOSE, f54 high, f55 low
    assert bars[utc(2024, 3, 4, 1, 30)] == [10.46, 10.52, 10.45, 10.50, 1_234_500.0, 12_941_234.0]
    # the 09:30 line is the opening call auction, matched at 09:25: the bar of the live auction tick
    assert bars[utc(2024, 3, 4, 1, 25)] == [10.46, 10.46, 10.46, 10.46, 306_100.0, 3_201_806.0]
    assert utc(2024, 3, 4, 3, 29) in bars  # 11:30 → 11:29
    assert utc(2024, 3, 4, 5, 0) in bars  # 13:01 → 13:00
    # 15:00 is the closing call auction, matched at 15:00:00: bar 15:00, not 14:59
    assert bars[utc(2024, 3, 4, 7, 0)][4] == 520_000.0
    assert utc(2024, 3, 4, 6, 59) not in bars
    # zero-volume lines (09:32, 14:58) are minutes without a trade: no bar
    assert utc(2024, 3, 4, 1, 31) not in bars and utc(2024, 3, 4, 6, 57) not in bars
    assert len(bars) == 5


def test_hk_and_us_codes_report_shares_and_their_own_auctions() -> None:
    hk = parse_lines(
        [
            "2024-03-04 09:30,300.200,300.200,300.200,300.200,120000,36024000.000",
            "2024-03-04 16:00,301.0,301.2,301.4,300.8,5000,1506000.0",
        ],
        Market.HK,
        1,
    )
    # HK's 09:30 line is the pre-opening auction (matching from 09:20)
    assert hk.bars[utc(2024, 3, 4, 1, 20)][4] == 120_000.0
    assert utc(2024, 3, 4, 7, 59) in hk.bars  # 16:00 → 15:59
    us = parse_lines(
        [
            "2024-03-04 09:31,180.10,180.20,180.30,180.00,1500,270300.00",
            "2024-07-01 09:31,200.0,200.0,200.0,200.0,10,2000.0",
        ],
        Market.US,
        1,
    )
    # plain end label; New York in EST (UTC-5) then EDT (UTC-4)
    assert set(us.bars) == {utc(2024, 3, 4, 14, 30), utc(2024, 7, 1, 13, 30)}


def test_malformed_lines_are_listed_and_skipped() -> None:
    parsed = parse_lines(
        [
            "2024-03-04 10:01,10.0,10.1,10.2,9.9,100,1000.0",
            "2024-03-04 10:02,10.0,10.1",  # short
            "2024-03-04T10:03,10.0,10.1,10.2,9.9,100,1000.0",  # bad time
            "2024-03-04 10:04,10.0,x,10.2,9.9,100,1000.0",  # bad number
            "2024-03-04 10:05,10.0,10.1,10.2,9.9,-5,1000.0",  # negative volume
            "2024-03-04 10:06,10.0,10.3,10.2,9.9,100,1000.0",  # close above high
            "2024-03-04 10:07,10.0,10.1,10.2,9.9,nan,1000.0",
            "2024-03-04 10:08,10.0,10.1,10.2,9.9,100,1000.0",
        ],
        Market.CN,
        100,
    )
    assert [r for r, _ in parsed.bad] == [
        "short_line",
        "bad_time",
        "bad_number",
        "bad_number",
        "inconsistent_ohlc",
        "bad_number",
    ]
    assert sorted(parsed.bars) == [utc(2024, 3, 4, 2, 0), utc(2024, 3, 4, 2, 7)]


def test_trends2_has_no_open_before_its_latest_day() -> None:
    lines = [
        "2024-03-01 10:01,0.00,10.10,10.20,10.00,100,101000.00,10.10",
        "2024-03-01 10:02,0.00,10.12,10.15,10.05,0,0.00,10.10",
        "2024-03-04 10:01,10.30,10.31,10.35,10.28,200,206200.00,10.31",
    ]
    parsed = parse_lines(lines, Market.CN, 100, trends=True)
    assert parsed.no_open == {utc(2024, 3, 1, 2, 0)}  # the zero-volume 10:02 is no trade, not a gap
    assert list(parsed.bars) == [utc(2024, 3, 4, 2, 0)]
    assert parsed.bars[utc(2024, 3, 4, 2, 0)] == [10.30, 10.35, 10.28, 10.31, 20_000.0, 206_200.0]
    # kline lines of any day keep their open (no such rule there)
    assert parse_lines(lines[:1], Market.CN, 100).bad == [("inconsistent_ohlc", lines[0])]


def test_envelopes() -> None:
    assert decode_answer(b'{"rc":0,"data":null}').data is None
    assert decode_answer(b'{"rc":102,"data":null}').rc == 102
    with pytest.raises(MinuteAnswerError):
        decode_answer(b"<html>captcha</html>")
    with pytest.raises(MinuteAnswerError):
        decode_answer(b'{"rc":0,"data":{"klines":"2024-03-04 09:31"}}')


@pytest.mark.parametrize(
    ("market", "label", "start"),
    [
        (Market.CN, time(9, 30), utc(2024, 3, 4, 1, 25)),
        (Market.CN, time(9, 31), utc(2024, 3, 4, 1, 30)),
        (Market.CN, time(14, 57), utc(2024, 3, 4, 6, 56)),
        (Market.CN, time(15, 0), utc(2024, 3, 4, 7, 0)),
        (Market.HK, time(9, 30), utc(2024, 3, 4, 1, 20)),
        (Market.HK, time(9, 31), utc(2024, 3, 4, 1, 30)),
        (Market.HK, time(16, 10), utc(2024, 3, 4, 8, 9)),
        (Market.US, time(9, 30), utc(2024, 3, 4, 14, 29)),
        (Market.US, time(0, 0), utc(2024, 3, 4, 4, 59)),  # midnight's line is the previous day's last minute
    ],
)
def test_bar_start_table(market: Market, label: time, start: datetime) -> None:
    assert bar_start(market, date(2024, 3, 4), label) == start


def test_lines_of_one_bar_merge() -> None:
    bars: dict[datetime, list[float]] = {}
    t = utc(2024, 3, 4, 1, 25)
    merge_into(bars, t, [10.0, 10.0, 10.0, 10.0, 100.0, 1000.0])
    merge_into(bars, t, [10.1, 10.3, 9.8, 10.2, 50.0, 510.0])
    assert bars[t] == [10.0, 10.3, 9.8, 10.2, 150.0, 1510.0]
