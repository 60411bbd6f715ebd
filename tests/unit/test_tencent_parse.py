"""Tencent line parsing from recorded answers: GBK names, field positions, HK time → UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.feeder_gateway.feeders.tencent.parse import (
    TencentParseError,
    UnknownCode,
    decode_body,
    parse_body,
    parse_line,
    parse_quote_time,
    split_lines,
    to_price_update,
)
from services.feeder_gateway.feeders.tencent.wire import code_of, symbol_of

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tencent"
RECV = datetime(2024, 3, 4, 8, 23, 11, tzinfo=UTC)


def _lines(name: str, encoding: str = "gbk") -> list[str]:
    text, clean = decode_body((FIXTURES / name).read_bytes(), encoding)
    assert clean
    return split_lines(text)


def test_gbk_answer_decodes_chinese_names() -> None:
    lines = _lines("quotes_gbk.txt")
    parsed = [parse_line(line) for line in lines if "none_match" not in line]
    names = {code: fields[1] for code, fields in parsed}
    assert names == {
        "r_hk00700": "腾讯控股",
        "r_hk00005": "汇丰控股",
        "r_hk09988": "阿里巴巴\uff0d\uff37",  # full-width "-W"
        "r_hk01299": "友邦保险",
    }
    assert all(len(fields) >= 70 for _, fields in parsed)


def test_gbk_bytes_are_not_utf8() -> None:
    raw = (FIXTURES / "quotes_gbk.txt").read_bytes()
    text, clean = decode_body(raw, "utf-8")
    assert not clean and "腾讯控股" not in text  # the encoding setting matters
    utf8 = (FIXTURES / "quotes_utf8.txt").read_bytes()
    assert decode_body(raw, "gbk")[0] == decode_body(utf8, "utf-8")[0]


def test_fields_to_price_update() -> None:
    code, fields = parse_line(_lines("quotes_gbk.txt")[0])
    t = to_price_update(code, fields, "tencent", RECV)
    assert t.symbol == "00700.HK"
    assert t.price == 322.4
    assert t.volume == 12_345_678  # day cumulative, shares
    assert t.amount == 3_981_234_567.89
    assert (t.open_price, t.high_price, t.low_price) == (322.0, 325.0, 320.0)
    assert t.bid_price is None and t.last_size is None  # not in the documented field set
    # field [30] "2024/03/04 16:08:10" is Hong Kong time (UTC+8): 08:08:10 UTC
    assert t.timestamp == datetime(2024, 3, 4, 8, 8, 10, tzinfo=UTC)
    assert t.timestamp.utcoffset() is not None and t.timestamp.tzinfo is UTC
    assert t.delayed is True
    assert t.receive_time == RECV
    assert t.source == "tencent"


def test_whole_answer() -> None:
    ticks, bad = parse_body((FIXTURES / "quotes_gbk.txt").read_bytes(), "gbk", "tencent", RECV)
    assert [t.symbol for t in ticks] == ["00700.HK", "00005.HK", "09988.HK", "01299.HK"]
    assert bad == [("unknown_code", 'v_pv_none_match="1";')]
    assert all(t.delayed for t in ticks)
    hsbc = ticks[1]
    assert (hsbc.price, hsbc.volume, hsbc.amount) == (61.25, 20_456_800, 1_252_345_678.5)
    assert hsbc.timestamp == datetime(2024, 3, 4, 8, 8, 9, tzinfo=UTC)


def test_pre_open_quote_has_no_day_prices() -> None:
    ticks, _ = parse_body((FIXTURES / "quotes_gbk.txt").read_bytes(), "gbk", "tencent", RECV)
    aia = ticks[3]
    assert aia.price == 63.8 and aia.volume == 0
    assert aia.open_price is None and aia.high_price is None and aia.low_price is None
    assert aia.timestamp == datetime(2024, 3, 5, 1, 0, 5, tzinfo=UTC)


def test_unknown_code_line() -> None:
    with pytest.raises(UnknownCode):
        parse_line('v_pv_none_match="1";')
    with pytest.raises(UnknownCode):
        parse_line('v_r_hk99999="";')


def test_garbage_lines_each_fail_with_a_reason() -> None:
    lines = _lines("garbage_lines.txt")
    reasons = []
    for line in lines:
        try:
            code, fields = parse_line(line)
            to_price_update(code, fields, "tencent", RECV)
            reasons.append("ok")
        except TencentParseError as e:
            reasons.append(e.reason)
    assert reasons == [
        "bad_line",
        "short_line",
        "bad_time",
        "bad_last",
        "no_price",
        "code_mismatch",
        "bad_code",
        "bad_line",
        "ok",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024/03/04 09:30:00", datetime(2024, 3, 4, 1, 30, tzinfo=UTC)),
        ("2024/03/04 16:10:00", datetime(2024, 3, 4, 8, 10, tzinfo=UTC)),
        ("2024/01/01 07:59:59", datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)),  # crosses midnight
        ("2024/07/15 12:00:00", datetime(2024, 7, 15, 4, 0, tzinfo=UTC)),  # no DST in HK
    ],
)
def test_quote_time_table(text: str, expected: datetime) -> None:
    assert parse_quote_time(text) == expected


@pytest.mark.parametrize(
    "text",
    ["20240304160810", "2024-03-04 16:08:10", "2024/13/04 16:08:10", "", "2024/03/04 16:08"],
)
def test_bad_quote_times(text: str) -> None:
    with pytest.raises(TencentParseError):
        parse_quote_time(text)


def test_code_mapping() -> None:
    assert code_of("00700.HK") == "r_hk00700"
    assert symbol_of("r_hk00005") == "00005.HK"
    assert code_of("600000.SH") is None and code_of("AAPL") is None
