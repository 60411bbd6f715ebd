"""Alpaca's historical bars API from recorded answers: pages, tokens, error bodies, 429 headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.alpaca.history import AlpacaHistory, history_feed
from services.feeder_gateway.feeders.alpaca.history_parse import (
    RecentSipRefused,
    answer_error,
    bars_query,
    error_message,
    parse_page,
    retry_after_s,
    split_recent_sip,
)
from services.feeder_gateway.feeders.alpaca.parse import WireError
from services.feeder_gateway.feeders.alpaca.settings import AlpacaSettings
from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.history import (
    ALL_FIELDS,
    HistoryConfigError,
    HistoryUnavailable,
    MinuteBar,
    MinuteHistory,
)
from shared.metrics import ServiceMetrics
from shared.symbols import Market


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2024, 3, 4, hh, mm, ss, tzinfo=UTC)


# A first page as Alpaca sends it: sorted by symbol, then time; the limit (3) counts the
# bars of every symbol together, so MSFT starts on the next page.
PAGE_1 = b"""{"bars":{"AAPL":[
 {"t":"2024-03-04T14:30:00Z","o":175.1,"h":175.5,"l":175.0,"c":175.2,"v":1200,"n":14,"vw":175.251667},
 {"t":"2024-03-04T14:31:00Z","o":175.2,"h":175.2,"l":174.9,"c":175.0,"v":300,"n":3,"vw":175.05}],
 "BRK.B":[{"t":"2024-03-04T14:30:00Z","o":410,"h":410,"l":410,"c":410,"v":5,"n":1,"vw":410}]},
 "next_page_token":"QlJLLkJ8MTcwOTU2MjY2MDAwMDAwMDAwMA=="}"""
PAGE_LAST = b"""{"bars":{"MSFT":[
 {"t":"2024-03-04T14:31:00Z","o":400,"h":401,"l":399.5,"c":400.5,"v":10,"n":2,"vw":400.2}]},"next_page_token":null}"""


def test_a_page_parses_to_minute_bars_with_amount_vw_times_v_and_its_token() -> None:
    page = parse_page(PAGE_1)
    assert page.next_page_token == "QlJLLkJ8MTcwOTU2MjY2MDAwMDAwMDAwMA=="
    assert list(page.bars) == ["AAPL", "BRK.B"]
    first, second = page.bars["AAPL"]
    assert first == MinuteBar(at(14, 30), 175.1, 175.5, 175.0, 175.2, 1200.0, 175.251667 * 1200)
    assert second.start == at(14, 31) and second.volume == 300.0
    assert page.bars["BRK.B"] == [MinuteBar(at(14, 30), 410.0, 410.0, 410.0, 410.0, 5.0, 2050.0)]
    last = parse_page(PAGE_LAST)
    assert last.next_page_token is None and last.bars["MSFT"][0].amount == pytest.approx(4002.0)


@pytest.mark.parametrize(
    "body",
    [b'{"bars":{},"next_page_token":null}', b'{"bars":null,"next_page_token":null}', b'{"bars":{}}',
     b'{"bars":{},"next_page_token":""}'],
)
def test_no_bars_in_the_window(body: bytes) -> None:
    page = parse_page(body)
    assert page.bars == {} and page.next_page_token is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>502 Bad Gateway</html>", "history page"),
        (b'{"bars":{"AAPL":[{"t":"2024-03-04T14:30:00Z","o":"175.1","h":1,"l":1,"c":1,"v":1}]}}', "history page"),
        (b'{"bars":{"AAPL":[{"t":"2024-03-04T14:30:30Z","o":1,"h":1,"l":1,"c":1,"v":1,"vw":1}]}}', "not on a minute"),
        (b'{"bars":{"AAPL":[{"t":"2024-03-04T14:30:00","o":1,"h":1,"l":1,"c":1,"v":1,"vw":1}]}}', "offset"),
        (b'{"bars":{"AAPL":[{"t":"2024-03-04T14:30:00Z","o":5,"h":4,"l":1,"c":2,"v":1,"vw":2}]}}', "inconsistent"),
        (b'{"bars":{"AAPL":[{"t":"2024-03-04T14:30:00Z","o":1,"h":1,"l":1,"c":1,"v":-3,"vw":1}]}}', "volume"),
    ],
)
def test_a_malformed_page_fails_whole(body: bytes, words: str) -> None:
    with pytest.raises(WireError, match=words):
        parse_page(body)


def test_error_bodies() -> None:
    assert error_message(b'{"message":"subscription does not permit querying recent SIP data"}') == (
        "subscription does not permit querying recent SIP data"
    )
    assert error_message(b"upstream connect error") == "upstream connect error"
    assert len(error_message(b'{"message":"' + b"x" * 500 + b'"}')) == 200


def test_401_and_403_are_the_key_named_by_its_setting() -> None:
    for status, body in ((401, b'{"message":"unauthorized."}'), (403, b'{"message":"forbidden"}')):
        err = answer_error("alpaca", status, {}, body, 0.0)
        assert isinstance(err, HistoryConfigError)
        assert f"HTTP {status}" in str(err) and "sources.alpaca.key" in str(err) and "secure.yml" in str(err)


def test_403_recent_sip_is_its_own_class() -> None:
    body = b'{"message":"subscription does not permit querying recent SIP data"}'
    assert isinstance(answer_error("alpaca", 403, {}, body, 0.0), RecentSipRefused)


def test_404_names_history_url() -> None:
    err = answer_error("us-alpaca", 404, {}, b"404 page not found", 0.0)
    assert isinstance(err, HistoryConfigError) and "sources.us-alpaca.history_url" in str(err)


def test_429_waits_until_the_rate_window_resets() -> None:
    headers = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1709562700"}
    err = answer_error("alpaca", 429, headers, b'{"message":"too many requests."}', 1709562657.5)
    assert isinstance(err, HistoryUnavailable) and "429" in str(err)
    assert err.retry_after_s == pytest.approx(42.5)
    assert retry_after_s(headers, 1709562800.0) == 0.0  # reset already passed: at once
    assert retry_after_s({"Retry-After": "7"}, 0.0) == 7.0
    assert retry_after_s({"X-RateLimit-Reset": "soon", "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0) is None
    assert retry_after_s({}, 0.0) is None


@pytest.mark.parametrize(
    ("status", "headers", "retry"),
    [(500, {}, None), (503, {"Retry-After": "30"}, 30.0), (502, {}, None), (400, {}, None)],
)
def test_server_errors_are_unavailable(status: int, headers: dict[str, str], retry: float | None) -> None:
    err = answer_error("alpaca", status, headers, b'{"message":"internal server error"}', 0.0)
    assert isinstance(err, HistoryUnavailable) and f"HTTP {status}" in str(err)
    assert err.retry_after_s == retry
    assert answer_error("alpaca", 200, {}, b"{}", 0.0) is None


def test_query_of_a_page() -> None:
    query = bars_query(["AAPL", "BRK.B"], at(14, 30), at(14, 59), "iex", 10_000, None)
    assert query == {
        "symbols": "AAPL,BRK.B",
        "timeframe": "1Min",
        "start": "2024-03-04T14:30:00Z",
        "end": "2024-03-04T14:59:00Z",
        "limit": "10000",
        "feed": "iex",
        "sort": "asc",
        "adjustment": "raw",
    }
    assert bars_query(["AAPL"], at(14, 30), at(14, 59), "sip", 5, "tok")["page_token"] == "tok"


@pytest.mark.parametrize(
    ("first", "last", "now", "segments"),
    [
        # all older than 16 minutes: sip only
        (at(14, 0), at(14, 10), at(14, 40), [("sip", at(14, 0), at(14, 10))]),
        # straddles: sip up to 16 minutes before now, iex after
        (at(14, 0), at(14, 30), at(14, 40, 30), [("sip", at(14, 0), at(14, 23)), ("iex", at(14, 24), at(14, 30))]),
        # all recent: iex only
        (at(14, 35), at(14, 38), at(14, 40), [("iex", at(14, 35), at(14, 38))]),
        # the boundary minute itself goes to iex
        (at(14, 24), at(14, 24), at(14, 40), [("iex", at(14, 24), at(14, 24))]),
        (at(14, 23), at(14, 23), at(14, 40), [("sip", at(14, 23), at(14, 23))]),
    ],
)
def test_split_of_a_window_for_a_plan_without_recent_sip(
    first: datetime, last: datetime, now: datetime, segments: list[tuple[str, datetime, datetime]]
) -> None:
    assert split_recent_sip(first, last, now) == segments


def ctx() -> FeederContext:
    return FeederContext("alpaca", Market.US, lambda s, d: None, FeederMetrics(ServiceMetrics("t")))


def test_settings_and_which_feed_the_history_asks() -> None:
    s = AlpacaSettings.model_validate({})
    assert s.history_url == "https://data.alpaca.markets"
    assert (s.history_requests_per_min, s.history_page_limit, s.history_feed) == (150.0, 10_000, None)
    assert AlpacaSettings.model_validate({"history_url": "http://127.0.0.1:9/"}).history_url == "http://127.0.0.1:9"
    for bad in ({"history_url": "data.alpaca.markets"}, {"history_feed": "delayed_sip"},
                {"history_page_limit": 10_001}, {"history_requests_per_min": 0}):
        with pytest.raises(ValidationError):
            AlpacaSettings.model_validate(bad)
    cases = {("iex", None): "iex", ("sip", None): "sip", ("delayed_sip", None): "sip", ("test", None): None,
             ("iex", "sip"): "sip", ("test", "iex"): "iex"}
    for (feed, hist), want in cases.items():
        assert history_feed(AlpacaSettings.model_validate({"feed": feed, "history_feed": hist})) == want


def test_the_feeder_offers_its_history() -> None:
    feeder = AlpacaFeeder(AlpacaSettings.model_validate({"history_symbols_per_request": 50}), ctx())
    history = feeder.history()
    assert isinstance(history, AlpacaHistory)
    typed: MinuteHistory = history  # the protocol, checked by mypy
    assert typed.source == "alpaca" and typed.fields == ALL_FIELDS and typed.max_symbols_per_request == 50
    assert typed.settle_s == 5.0 and typed.reaches(datetime(2017, 1, 3, tzinfo=UTC), at(14, 0))
    assert AlpacaFeeder(AlpacaSettings.model_validate({"feed": "test"}), ctx()).history() is None


async def test_no_key_and_a_socks_proxy_are_configuration_errors_before_any_request() -> None:
    history = AlpacaHistory(AlpacaSettings.model_validate({"history_url": "http://127.0.0.1:9"}), ctx(), "iex")
    with pytest.raises(HistoryConfigError, match=r"sources\.alpaca\.key"):
        await history.minute_bars(["AAPL"], at(14, 30), at(14, 32))
    settings = {"key": "k", "secret": "s", "proxy": "socks5://127.0.0.1:1080", "history_url": "http://127.0.0.1:9"}
    history = AlpacaHistory(AlpacaSettings.model_validate(settings), ctx(), "iex")
    with pytest.raises(HistoryConfigError, match=r"sources\.alpaca\.proxy"):
        await history.minute_bars(["AAPL"], at(14, 30), at(14, 32))
    # an empty window asks nothing
    assert await history.minute_bars(["AAPL"], at(14, 30, 10), at(14, 31)) == {"AAPL": []}
