"""Fault: fuzzed input on every consumed topic, valid messages interleaved, against the
daemons as processes on the real broker.

The datamanager gets >= 10,000 malformed messages on each of interest.updates,
control.commands and market.data, the gateway >= 10,000 on feeder.subscriptions (see
fuzz_messages.py for the classes: wrong types, missing fields, huge and non-finite
numbers, wrong ``type``/``v``, invalid UTF-8, ~1 MB values, unknown symbols, far-future
and naive timestamps, non-object JSON), shuffled among valid ones. Measured and printed:
messages sent per topic and class, dead letters per source topic, bad ticks the data
quality checks dropped (counted, by design not dead-lettered), valid messages applied.
The processes must stay alive and ready.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import strategies as st

from services.feeder_gateway.feeders.tencent.parse import parse_line
from shared.dto import Bar, CommandResult, DeadLetter, PriceUpdate, Subscription, utcnow
from tests.daemons import System
from tests.helpers import TopicReader, eventually
from tests.reliability import fuzz_frames
from tests.reliability.fuzz_frames import (
    FIXTURES,
    MB,
    AlpacaPath,
    EastMoneySnapshotPath,
    EastMoneySsePath,
    Frame,
    FushuPath,
    Outcome,
    ProviderRefusal,
    TencentPath,
    byte_mutations,
    document_mutations,
)
from tests.reliability.fuzz_messages import (
    FAR_FUTURE,
    HUGE,
    NOW,
    UNKNOWN_SYMBOLS,
    Bad,
    _encode,
    _is_number,
    _is_str,
    collect,
    far_future,
    huge_payload,
    message_mistakes,
    with_field,
)

pytestmark = pytest.mark.reliability

BAD_PER_TOPIC = 10_000
SEED = 20240102
CN = [f"{600100 + i}.SH" for i in range(20)]
HK = [f"{i:05d}.HK" for i in range(700, 710)]
US = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META", "GOOG", "AMD", "INTC", "ORCL"]
TICK_SYMBOLS = CN[:10] + HK[:5] + US[:5]
TICKS_PER_SYMBOL = 50
PRICE_FIELDS = ["price", "bid_price", "ask_price", "open_price", "high_price", "low_price", "prev_close"]
QUANTITY_FIELDS = ["volume", "amount", "last_size", "bid_volume", "ask_volume"]

Record = tuple[bytes | None, bytes, str]  # key, value, class ("valid", or a mistake)


def _ts(offset_s: float = 0.0) -> str:
    return (NOW + timedelta(seconds=offset_s)).isoformat()


def labelled(metrics_text: str, name: str) -> dict[str, float]:
    """``{label value: sample}`` of a one-label Prometheus counter."""
    out: dict[str, float] = {}
    for m in re.finditer(rf'^{name}(?:_total)?{{\w+="([^"]*)"}} ([0-9.e+-]+)$', metrics_text, re.MULTILINE):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


# -- the messages ----------------------------------------------------------------------


def interest_base() -> dict[str, Any]:
    return {
        "type": "interest_update",
        "v": 1,
        "portfolio_id": "fz-bad",
        "node_id": "n",
        "symbols": ["600000.SH"],
        "update_type": "replace",
        "timestamp": _ts(),
    }


def command_base() -> dict[str, Any]:
    return {
        "type": "control_command",
        "v": 1,
        "command": "status",
        "correlation_id": "fz-bad",
        "timestamp": _ts(),
        "source": "fuzz",
    }


def tick_base() -> dict[str, Any]:
    return {
        "type": "price_update",
        "v": 1,
        "symbol": CN[0],
        "price": 10.0,
        "timestamp": _ts(-60),
        "source": "fuzz",
    }


def subscription_base() -> dict[str, Any]:
    return {"type": "subscription", "v": 1, "market": "CN", "symbols": ["600000.SH"], "timestamp": _ts()}


def _is_tag(tag: str) -> Any:
    return lambda v: v == tag


def _is_symbols(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


INTEREST = message_mistakes(
    interest_base,
    {
        "type": _is_tag("interest_update"),
        "portfolio_id": _is_str,
        "node_id": _is_str,
        "symbols": _is_symbols,
        "update_type": _is_str,
        "timestamp": _is_str,
    },
    [
        far_future(interest_base),
        with_field(interest_base, "unknown symbol", "symbols", [[s] for s in UNKNOWN_SYMBOLS] + [["AAPL", "foo.bar"]]),
        with_field(interest_base, "huge or non-finite number", "lease_s", [-1e308, float("inf"), -1.0, 0]),
        with_field(interest_base, "bad enum", "update_type", ["REPLACE", "set", ""]),
        with_field(interest_base, "empty id", "portfolio_id", [""]),
    ],
)
COMMANDS = message_mistakes(
    command_base,
    {
        "type": _is_tag("control_command"),
        "command": _is_str,
        "correlation_id": _is_str,
        "timestamp": _is_str,
        "source": _is_str,
    },
    [
        far_future(command_base),
        with_field(command_base, "empty id", "correlation_id", [""]),
        with_field(command_base, "huge or non-finite number", "timestamp", HUGE),
        with_field(command_base, "wrong field type", "params", [[], "x", 1, None]),
    ],
)
TICKS = message_mistakes(
    tick_base,
    {
        "type": _is_tag("price_update"),
        "symbol": _is_str,
        "price": _is_number,
        "timestamp": _is_str,
        "source": _is_str,
    },
    [
        st.sampled_from([*UNKNOWN_SYMBOLS[:4], "700.HKK", "600000.XX"]).map(
            lambda s: ("unknown symbol", _encode({**tick_base(), "symbol": s}))
        ),
        st.tuples(st.sampled_from(PRICE_FIELDS + QUANTITY_FIELDS), st.sampled_from(["1e999", "-1e999"])).map(
            lambda f: ("non-finite number (JSON 1e999)", _encode(tick_base())[:-1] + f', "{f[0]}": {f[1]}}}'.encode())
        ),
        # dropped by the data-quality checks: counted, not dead-lettered (DESIGN.md)
        st.tuples(
            st.sampled_from(PRICE_FIELDS + QUANTITY_FIELDS),
            st.sampled_from([1e308, -1e308]),
            st.sampled_from(TICK_SYMBOLS),
        ).map(lambda f: ("quality: huge number", _encode({**tick_base(), "symbol": f[2], f[0]: f[1]}))),
        st.tuples(st.sampled_from([0.0, -1.0, -0.01]), st.sampled_from(TICK_SYMBOLS)).map(
            lambda f: ("quality: price <= 0", _encode({**tick_base(), "symbol": f[1], "price": f[0]}))
        ),
        st.tuples(st.sampled_from(FAR_FUTURE), st.sampled_from(TICK_SYMBOLS)).map(
            lambda f: ("quality: far-future timestamp", _encode({**tick_base(), "symbol": f[1], "timestamp": f[0]}))
        ),
    ],
)
SUBSCRIPTIONS = message_mistakes(
    subscription_base,
    {
        "type": _is_tag("subscription"),
        "market": _is_str,
        "symbols": _is_symbols,
        "timestamp": _is_str,
    },
    [with_field(subscription_base, "over-long symbol", "symbols", [["X" * 40], ["AAPL", "Y" * 33]])],
)


def huge_records(base: dict[str, Any], field: str, tag_bytes: int = 1_000_000) -> list[Record]:
    """A few ~1 MB values: a field carrying a megabyte it must not have, and an unknown
    ``type`` of ``tag_bytes`` (the decoder quotes it whole in its error message)."""
    return [
        (b"fuzz", huge_payload(base, field, lambda n: "A" * n), "~1 MB value"),
        (b"fuzz", huge_payload(base, field, lambda n: ["X" * 40] * (n // 45)), "~1 MB value"),
        (b"fuzz", b'{"type": "' + b"x" * tag_bytes + b'"}', "~1 MB value"),
    ]


def shuffled(bad: list[Bad], valid: list[Record], rng: random.Random, bad_key: bytes = b"fuzz") -> list[Record]:
    """Bad messages with the valid ones spread among them, valid ones kept in their order."""
    records: list[Record] = [(bad_key, raw, cls) for cls, raw in bad]
    rng.shuffle(records)
    slots = sorted(rng.sample(range(len(records) + len(valid)), len(valid)))
    out: list[Record] = []
    it = iter(valid)
    bad_it = iter(records)
    slot_set = set(slots)
    for i in range(len(records) + len(valid)):
        out.append(next(it) if i in slot_set else next(bad_it))
    return out


async def produce(bootstrap: str, topic: str, records: list[Record]) -> float:
    """Send in batches (delivery gathered per batch); seconds taken."""
    started = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2**21)
    await producer.start()
    try:
        for i in range(0, len(records), 2000):
            futures = [await producer.send(topic, value, key=key) for key, value, _ in records[i : i + 2000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


def count_bad(records: list[Record]) -> Counter[str]:
    return Counter(cls for _, _, cls in records if cls != "valid")


# -- the datamanager -------------------------------------------------------------------


async def test_datamanager_survives_fuzzed_input(kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    bad_interest = collect(INTEREST, BAD_PER_TOPIC)
    bad_commands = collect(COMMANDS, BAD_PER_TOPIC)
    bad_ticks = collect(TICKS, BAD_PER_TOPIC)
    generated_s = time.monotonic() - started

    # valid interest: 60 subscribers, each one replace (the last word on its set)
    subscribers = {f"fz-p{i}": sorted(rng.sample(CN + HK + US, 3)) for i in range(60)}
    subscribers["fz-ticks"] = TICK_SYMBOLS
    valid_interest: list[Record] = []
    for pid, symbols in subscribers.items():
        doc = {**interest_base(), "portfolio_id": pid, "node_id": "n1", "symbols": symbols}
        valid_interest.append((f"{pid}/n1".encode(), _encode(doc), "valid"))
    # valid commands: status, each with its own correlation id
    ids = [f"fz-status-{i}" for i in range(100)]
    valid_commands: list[Record] = [
        (b"datamanager", _encode({**command_base(), "correlation_id": cid}), "valid") for cid in ids
    ]
    # valid ticks: increasing time per symbol, trade sizes summed into the bars
    valid_ticks: list[Record] = []
    expected: dict[str, dict[str, float]] = {}
    for n in range(TICKS_PER_SYMBOL):
        for symbol in TICK_SYMBOLS:
            price = round(10.0 + rng.randint(0, 50) / 100.0, 2)
            doc = {**tick_base(), "symbol": symbol, "price": price, "last_size": 100.0, "timestamp": _ts(-30 + n * 0.1)}
            valid_ticks.append((symbol.encode(), _encode(doc), "valid"))
            e = expected.setdefault(symbol, {"open": price, "high": price, "low": price, "volume": 0.0})
            e["high"], e["low"], e["close"] = max(e["high"], price), min(e["low"], price), price
            e["volume"] += 100.0
    # our own bars on market data: the datamanager skips them (neither dead letter nor tick)
    own_bars: list[Record] = [
        (
            s.encode(),
            _encode(
                {
                    "type": "bar",
                    "v": 1,
                    "symbol": s,
                    "period": "1m",
                    "open": 1.0,
                    "high": 1.0,
                    "low": 1.0,
                    "close": 1.0,
                    "volume": 0.0,
                    "timestamp": _ts(-120),
                    "source": "x",
                }
            ),
            "valid",
        )
        for s in TICK_SYMBOLS
    ]

    # the messages are stamped relative to NOW, fixed when this module was imported, which
    # may be minutes before this test runs in a full suite: keep the valid commands fresh
    live = {"datamanager": {"command_freshness_s": 3600}}
    async with System(tmp_path, kafka_bootstrap, names=("datamanager",), livedata=live) as system:
        t = system.topics
        plan = {
            t.interest_updates: shuffled(bad_interest, valid_interest, rng) + huge_records(interest_base(), "symbols"),
            t.control_commands: shuffled(bad_commands, valid_commands, rng, b"datamanager")
            + huge_records(command_base(), "timestamp"),
            t.market_data: shuffled(bad_ticks, valid_ticks + own_bars, rng) + huge_records(tick_base(), "symbol"),
        }
        # each topic's messages in order of sending: valid ones must keep theirs
        bad = {topic: count_bad(records) for topic, records in plan.items()}
        quality = {topic: sum(n for cls, n in c.items() if cls.startswith("quality:")) for topic, c in bad.items()}
        dm = system["datamanager"]
        async with (
            TopicReader(kafka_bootstrap, t.deadletter) as dead,
            TopicReader(kafka_bootstrap, t.system_events) as events,
            TopicReader(kafka_bootstrap, t.subscriptions) as subs,
            TopicReader(kafka_bootstrap, t.market_data) as market,
        ):
            sent_at = time.monotonic()
            produce_s = dict(
                zip(
                    plan,
                    await asyncio.gather(*(produce(kafka_bootstrap, tp, r) for tp, r in plan.items())),
                    strict=True,
                )
            )

            def letters() -> Counter[str]:
                return Counter(d.source_topic for d in dead.of_type(DeadLetter))

            want = {topic: sum(c.values()) - quality[topic] for topic, c in bad.items()}
            try:
                await eventually(
                    lambda: all(letters()[topic] >= n for topic, n in want.items()),
                    timeout_s=45,
                    interval_s=0.2,
                    what=f"dead letters per topic {want}",
                )
            except AssertionError:
                log = dm.log.read_text(errors="replace").splitlines()
                others = [line for line in log if "dead-lettered a message" not in line]
                print("\n".join(line[:300] for line in others[-30:]))
                raise AssertionError(f"dead letters {dict(letters())}, want {want}") from None
            handled_s = time.monotonic() - sent_at

            def answers() -> Counter[str]:
                return Counter(r.correlation_id for r in events.of_type(CommandResult) if r.correlation_id in ids)

            await eventually(lambda: set(answers()) == set(ids), timeout_s=20, what="an answer to each status command")

            union = {s for symbols in subscribers.values() for s in symbols}

            def published() -> set[str]:
                latest: dict[str, Subscription] = {}
                for s in subs.of_type(Subscription):
                    latest[s.market] = s
                return {sym for s in latest.values() for sym in s.symbols}

            await eventually(lambda: published() == union, timeout_s=20, what="the valid interest's union published")

            async def aggregated() -> float:
                return (await dm.metrics()).get("livedata_datamanager_ticks_aggregated_total", 0.0)

            await eventually(
                lambda: _ge(aggregated(), len(valid_ticks)), timeout_s=20, what="every valid tick in the bars"
            )
            # bar_snapshot of the day's bars: the valid ticks, untouched by the bad ones
            snap_id = "fz-snapshot"
            await produce(
                kafka_bootstrap,
                t.control_commands,
                [
                    (
                        b"datamanager",
                        _encode(
                            {
                                **command_base(),
                                "command": "bar_snapshot",
                                "correlation_id": snap_id,
                                "timestamp": utcnow().isoformat(),
                            }
                        ),
                        "valid",
                    )
                ],
            )
            await events.wait_for(CommandResult, lambda r: r.correlation_id == snap_id, timeout_s=20)
            await eventually(
                lambda: {b.symbol for b in market.of_type(Bar) if b.period == "1d"} >= set(TICK_SYMBOLS),
                timeout_s=10,
                what="daily bars of the ticked symbols",
            )
            assert await dm.ready(), "datamanager not ready after the fuzz"
            text = await dm.get("/metrics")
            final_letters = letters()
        rejected = labelled(text, "livedata_datamanager_ticks_rejected")
        dead_metric = labelled(text, "livedata_dead_lettered")
        days = {b.symbol: b for b in market.of_type(Bar) if b.period == "1d" and b.source != "x"}
        answered = answers()
        ticks_in = _sample(text, "livedata_datamanager_ticks_aggregated")

    print(
        f"\ngenerated {sum(len(b) for b in (bad_interest, bad_commands, bad_ticks))} bad messages in"
        f" {generated_s:.1f}s; handled in {handled_s:.1f}s after sending"
    )
    for topic, records in plan.items():
        short = topic.removeprefix(t.prefix + ".")
        valid = sum(1 for r in records if r[2] == "valid")
        print(
            f"- {short}: sent {len(records)} ({sum(bad[topic].values())} bad, {valid} valid) in"
            f" {produce_s[topic]:.1f}s; dead-lettered {final_letters[topic]} (metric"
            f" {dead_metric.get(topic, 0):.0f}); bad by class: {dict(sorted(bad[topic].items()))}"
        )
    print(
        f"- market.data: dropped by data quality {dict(sorted(rejected.items()))} (bad ticks of that kind sent:"
        f" {quality[t.market_data]}); valid ticks {len(valid_ticks)}, aggregated {ticks_in:.0f};"
        f" own bars skipped {len(own_bars)}"
    )
    print(
        f"- commands: {len(ids)} valid, answered {sum(answered.values())} ({len(answered)} distinct);"
        f" interest: {len(subscribers)} valid subscribers, union of {len(union)} symbols published"
    )

    for topic, n in want.items():
        assert final_letters[topic] == n, f"{topic}: {final_letters[topic]} dead letters for {n} bad messages"
    quality_dropped = sum(v for reason, v in rejected.items() if reason != "snapshot_replay")
    assert quality_dropped == quality[t.market_data]
    assert ticks_in == len(valid_ticks)
    assert all(n == 1 for n in answered.values()) and len(answered) == len(ids)
    for symbol, e in expected.items():
        bar = days[symbol]
        got = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume}
        assert got == pytest.approx(e), f"{symbol}: daily bar {got}, expected {e}"


def _sample(metrics_text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+-]+)$", metrics_text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def _ge(value: Any, n: float) -> bool:
    return bool(await value >= n)


# -- the gateway -----------------------------------------------------------------------

FINAL = {"CN": ["600100.SH", "000001.SZ"], "HK": ["00700.HK"], "US": ["AAPL", "MSFT"]}
ALL_FINAL = {s for symbols in FINAL.values() for s in symbols}
# Subscriptions that decode but break the gateway's rules: a market it does not know
# (dead-lettered) and symbols of no market, which by design are skipped without a dead
# letter (counted in livedata_gateway_symbols_rejected, the rest of the message applied)
SKIPPED_CLASSES = ("gateway: symbol of no market",)


def _subscription(market: str, symbols: list[str]) -> bytes:
    return _encode({**subscription_base(), "market": market, "symbols": symbols})


GATEWAY_SKIPPED = st.one_of(
    st.sampled_from(["XX", "cn", "", "US ", "NOT A MARKET"]).map(
        lambda m: ("gateway: unknown market", _subscription(m, ["600000.SH"]))
    ),
    st.tuples(st.sampled_from(list(FINAL)), st.sampled_from(["foo.bar", "NOT A SYMBOL", "600000.XX", "1.2.3"])).map(
        lambda f: ("gateway: symbol of no market", _subscription(f[0], [*FINAL[f[0]], f[1]]))
    ),
)


async def test_gateway_survives_fuzzed_subscriptions(kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    bad_subs = collect(SUBSCRIPTIONS, BAD_PER_TOPIC)
    skipped = collect(GATEWAY_SKIPPED, 300)
    generated_s = time.monotonic() - started
    valid: list[Record] = [
        (m.encode(), _subscription(m, symbols), "valid") for _ in range(20) for m, symbols in FINAL.items()
    ]
    rejected_symbols_sent = sum(1 for cls, _ in skipped if cls == "gateway: symbol of no market")
    unknown_markets_sent = len(skipped) - rejected_symbols_sent

    async with System(tmp_path, kafka_bootstrap, names=("gateway",)) as system:
        t = system.topics
        records = shuffled(bad_subs + skipped, valid, rng)
        # the last word per market is a valid subscription (last value wins)
        records += [(m.encode(), _subscription(m, symbols), "valid") for m, symbols in FINAL.items()]
        records += huge_records(subscription_base(), "symbols")
        bad = count_bad(records)
        want = sum(n for cls, n in bad.items() if cls not in SKIPPED_CLASSES)
        gw = system["gateway"]
        async with (
            TopicReader(kafka_bootstrap, t.deadletter) as dead,
            TopicReader(kafka_bootstrap, t.market_data) as market,
        ):
            sent_at = time.monotonic()
            produce_s = await produce(kafka_bootstrap, t.subscriptions, records)

            def letters() -> int:
                return sum(1 for d in dead.of_type(DeadLetter) if d.source_topic == t.subscriptions)

            try:
                await eventually(lambda: letters() >= want, timeout_s=45, interval_s=0.2, what="dead letters")
            except AssertionError:
                raise AssertionError(f"{letters()} dead letters, want {want}") from None
            handled_s = time.monotonic() - sent_at

            def ticked() -> set[str]:
                return {m.symbol for m in market.messages if isinstance(m, PriceUpdate)}

            mark = len(market.messages)
            await eventually(lambda: ticked() >= ALL_FINAL, timeout_s=20, what="ticks of every subscribed symbol")
            # ticks published once every subscription is read: only the final symbols
            await eventually(lambda: len(market.messages) > mark + 200, timeout_s=10, what="more ticks")
            recent = {m.symbol for m in market.messages[mark:] if isinstance(m, PriceUpdate)}
            assert await gw.ready(), "gateway not ready after the fuzz"
            text = await gw.get("/metrics")
            final_letters = letters()
            ever_ticked = ticked()
    rejected = labelled(text, "livedata_gateway_symbols_rejected")
    print(
        f"\ngenerated {len(bad_subs) + len(skipped)} bad subscriptions in {generated_s:.1f}s; sent {len(records)}"
        f" ({sum(bad.values())} bad, {len(records) - sum(bad.values())} valid) in {produce_s:.1f}s; dead-lettered"
        f" {final_letters} of the {want} it must dead-letter, in {handled_s:.1f}s after sending; bad by class:"
        f" {dict(sorted(bad.items()))}"
    )
    print(
        f"- of them {unknown_markets_sent} for unknown markets (dead-lettered); skipped by design"
        f" {rejected_symbols_sent} with a symbol of no market (rejected symbols counted: {dict(rejected)});"
        f" symbols ticked {sorted(ever_ticked)}"
    )
    assert final_letters == want
    assert sum(rejected.values()) == rejected_symbols_sent
    assert ever_ticked == ALL_FINAL and recent <= ALL_FINAL


# -- provider frames, through each feeder's parse path -------------------------------------

FRAMES_PER_FEEDER = 10_000
# malformed by construction, so counted exactly. Not for EastMoney an invalid UTF-8 byte:
# msgspec skips the envelope keys it does not read (rt, svr, dlmkts) without validating
# them, so a bad byte there goes unseen (the quote itself is read whole and is clean)
CERTAIN = ("truncated", "invalid byte spliced in")


def _line_mutations(lines: list[str]) -> st.SearchStrategy[Frame]:
    """A Tencent quote line with a field replaced, fields dropped or added, or re-encoded."""
    values = st.sampled_from(["", "abc", "-", "1e308", "-1e308", "nan", "inf", "-1", "0", "9" * 40, "~", '"', "=;"])

    @st.composite
    def mutate(draw: st.DrawFn) -> Frame:
        line = draw(st.sampled_from(lines))
        head, _, rest = line.partition('="')
        fields = rest.removesuffix('";').split("~")
        how = draw(st.sampled_from(["replace", "replace", "drop", "extra"]))
        if how == "replace":
            fields[draw(st.integers(0, len(fields) - 1))] = draw(values)
        elif how == "drop":
            del fields[draw(st.integers(0, len(fields) - 1)) :]
        else:
            fields += draw(st.lists(values, min_size=1, max_size=5))
        return f"field {how}", f'{head}="{"~".join(fields)}";'.encode("gbk", errors="replace")

    return mutate()


def _certain(seeds: list[bytes], invalid_byte: bytes | None) -> st.SearchStrategy[Frame]:
    @st.composite
    def truncated(draw: st.DrawFn) -> Frame:
        raw = draw(st.sampled_from(seeds))
        return "truncated", raw[: draw(st.integers(min_value=1, max_value=len(raw) - 2))]

    @st.composite
    def spliced(draw: st.DrawFn) -> Frame:
        assert invalid_byte is not None
        raw = draw(st.sampled_from(seeds))
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return "invalid byte spliced in", raw[:at] + invalid_byte + raw[at:]

    return st.one_of(truncated(), spliced()) if invalid_byte is not None else truncated()


def _feeder_cases() -> dict[str, tuple[Callable[[Outcome], Any], st.SearchStrategy[Frame], list[Frame]]]:
    alpaca = fuzz_frames.alpaca_seeds()
    alpaca_json = [_encode(f) for f in alpaca]
    alpaca_packed = [msgpack.packb(f) for f in alpaca]
    sse = fuzz_frames.eastmoney_sse_seeds()
    sse_docs = [json.loads(s) for s in sse]
    snap_int = (FIXTURES / "eastmoney" / "ulist_keyed_int.json").read_bytes()
    fushu_doc = fuzz_frames.fushu_seed()
    fushu_raw = _encode(fushu_doc)
    fushu_polled = {item["symbol"] for item in fushu_doc["data"] if isinstance(item, dict)}
    lines = fuzz_frames.tencent_seed_lines()
    tencent_raw = [line.encode("gbk") for line in lines]
    tencent_keys = {parse_line(line)[0] for line in lines}

    def mb_json(doc: Any) -> list[Frame]:
        return [("~1 MB", _encode({"pad": "A" * MB, "doc": doc})), ("~1 MB", b"[" + b"1," * (MB // 2) + b"1]")]

    return {
        "alpaca json": (
            lambda out: AlpacaPath(out, use_msgpack=False),
            st.one_of(document_mutations(alpaca), byte_mutations(alpaca_json), _certain(alpaca_json, b"\xff")),
            mb_json(alpaca[0]),
        ),
        "alpaca msgpack": (
            lambda out: AlpacaPath(out, use_msgpack=True),
            st.one_of(
                document_mutations(alpaca, msgpack.packb), byte_mutations(alpaca_packed), _certain(alpaca_packed, None)
            ),
            [("~1 MB", msgpack.packb([{"T": "t", "S": "AAPL", "pad": "A" * MB}])), ("~1 MB", b"\xdd\xff\xff\xff\xff")],
        ),
        "eastmoney sse event": (
            EastMoneySsePath,
            st.one_of(document_mutations(sse_docs), byte_mutations(sse), _certain(sse, None)),
            mb_json(sse_docs[0]),
        ),
        "eastmoney snapshot": (
            lambda out: EastMoneySnapshotPath(out, decimal=False),
            st.one_of(
                document_mutations([json.loads(snap_int)]), byte_mutations([snap_int]), _certain([snap_int], None)
            ),
            mb_json(json.loads(snap_int)),
        ),
        "fushu": (
            lambda out: FushuPath(out, fushu_polled),
            st.one_of(document_mutations([fushu_doc]), byte_mutations([fushu_raw]), _certain([fushu_raw], b"\xff")),
            mb_json(fushu_doc),
        ),
        "tencent": (
            lambda out: TencentPath(out, tencent_keys),
            st.one_of(_line_mutations(lines), byte_mutations(tencent_raw), _certain(tencent_raw, b"\xff")),
            [("~1 MB", tencent_raw[0][:-2] + b"~" * MB + b'";'), ("~1 MB", b'v_r_hk00700="' + b"\x81" * MB)],
        ),
    }


FEEDERS = ["alpaca json", "alpaca msgpack", "eastmoney sse event", "eastmoney snapshot", "fushu", "tencent"]


@pytest.mark.parametrize("feeder", FEEDERS)
def test_feeder_parse_paths_survive_malformed_frames(feeder: str) -> None:
    make_path, strategy, huge = _feeder_cases()[feeder]
    started = time.monotonic()
    frames = collect(strategy, FRAMES_PER_FEEDER - len(huge)) + huge
    generated_s = time.monotonic() - started
    out = Outcome()
    path = make_path(out)
    escaped: list[tuple[str, bytes, BaseException]] = []
    per_class: dict[str, Counter[str]] = {}
    started = time.monotonic()
    for cls, raw in frames:
        before, ticks_before = out.malformed_total, len(out.ticks)
        try:
            path.feed(raw)
            verdict = (
                "malformed" if out.malformed_total > before else "ticks" if len(out.ticks) > ticks_before else "none"
            )
        except ProviderRefusal:
            out.refusals += 1
            verdict = "malformed, refused" if out.malformed_total > before else "refused"
        except Exception as e:  # an exception the feeder would not catch: the bug this test is for
            escaped.append((cls, raw[:200], e))
            verdict = "ESCAPED"
        per_class.setdefault(cls, Counter())[verdict] += 1
    parse_s = time.monotonic() - started
    insane = out.insane_ticks()
    certain = sum(sum(c.values()) for cls, c in per_class.items() if cls in CERTAIN)
    certain_malformed = sum(
        n for cls, c in per_class.items() if cls in CERTAIN for v, n in c.items() if v.startswith("malformed")
    )
    print(
        f"\n{feeder}: {len(frames)} malformed frames (generated in {generated_s:.1f}s, parsed in {parse_s:.2f}s);"
        f" escaped {len(escaped)}; malformed counted {out.malformed_total} ({dict(sorted(out.malformed.items()))});"
        f" refused {out.refusals}; ticks {len(out.ticks)} ({len(insane)} with an impossible price);"
        f" malformed by construction {certain}, counted {certain_malformed}"
    )
    for cls, c in sorted(per_class.items()):
        print(f"- {cls}: {dict(sorted(c.items()))}")
    assert not escaped, "\n".join(f"{cls}: {e!r} on {raw!r}" for cls, raw, e in escaped[:10])
    assert certain_malformed == certain
    assert not insane, insane[:5]
