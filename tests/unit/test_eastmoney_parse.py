"""EastMoney pure parsing from recorded frames: secids, SSE framing, merging, scaling, units."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.feeder_gateway.feeders.eastmoney import wire
from services.feeder_gateway.feeders.eastmoney.parse import (
    QuoteError,
    apply_diff,
    decode_envelope,
    percent_value,
    quote_to_update,
    symbol_of,
)
from services.feeder_gateway.feeders.eastmoney.request import pacer_for
from services.feeder_gateway.feeders.eastmoney.secid import (
    SecidError,
    from_market_code,
    is_beijing_code,
    to_secid,
)
from services.feeder_gateway.feeders.eastmoney.settings import EastMoneyPollSettings, EastMoneySettings
from services.feeder_gateway.feeders.eastmoney.stream import plan_requests
from shared.dto import PriceUpdate

FIXTURES = Path(__file__).parent.parent / "fixtures" / "eastmoney"
RECEIVED = datetime(2024, 3, 4, 2, 15, 7, 250_000, tzinfo=UTC)
T_103 = datetime(2024, 3, 4, 2, 15, 3, tzinfo=UTC)  # 10:15:03 in Shanghai
SYMBOLS = ("600000.SH", "000001.SZ", "430047.BJ", "00700.HK")
UNITS = (100, 100, 100, 1)  # A-share lots; HK reports shares


def _sse_events() -> list[bytes]:
    dec = wire.SseDecoder(1 << 20)
    return dec.feed((FIXTURES / "sse_stream.txt").read_bytes())


def _updates(diff: dict[str, wire.Quote], decimal: bool) -> dict[str, PriceUpdate | None]:
    out = {}
    for key, q in diff.items():
        pos = int(key)
        u = quote_to_update(
            SYMBOLS[pos], q, RECEIVED, "em", decimal_values=decimal, volume_unit=UNITS[pos]
        )
        out[SYMBOLS[pos]] = u
    return out


# ---- secid mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "secid"),
    [
        ("600000.SH", "1.600000"),
        ("688981.SH", "1.688981"),
        ("900901.SH", "1.900901"),  # SH B-share
        ("000001.SH", "1.000001"),  # SSE composite index: the suffix decides, not the digits
        ("000001.SZ", "0.000001"),
        ("300750.SZ", "0.300750"),
        ("200002.SZ", "0.200002"),
        ("430047.BJ", "0.430047"),
        ("920118.BJ", "0.920118"),
        ("00700.HK", "116.00700"),
        ("AAPL", "105.AAPL"),
        ("IBM", "106.IBM"),
        ("BRK.B", "106.BRK_B"),
    ],
)
def test_to_secid(symbol: str, secid: str) -> None:
    assert to_secid(symbol, {"IBM": 106, "BRK.B": 106}) == secid


@pytest.mark.parametrize("bad", ["60000.SH", "ABCDEF.SZ", "123456.HK", "", "1.600000", "7AB"])
def test_to_secid_rejects(bad: str) -> None:
    with pytest.raises(SecidError):
        to_secid(bad)


def test_to_secid_rejects_bad_us_exchange() -> None:
    with pytest.raises(SecidError, match="105/106/107"):
        to_secid("AAPL", {"AAPL": 116})


@pytest.mark.parametrize(
    ("market", "code", "symbol"),
    [
        (1, "600000", "600000.SH"),
        (1, "000001", "000001.SH"),
        (0, "000001", "000001.SZ"),
        (0, "300750", "300750.SZ"),
        (0, "399001", "399001.SZ"),
        (0, "159915", "159915.SZ"),
        (0, "430047", "430047.BJ"),
        (0, "830799", "830799.BJ"),
        (0, "872925", "872925.BJ"),
        (0, "920118", "920118.BJ"),
        (116, "00700", "00700.HK"),
        (105, "AAPL", "AAPL"),
        (106, "BRK_B", "BRK.B"),
    ],
)
def test_from_market_code(market: int, code: str, symbol: str) -> None:
    assert from_market_code(market, code) == symbol
    assert is_beijing_code(code) == symbol.endswith(".BJ")


def test_from_market_code_unknown_market() -> None:
    with pytest.raises(SecidError):
        from_market_code(90, "BK0477")


# ---- SSE framing --------------------------------------------------------------------------------


def test_sse_decoder_frames_events_comments_and_crlf() -> None:
    dec = wire.SseDecoder(1 << 20)
    raw = (FIXTURES / "sse_stream.txt").read_bytes()
    events = dec.feed(raw)
    assert len(events) == 6
    assert dec.comments == 1
    assert all(e.startswith(b"{") and e.endswith(b"}") for e in events)


def test_sse_decoder_reassembles_split_chunks() -> None:
    raw = (FIXTURES / "sse_stream.txt").read_bytes()
    dec = wire.SseDecoder(1 << 20)
    events = [e for i in range(0, len(raw), 7) for e in dec.feed(raw[i : i + 7])]
    assert events == _sse_events()


def test_sse_decoder_multi_line_data_and_bound() -> None:
    dec = wire.SseDecoder(64)
    assert dec.feed(b"data: a\ndata: b\n\n") == [b"a\nb"]
    with pytest.raises(wire.SseFrameTooLarge):
        dec.feed(b"data: " + b"x" * 100)
    assert dec.feed(b"data: ok\n\n") == [b"ok"]  # the decoder recovers after refusing


# ---- SSE: full event + positional deltas, integer scaling by f59 --------------------------------


def test_full_event_scaled_by_f59_and_lots_to_shares() -> None:
    env = decode_envelope(_sse_events()[0])
    assert env.rc == 0 and env.full == 1
    assert env.data is not None and isinstance(env.data.diff, dict)
    cache: dict[int, wire.Quote] = {}
    changed, bad = apply_diff(cache, env.data.diff, 4, full=True)
    assert changed == [0, 1, 2, 3] and bad == []
    ups = _updates({str(p): cache[p] for p in changed}, decimal=False)
    pf = ups["600000.SH"]
    assert pf is not None
    assert pf.price == 10.52 and pf.open_price == 10.49
    assert pf.high_price == 10.58 and pf.low_price == 10.46
    assert pf.bid_price == 10.51 and pf.ask_price == 10.52
    assert pf.volume == 35_681_200.0  # 356812 lots
    assert pf.bid_volume == 152_300.0 and pf.ask_volume == 87_400.0
    assert pf.amount == 375_123_456.0
    assert pf.timestamp == T_103 and pf.timestamp.tzinfo is not None
    assert pf.receive_time == RECEIVED
    assert pf.source == "em" and pf.last_size is None and not pf.delayed
    hk = ups["00700.HK"]
    assert hk is not None
    assert hk.price == 382.4 and hk.high_price == 385.0 and hk.low_price == 380.2
    assert hk.bid_price == 382.2  # 3 decimals: 382200 / 10**3, not / 100
    assert hk.volume == 9_876_543.0  # HK reports shares
    bj = ups["430047.BJ"]
    assert bj is not None
    assert bj.price == 14.88 and bj.bid_price is None and bj.bid_volume is None  # "-"
    assert bj.ask_volume == 1200.0
    assert bj.timestamp == datetime(2024, 3, 4, 2, 15, 0, tzinfo=UTC)


def test_delta_without_f12_f13_updates_the_right_position() -> None:
    events = [decode_envelope(e) for e in _sse_events()]
    cache: dict[int, wire.Quote] = {}
    ticks: list[list[str]] = []
    for env in events:
        if env.data is None or env.data.diff is None:
            ticks.append([])  # heartbeat
            continue
        assert isinstance(env.data.diff, dict)
        changed, bad = apply_diff(cache, env.data.diff, 4, full=env.full == 1)
        assert bad == []
        ticks.append([SYMBOLS[p] for p in changed])
    assert ticks == [list(SYMBOLS), ["000001.SZ"], [], ["600000.SH", "00700.HK"], ["430047.BJ"], []]
    payan = quote_to_update(
        "000001.SZ", cache[1], RECEIVED, "em", decimal_values=False, volume_unit=100
    )
    assert payan is not None
    assert payan.price == 10.35 and payan.volume == 81_240_100.0
    assert payan.amount == 838_823_395.0
    assert payan.high_price == 10.40 and payan.open_price == 10.25  # kept from the full event
    assert payan.timestamp == datetime(2024, 3, 4, 2, 15, 4, tzinfo=UTC)
    assert cache[1][wire.CODE] == "000001"  # the delta did not carry f12; merged state keeps it
    hk = quote_to_update("00700.HK", cache[3], RECEIVED, "em", decimal_values=False, volume_unit=1)
    assert hk is not None and hk.price == 382.6 and hk.ask_price == 382.6
    assert hk.bid_price == 382.2
    bj = quote_to_update(
        "430047.BJ", cache[2], RECEIVED, "em", decimal_values=False, volume_unit=100
    )
    assert bj is not None and bj.bid_price == 14.87 and bj.bid_volume == 3500.0


def test_apply_diff_rejects_unknown_positions() -> None:
    cache: dict[int, wire.Quote] = {0: {"f2": 1}}
    changed, bad = apply_diff(
        cache, {"0": {"f2": 2}, "7": {"f2": 3}, "x": {"f2": 4}}, 1, full=False
    )
    assert changed == [0] and sorted(bad) == ["7", "x"]
    assert cache == {0: {"f2": 2}}


def test_full_event_replaces_the_cache() -> None:
    cache: dict[int, wire.Quote] = {0: {"f2": 1, "f99": 5}, 1: {"f2": 9}}
    changed, _ = apply_diff(cache, {"0": {"f2": 1}}, 2, full=True)
    assert changed == [0] and cache == {0: {"f2": 1}}


# ---- snapshots: both diff shapes, fltt=2 decimals -----------------------------------------------


def test_snapshot_list_form_fltt2() -> None:
    env = decode_envelope((FIXTURES / "ulist_np1_fltt2.json").read_bytes())
    assert env.data is not None and isinstance(env.data.diff, list)
    requested = {"1.600000": "600000.SH", "1.600010": "600010.SH", "0.430047": "430047.BJ"}
    got = {}
    for q in env.data.diff:
        sym = symbol_of(q, requested)
        unit = 1 if sym.endswith(".HK") else 100
        got[sym] = quote_to_update(sym, q, RECEIVED, "em", decimal_values=True, volume_unit=unit)
    assert set(got) == {"00700.HK", "600000.SH", "600010.SH", "430047.BJ"}
    assert got["600010.SH"] is None  # suspended: "-" last price is no quote
    pf = got["600000.SH"]
    assert pf is not None and pf.price == 10.52 and pf.volume == 35_681_200.0
    assert pf.timestamp == T_103
    hk = got["00700.HK"]  # not in ``requested``: resolved by the reverse mapping
    assert hk is not None and hk.price == 382.4 and hk.volume == 9_876_543.0
    bj = got["430047.BJ"]
    assert bj is not None and bj.price == 14.88 and bj.low_price == 14.7


def test_snapshot_keyed_fltt2_equals_integer_form() -> None:
    dec = decode_envelope((FIXTURES / "ulist_keyed_fltt2.json").read_bytes())
    ints = decode_envelope((FIXTURES / "ulist_keyed_int.json").read_bytes())
    assert dec.data is not None and isinstance(dec.data.diff, dict)
    assert ints.data is not None and isinstance(ints.data.diff, dict)
    assert _updates(dec.data.diff, decimal=True) == _updates(ints.data.diff, decimal=False)


def test_percent_scaling() -> None:
    ints = decode_envelope((FIXTURES / "ulist_keyed_int.json").read_bytes())
    assert ints.data is not None and isinstance(ints.data.diff, dict)
    assert percent_value(ints.data.diff["0"], "f3", decimal_values=False) == 0.38
    assert percent_value({"f3": 0.38}, "f3", decimal_values=True) == 0.38
    assert percent_value({"f3": "-"}, "f3", decimal_values=False) is None


# ---- missing values and garbage -----------------------------------------------------------------


def test_missing_quote_time_falls_back_to_receive_time() -> None:
    q = {"f2": 1052, "f59": 2, "f124": "-"}
    u = quote_to_update("600000.SH", q, RECEIVED, "em", decimal_values=False, volume_unit=100)
    assert u is not None and u.timestamp == RECEIVED and u.volume is None and u.amount is None


@pytest.mark.parametrize(
    ("quote", "reason"),
    [
        ({"f2": 1052}, "bad_f59"),  # integer form needs f59
        ({"f2": 1052, "f59": "-"}, "bad_f59"),
        ({"f2": 10.52, "f59": 2}, "bad_f2"),  # decimals where integers were asked for
        ({"f2": "10.52", "f59": 2}, "bad_f2"),
        ({"f2": 1052, "f59": 2, "f5": "many"}, "bad_f5"),
        ({"f2": 1052, "f59": 2, "f124": 17}, "bad_f124"),
        ({"f2": 1052, "f59": 2, "f6": [1]}, "bad_f6"),
    ],
)
def test_bad_fields_raise(quote: wire.Quote, reason: str) -> None:
    with pytest.raises(QuoteError) as info:
        quote_to_update("600000.SH", quote, RECEIVED, "em", decimal_values=False, volume_unit=100)
    assert info.value.reason == reason


def test_garbage_payloads_rejected() -> None:
    lines = (FIXTURES / "garbage.txt").read_bytes().splitlines()
    assert len(lines) == 5
    for line in lines:
        with pytest.raises(QuoteError) as info:
            decode_envelope(line)
        assert info.value.reason == "bad_envelope"


def test_symbol_of_needs_code_and_market() -> None:
    with pytest.raises(QuoteError, match="missing_f12_f13"):
        symbol_of({"f2": 1.0}, {})
    with pytest.raises(QuoteError, match="unknown_market"):
        symbol_of({"f12": "BK0477", "f13": 90}, {})


# ---- request planning and settings --------------------------------------------------------------


def test_plan_requests_keeps_unchanged_chunks() -> None:
    plan = plan_requests([], ["D", "A", "C", "B", "E"], 2)
    assert plan == [("A", "B"), ("C", "D"), ("E",)]
    # remove B, add F and G: chunk 0 loses B and takes F; chunk 1 is untouched; chunk 2 takes G
    assert plan_requests(plan, ["A", "C", "D", "E", "F", "G"], 2) == [
        ("A", "F"),
        ("C", "D"),
        ("E", "G"),
    ]
    assert plan_requests(plan, ["C", "D"], 2) == [(), ("C", "D"), ()]
    assert plan_requests(plan, [], 2) == [(), (), ()]


def test_settings_reject_bad_field_codes_and_urls() -> None:
    with pytest.raises(ValueError, match="f<number>"):
        EastMoneySettings(fields=("f2", "price"))
    with pytest.raises(ValueError, match="http"):
        EastMoneySettings(base_url="push2.eastmoney.com")
    s = EastMoneySettings.model_validate({"base_url": "http://x/", "us_exchange": {"IBM": 106}})
    assert s.base_url == "http://x" and s.us_exchange == {"IBM": 106}


@pytest.mark.parametrize("settings_type", [EastMoneySettings, EastMoneyPollSettings])
def test_both_source_types_share_the_request_settings(settings_type: type[EastMoneySettings]) -> None:
    with pytest.raises(ValueError, match="f<number>"):
        settings_type(fields=("f2", "price"))
    with pytest.raises(ValueError, match="http"):
        settings_type(base_url="push2.eastmoney.com")
    s = settings_type.model_validate({"base_url": "http://x/", "us_exchange": {"IBM": 106}})
    assert s.base_url == "http://x" and s.us_exchange == {"IBM": 106}
    assert s.min_request_interval_s == 0.5 and s.ban_hold_s == 120.0
    with pytest.raises(ValueError, match="silence_timeout_s"):
        settings_type.model_validate({"silence_timeout_s": 9})  # the stream's own watchdog is gone


def test_pacer_is_one_per_host_and_the_slower_settings_apply() -> None:
    async def pacers() -> tuple[object, object, object, float]:
        a = pacer_for(EastMoneySettings(base_url="http://h:1", min_request_interval_s=0.2))
        b = pacer_for(EastMoneyPollSettings(base_url="http://h:1/", min_request_interval_s=0.7))
        c = pacer_for(EastMoneySettings(base_url="http://other:1"))
        return a, b, c, b.min_interval_s

    a, b, c, interval = asyncio.run(pacers())
    assert a is b and a is not c and interval == 0.7
