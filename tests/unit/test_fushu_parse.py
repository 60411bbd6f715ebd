"""FuShu response parsing from recorded bodies: numbers, timestamps (naive = HK), bad items."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.feeder_gateway.feeders.fushu.parse import (
    FushuParseError,
    decode_response,
    parse_response,
    parse_timestamp,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fushu"
RECV = datetime(2024, 3, 4, 8, 8, 11, tzinfo=UTC)


def test_response_items() -> None:
    ticks, bad = parse_response((FIXTURES / "tick_response.json").read_bytes(), "fushu", RECV)
    assert bad == []
    assert [t.symbol for t in ticks] == ["00700.HK", "00005.HK", "09988.HK", "01299.HK"]
    tencent = ticks[0]
    assert tencent.price == 322.4
    assert tencent.volume == 12_345_678  # day cumulative, shares
    assert (tencent.bid_price, tencent.ask_price) == (322.2, 322.6)
    assert (tencent.bid_volume, tencent.ask_volume) == (12_000, 8_000)
    assert tencent.timestamp == datetime(2024, 3, 4, 8, 8, 10, 250_000, tzinfo=UTC)
    assert tencent.timestamp.tzinfo is UTC
    assert tencent.receive_time == RECV and tencent.source == "fushu" and not tencent.delayed
    assert tencent.last_size is None  # a snapshot, not a trade


def test_z_and_offset_timestamps_keep_their_instant() -> None:
    ticks, _ = parse_response((FIXTURES / "tick_response.json").read_bytes(), "fushu", RECV)
    assert ticks[1].timestamp == datetime(2024, 3, 4, 8, 8, 9, tzinfo=UTC)


def test_naive_timestamp_is_hong_kong_time_and_numeric_strings_accepted() -> None:
    ticks, _ = parse_response((FIXTURES / "tick_response.json").read_bytes(), "fushu", RECV)
    baba = ticks[2]
    assert baba.timestamp == datetime(2024, 3, 4, 8, 8, 10, tzinfo=UTC)  # 16:08:10 HKT
    assert baba.price == 72.35 and baba.volume == 30_123_400
    assert baba.bid_price is None and baba.ask_volume is None


def test_symbol_normalized_zero_bid_is_none_nanoseconds_truncated() -> None:
    ticks, _ = parse_response((FIXTURES / "tick_response.json").read_bytes(), "fushu", RECV)
    aia = ticks[3]
    assert aia.symbol == "01299.HK"
    assert aia.bid_price is None and aia.ask_price == 63.85 and aia.bid_volume == 0
    assert aia.timestamp == datetime(2024, 3, 5, 1, 0, 5, 123_456, tzinfo=UTC)


def test_bad_items_are_reported_and_good_ones_kept() -> None:
    ticks, bad = parse_response((FIXTURES / "tick_bad_items.json").read_bytes(), "fushu", RECV)
    assert [t.symbol for t in ticks] == ["00005.HK"]
    assert [reason for reason, _ in bad] == [
        "bad_item",  # no price
        "bad_item",  # price "abc"
        "bad_price",  # 0
        "bad_volume",  # negative
        "bad_timestamp",
        "bad_symbol",  # not HK
        "bad_item",  # not an object
    ]


@pytest.mark.parametrize("body", [b"", b"<html>502</html>", b"[]", b'{"data": 5}', b'{"rows": []}'])
def test_bad_envelope(body: bytes) -> None:
    with pytest.raises(FushuParseError) as e:
        decode_response(body)
    assert e.value.reason == "bad_response"


def test_not_json_fixture() -> None:
    with pytest.raises(FushuParseError):
        decode_response((FIXTURES / "not_json.txt").read_bytes())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-04T09:30:00+08:00", datetime(2024, 3, 4, 1, 30, tzinfo=UTC)),
        ("2024-03-04T09:30:00", datetime(2024, 3, 4, 1, 30, tzinfo=UTC)),  # naive → HK
        ("2024-03-04T01:30:00Z", datetime(2024, 3, 4, 1, 30, tzinfo=UTC)),
        ("2024-03-03T20:30:00-05:00", datetime(2024, 3, 4, 1, 30, tzinfo=UTC)),
    ],
)
def test_timestamp_table(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected
