"""Alpaca parsers against recorded frames: prices, sizes, timestamps, dedup, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import msgspec
import pytest

from services.feeder_gateway.feeders.alpaca.parse import (
    FrameParser,
    RecentTradeIds,
    WireError,
    decode_json,
    decode_msgpack,
    parse_quote,
    parse_timestamp,
    parse_trade,
)
from shared.dto import PriceUpdate

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alpaca"
RECEIVED = datetime(2024, 3, 4, 14, 31, 5, tzinfo=UTC)
WANTED = {"AAPL": "AAPL", "BRK.B": "BRK-B", "MSFT": "MSFT"}


def frames(name: str = "frames.jsonl") -> list[str]:
    return [line for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def make_parser(malformed: list[tuple[str, str]] | None = None) -> FrameParser:
    sink = malformed if malformed is not None else []
    p = FrameParser("alpaca", lambda reason, raw: sink.append((reason, raw)))
    p.set_wanted(WANTED)
    return p


def parse_all(p: FrameParser, raw_frames: list[Any]) -> tuple[list[PriceUpdate], list[dict[str, Any]]]:
    ticks: list[PriceUpdate] = []
    controls: list[dict[str, Any]] = []
    for raw in raw_frames:
        t, c, _ = p.parse(raw, RECEIVED)
        ticks += t
        controls += c
    return ticks, controls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-04T14:30:00.123456789Z", datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)),
        # truncated, never rounded up into the next second
        ("2024-03-04T14:30:00.999999999Z", datetime(2024, 3, 4, 14, 30, 0, 999999, tzinfo=UTC)),
        ("2024-03-04T14:30:00.2Z", datetime(2024, 3, 4, 14, 30, 0, 200000, tzinfo=UTC)),
        ("2024-03-04T14:30:00Z", datetime(2024, 3, 4, 14, 30, tzinfo=UTC)),
        ("2024-03-04T14:30:00.1234567+00:00", datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)),
        ("2024-03-04T09:30:00.5-05:00", datetime(2024, 3, 4, 14, 30, 0, 500000, tzinfo=UTC)),
    ],
)
def test_timestamp_strings(text: str, expected: datetime) -> None:
    got = parse_timestamp(text)
    assert got == expected
    assert got.tzinfo is UTC


def test_timestamp_datetime_from_msgpack_is_normalized_to_utc() -> None:
    est = timezone(timedelta(hours=-5))
    got = parse_timestamp(datetime(2024, 3, 4, 9, 30, tzinfo=est))
    assert got == datetime(2024, 3, 4, 14, 30, tzinfo=UTC) and got.tzinfo is UTC


@pytest.mark.parametrize(
    "bad", ["yesterday", "2024-03-04T14:30:00", "", "2024-13-04T14:30:00Z", 1709562600, None, datetime(2024, 3, 4)]
)
def test_timestamp_garbage(bad: object) -> None:
    with pytest.raises(WireError):
        parse_timestamp(bad)


def test_trade_fields() -> None:
    msg = decode_json(frames()[3])[1]
    tick = parse_trade(msg, "AAPL", "alpaca", RECEIVED)
    assert tick.symbol == "AAPL" and tick.source == "alpaca"
    assert tick.price == 187.32
    assert tick.last_size == 100.0
    assert tick.volume is None and tick.amount is None  # a trade stream has no day total
    assert tick.timestamp == datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)
    assert tick.receive_time == RECEIVED
    assert tick.delayed is False
    assert parse_trade(msg, "AAPL", "alpaca", RECEIVED, delayed=True).delayed is True


def test_quote_price_is_mid_until_a_trade_then_last_trade() -> None:
    p = make_parser()
    ticks, _ = parse_all(p, [decode_json(frames()[3])])
    first_quote, trade, second_quote, brk = ticks
    assert first_quote.price == 187.325  # mid, no trade seen yet
    assert (first_quote.bid_price, first_quote.ask_price) == (187.31, 187.34)
    assert (first_quote.bid_volume, first_quote.ask_volume) == (300.0, 200.0)  # round lots → shares
    assert first_quote.last_size is None
    assert first_quote.timestamp == datetime(2024, 3, 4, 14, 30, 0, 999, tzinfo=UTC)
    assert trade.price == 187.32 and trade.last_size == 100.0
    assert second_quote.price == 187.32  # the last trade price, not the mid
    assert (second_quote.bid_volume, second_quote.ask_volume) == (400.0, 100.0)
    assert brk.symbol == "BRK-B" and brk.price == 410.5 and brk.last_size == 5.0


def test_one_sided_and_empty_quotes() -> None:
    p = make_parser()
    ticks, _ = parse_all(p, [decode_json(frames()[5])])
    one_sided, both = ticks  # the quote with neither side and no trade yields nothing
    assert one_sided.price == 415.2 and one_sided.bid_price is None and one_sided.bid_volume is None
    assert one_sided.ask_volume == 500.0
    assert one_sided.timestamp == datetime(2024, 3, 4, 14, 30, 0, 500000, tzinfo=UTC)
    assert both.price == 415.15


def test_quote_without_trade_or_sides_has_no_price() -> None:
    msg = decode_json(frames()[5])[2]
    assert parse_quote(msg, "MSFT", "alpaca", RECEIVED, None) is None
    assert parse_quote(msg, "MSFT", "alpaca", RECEIVED, 415.0) is not None


def test_duplicate_trade_ids_dropped_per_exchange() -> None:
    p = make_parser()
    ticks, _ = parse_all(p, [decode_json(f) for f in frames()[3:5]])
    aapl_trades = [t for t in ticks if t.symbol == "AAPL" and t.last_size is not None]
    # same (S, x, i) twice → once; the same id on another exchange is another trade
    assert [t.price for t in aapl_trades] == [187.32, 187.33]
    assert p.duplicates == 1


def test_recent_trade_ids_window_is_bounded() -> None:
    ids = RecentTradeIds(window=2)
    assert not ids.seen("A", "V", 1)
    assert not ids.seen("A", "V", 2)
    assert ids.seen("A", "V", 1)
    assert not ids.seen("A", "V", 3)  # evicts (V, 1)
    assert not ids.seen("A", "V", 1)
    assert not ids.seen("B", "V", 1)  # per symbol


def test_bars() -> None:
    p = make_parser()
    (minute, daily), _ = parse_all(p, [decode_json(frames()[6])])
    assert minute.price == 187.4
    assert minute.timestamp == datetime(2024, 3, 4, 14, 31, tzinfo=UTC)  # bar end
    assert minute.volume is None
    assert daily.price == 187.4
    assert (daily.open_price, daily.high_price, daily.low_price) == (186.0, 188.0, 185.5)
    assert daily.volume == 1234567.0  # day cumulative, shares
    assert daily.amount == round(187.0123 * 1234567, 2)
    assert daily.timestamp == RECEIVED


def test_ignored_types_unwanted_symbols_and_controls() -> None:
    bad: list[tuple[str, str]] = []
    p = make_parser(bad)
    ticks, _ = parse_all(p, [decode_json(frames()[7])])
    assert ticks == [] and bad == []  # statuses, corrections, LULD: known, no ticks
    ticks, _ = parse_all(p, [decode_json(frames()[8])])
    assert [t.symbol for t in ticks] == ["MSFT"]  # TSLA not wanted (just unsubscribed)
    _, controls = parse_all(p, [decode_json(f) for f in frames()[:3]] + [decode_json(frames()[9])])
    assert [c["T"] for c in controls] == ["success", "success", "subscription", "error"]
    assert controls[3]["code"] == 405


def test_data_count_includes_filtered_messages() -> None:
    p = make_parser()
    _, _, data = p.parse(decode_json(frames()[8]), RECEIVED)
    assert data == 2


def test_set_wanted_forgets_dropped_symbols() -> None:
    p = make_parser()
    parse_all(p, [decode_json(frames()[3])])
    assert "AAPL" in p.last_trade_price
    p.set_wanted({"MSFT": "MSFT"})
    assert "AAPL" not in p.last_trade_price


def test_garbage_is_reported_and_skipped() -> None:
    bad: list[tuple[str, str]] = []
    p = make_parser(bad)
    raw = frames("malformed.jsonl")
    with pytest.raises(msgspec.DecodeError):
        decode_json(raw[0])
    ticks, _ = parse_all(p, [decode_json(r) for r in raw[1:]])
    assert [t.symbol for t in ticks] == ["MSFT"]  # the good message beside a bad one survives
    reasons = [r for r, _ in bad]
    assert reasons[0] == "frame_not_array"
    assert reasons.count("unknown_type") == 1
    assert reasons.count("bad_message") == 8
    assert all(len(snippet) <= 200 for _, snippet in bad)


def _to_msgpack(frame: list[dict[str, Any]]) -> bytes:
    out = []
    for original in frame:
        m = dict(original)
        if isinstance(m.get("t"), str):
            # the wire carries nanoseconds in the msgpack timestamp extension
            head, _, frac = m["t"].rstrip("Z").partition(".")
            secs = int(datetime.fromisoformat(head + "+00:00").timestamp())
            m["t"] = msgpack.Timestamp(secs, int((frac or "0").ljust(9, "0")))
        out.append(m)
    return bytes(msgpack.packb(out))


def test_msgpack_frames_give_the_same_ticks_as_json() -> None:
    utc_frames = [f for i, f in enumerate(frames()) if i != 5]  # the -05:00 one is JSON-only
    from_json, _ = parse_all(make_parser(), [decode_json(f) for f in utc_frames])
    from_msgpack, _ = parse_all(
        make_parser(), [decode_msgpack(_to_msgpack(decode_json(f))) for f in utc_frames]
    )
    assert from_msgpack == from_json
    assert from_json[1].timestamp == datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)
