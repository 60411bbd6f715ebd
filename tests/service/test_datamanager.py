"""datamanager on a real broker: interest → subscriptions, bars, bar_snapshot, dead letters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from services.datamanager.service import DataManager
from shared.config import AppConfig
from shared.dto import (
    Bar,
    CommandResult,
    ControlCommand,
    DeadLetter,
    InterestUpdate,
    PriceUpdate,
    Subscription,
    UpdateType,
    utcnow,
)
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running


def interest(pid: str, kind: UpdateType, *symbols: str) -> InterestUpdate:
    return InterestUpdate(portfolio_id=pid, node_id="n", symbols=symbols, update_type=kind, timestamp=utcnow())


def latest(reader: TopicReader, market: str) -> tuple[str, ...] | None:
    subs = [m for m in reader.of_type(Subscription) if m.market == market]
    return subs[-1].symbols if subs else None


async def test_interest_becomes_per_market_subscriptions_and_survives_restart(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    config = make_config(topics)
    async with TopicReader(kafka_bootstrap, topics.subscriptions) as subs:
        dm = DataManager(config)
        async with running(dm):
            await eventually(lambda: dm.interest.loaded.is_set(), what="interest loaded")
            await publish(
                kafka_bootstrap, topics.interest_updates, interest("p1", "replace", "600000.SH", "AAPL"), key="p1/n"
            )
            await publish(
                kafka_bootstrap, topics.interest_updates, interest("p2", "replace", "AAPL", "00700.HK"), key="p2/n"
            )
            await eventually(lambda: latest(subs, "HK") == ("00700.HK",), what="HK subscription")
            # p2's replace did not disturb p1
            await publish(kafka_bootstrap, topics.interest_updates, interest("p2", "replace", "MSFT"), key="p2/n")
            await eventually(
                lambda: latest(subs, "US") == ("AAPL", "MSFT") and latest(subs, "HK") == (), what="p2 replaced"
            )
            assert latest(subs, "CN") == ("600000.SH",)
            await publish(kafka_bootstrap, topics.interest_updates, interest("p1", "remove", "AAPL"), key="p1/n")
            await eventually(lambda: latest(subs, "US") == ("MSFT",), what="p1 removed AAPL")
        # a new instance rebuilds the same state from the topic and republishes it
        before = len(subs.messages)
        dm2 = DataManager(config)
        async with running(dm2):
            await eventually(lambda: dm2.interest.loaded.is_set(), what="interest reloaded")
            await eventually(lambda: len(subs.messages) >= before + 3, what="republished subscriptions")
            assert dm2.interest.registry.subscriber_symbols("p1", "n") == {"600000.SH"}
            assert dm2.interest.registry.subscriber_symbols("p2", "n") == {"MSFT"}
            assert latest(subs, "US") == ("MSFT",) and latest(subs, "CN") == ("600000.SH",)


async def test_bar_snapshot_publishes_todays_bars_then_a_result(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    dm = DataManager(make_config(topics))
    async with (
        running(dm),
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        TopicReader(kafka_bootstrap, topics.market_data) as md,
    ):
        await eventually(lambda: dm.interest.loaded.is_set(), what="interest loaded")
        await publish(
            kafka_bootstrap, topics.interest_updates, interest("p1", "replace", "AAPL", "MSFT", "600000.SH"), key="p1/n"
        )
        await eventually(lambda: len(dm.interest.registry.all_symbols()) == 3, what="interest applied")
        now = utcnow()
        ticks = [
            PriceUpdate(symbol="AAPL", price=100.0, timestamp=now, source="t", last_size=10),
            PriceUpdate(symbol="AAPL", price=101.5, timestamp=now + timedelta(milliseconds=5), source="t", last_size=5),
            PriceUpdate(symbol="MSFT", price=400.0, timestamp=now, source="t", last_size=1),
        ]
        await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
        for t in ticks:
            await publish(kafka_bootstrap, topics.market_data, t, key=t.symbol)
        bars = dm.intake.bars
        await eventually(lambda: bars.daily_bar("MSFT") is not None and bars.ticks == 3, what="ticks aggregated")
        cmd = ControlCommand(
            command="bar_snapshot", correlation_id="snap-1", timestamp=utcnow(), source="test", params={"period": "1d"}
        )
        await publish(kafka_bootstrap, topics.control_commands, cmd, key="datamanager")
        result = await events.wait_for(CommandResult, lambda r: r.correlation_id == "snap-1", timeout_s=15)
        assert result.ok and result.detail["bars"] == 2 and result.detail["missing"] == 1
        bars = [b for b in md.of_type(Bar)]
        aapl = next(b for b in bars if b.symbol == "AAPL")
        assert (aapl.period, aapl.open, aapl.high, aapl.close, aapl.volume) == ("1d", 100.0, 101.5, 101.5, 15)
        # the same correlation id again, and a stale command: neither is answered
        await publish(kafka_bootstrap, topics.control_commands, cmd, key="datamanager")
        stale = ControlCommand(
            command="bar_snapshot", correlation_id="old", timestamp=utcnow() - timedelta(minutes=5), source="test"
        )
        await publish(kafka_bootstrap, topics.control_commands, stale, key="datamanager")
        await eventually(
            lambda: dm.commands.desk.ignored_duplicate == 1 and dm.commands.desk.ignored_stale == 1,
            what="duplicate and stale ignored",
        )
        assert [r.correlation_id for r in events.of_type(CommandResult)] == ["snap-1"]


async def test_bad_input_on_every_consumed_topic_is_dead_lettered(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    dm = DataManager(make_config(topics))
    async with (
        running(dm),
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
    ):
        await eventually(lambda: dm.interest.loaded.is_set(), what="interest loaded")
        await publish(kafka_bootstrap, topics.interest_updates, b'{"type":"interest_update"}', key="x")
        await publish(kafka_bootstrap, topics.interest_updates, interest("p", "add", "NOT A SYMBOL"), key="p/n")
        await eventually(lambda: len(dlq.of_type(DeadLetter)) >= 2, what="interest dead letters")
        reasons = [d.reason for d in dlq.of_type(DeadLetter)]
        assert "missing required field" in reasons[0] and "'NOT A SYMBOL'" in reasons[1]

        await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
        await publish(
            kafka_bootstrap, topics.market_data, b'{"type":"price_update","symbol":"AAPL","price":"x"}', key="AAPL"
        )
        await publish(kafka_bootstrap, topics.control_commands, b"[1,2,3]", key="datamanager")
        await eventually(
            lambda: {d.source_topic for d in dlq.of_type(DeadLetter)} >= {topics.market_data, topics.control_commands},
            what="market-data and command dead letters",
        )
        # still serving
        await publish(
            kafka_bootstrap,
            topics.control_commands,
            ControlCommand(command="status", correlation_id="s1", timestamp=utcnow(), source="t"),
            key="datamanager",
        )
        await events.wait_for(CommandResult, lambda r: r.correlation_id == "s1" and r.ok, timeout_s=15)
        await publish(
            kafka_bootstrap,
            topics.control_commands,
            ControlCommand(command="nope", correlation_id="s2", timestamp=utcnow(), source="t"),
            key="datamanager",
        )
        bad = await events.wait_for(CommandResult, lambda r: r.correlation_id == "s2", timeout_s=15)
        assert not bad.ok and "unknown command 'nope'" in bad.detail["error"]
