"""Wire messages: round trips, the tagged union, and what is rejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from shared.dto import (
    Alert,
    Bar,
    CommandResult,
    ControlCommand,
    DeadLetter,
    InterestUpdate,
    Message,
    PriceUpdate,
    Status,
    Subscription,
    decode,
    encode,
)

T = datetime(2024, 3, 4, 14, 30, 0, 123456, tzinfo=UTC)

SAMPLES: list[Message] = [
    PriceUpdate(symbol="600000.SH", price=10.52, timestamp=T, source="sim", volume=1200.0, sequence=3, last_size=100.0),
    Bar(symbol="AAPL", period="1m", open=1, high=2, low=0.5, close=1.5, volume=10, timestamp=T, source="sim"),
    InterestUpdate(portfolio_id="p", node_id="n", symbols=("AAPL",), update_type="replace", timestamp=T, lease_s=30),
    ControlCommand(command="bar_snapshot", correlation_id="c1", timestamp=T, source="cli", params={"market": "CN"}),
    Subscription(market="CN", symbols=("600000.SH",), timestamp=T, revision=2),
    Status(service="gw", component="feeder", state="connected", timestamp=T, detail={"n": 1}),
    Alert(service="dm", code="stale", message="quiet", timestamp=T),
    CommandResult(service="dm", command="bar_snapshot", correlation_id="c1", ok=True, timestamp=T),
    DeadLetter(service="dm", source_topic="x", partition=0, offset=5, reason="bad", raw="{", timestamp=T),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    raw = encode(msg)
    doc = msgspec.json.decode(raw)
    assert doc["v"] == 1
    assert decode(raw) == msg


def test_type_tag_and_utc_on_the_wire() -> None:
    raw = encode(SAMPLES[0])
    doc = msgspec.json.decode(raw)
    assert doc["type"] == "price_update"
    assert doc["timestamp"] == "2024-03-04T14:30:00.123456Z"


def test_bar_never_decodes_as_price_update() -> None:
    bar = decode(encode(SAMPLES[1]))
    assert isinstance(bar, Bar)
    assert not isinstance(bar, PriceUpdate)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"type":"price_update","symbol":"A","price":1,"timestamp":"2024-01-01T00:00:00","source":"s"}', "timezone"),
        (
            b'{"type":"price_update","symbol":"A","price":1,"timestamp":"2024-01-01T00:00:00Z","source":"s","v":99}',
            "unsupported schema version",
        ),
        (
            b'{"type":"price_update","symbol":"A","price":1,"timestamp":"2024-01-01T00:00:00Z","source":"s","v":0}',
            "unsupported schema version",
        ),
        (
            b'{"type":"price_update","symbol":"A","timestamp":"2024-01-01T00:00:00Z","source":"s"}',
            "missing required field `price`",
        ),
        (b'{"type":"bar","symbol":"A","price":1}', "missing required field"),
        (b'{"type":"nope"}', "Invalid value 'nope'"),
        (b'{"symbol":"A"}', "missing required field `type`"),
        (b'{"type":"price_update","symbol":"","price":1,"timestamp":"2024-01-01T00:00:00Z","source":"s"}', "length"),
        (b"not json", "malformed"),
    ],
)
def test_rejections(raw: bytes, fragment: str) -> None:
    with pytest.raises(msgspec.DecodeError) as err:
        decode(raw)
    assert fragment.lower() in str(err.value).lower()


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        tick = SAMPLES[0]
        assert isinstance(tick, PriceUpdate)
        tick.price = 1.0  # type: ignore[misc]


def test_offsets_other_than_utc_keep_the_instant() -> None:
    hk = timezone(timedelta(hours=8))
    p = PriceUpdate(symbol="00700.HK", price=1, timestamp=T.astimezone(hk), source="s")
    got = decode(encode(p))
    assert isinstance(got, PriceUpdate) and got.timestamp == T


def test_unknown_optional_fields_are_ignored_so_producers_can_add_them() -> None:
    raw = b'{"type":"price_update","symbol":"A","price":1,"timestamp":"2024-01-01T00:00:00Z","source":"s","new":[1]}'
    got = decode(raw)
    assert isinstance(got, PriceUpdate) and got.price == 1 and got.v == 1
