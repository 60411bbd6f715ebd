"""The gateway's repair worker on the real broker: holes become windows of whole minutes,
announced ``pending`` at once, fetched from the market's histories (the active source's
first, a stand-in named), retried after failures, and published per symbol on market data.

The minute history here is scripted (what the provider answers, call by call): the real
histories are tested against their simulators in test_*_history.py; this file tests the
worker's own rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from services.feeder_gateway.feeders.history import (
    HistoryUnavailable,
    MinuteBar,
    MinuteHistory,
)
from services.feeder_gateway.repair import RepairWorker, window_of
from shared.config import KafkaSettings, RepairSettings
from shared.dto import ControlCommand, HistoryBars, utcnow
from shared.events import SystemEvents
from shared.kafka import KafkaPublisher
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish

T0 = (utcnow() - timedelta(minutes=30)).replace(second=0, microsecond=0)


def minute(i: int, price: float = 10.0) -> MinuteBar:
    return MinuteBar(T0 + timedelta(minutes=i), price, price + 1, price - 1, price, 100.0 * (i + 1), 1000.0 * (i + 1))


@dataclass
class ScriptedHistory:
    """A provider's minute history answering from a script: each call pops the next answer
    (an exception to raise) or, when the script is empty, serves ``bars``."""

    source: str
    bars: dict[str, list[MinuteBar]] = field(default_factory=dict)
    script: list[Exception] = field(default_factory=list)
    fields: tuple[str, ...] = ("open", "high", "low", "close", "volume", "amount")
    max_symbols_per_request: int = 2
    settle_s: float = 0.0
    reach_from: datetime | None = None
    calls: list[tuple[tuple[str, ...], datetime, datetime]] = field(default_factory=list)

    def reaches(self, start: datetime, now: datetime) -> bool:
        return self.reach_from is None or start >= self.reach_from

    async def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, list[MinuteBar]]:
        self.calls.append((tuple(symbols), start, end))
        if self.script:
            raise self.script.pop(0)
        return {s: self.bars.get(s, []) for s in symbols}


@dataclass
class Market_:
    active_source: str
    symbols: frozenset[str]
    sources: list[MinuteHistory | None]

    def histories(self) -> list[MinuteHistory]:
        return [h for h in self.sources if h is not None]


@pytest.fixture
async def worker_on(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[tuple[Topics, TopicReader, KafkaPublisher]]:
    async with (
        KafkaPublisher(KafkaSettings(bootstrap_servers=kafka_bootstrap), "test-repair") as pub,
        TopicReader(kafka_bootstrap, topics.market_data) as data,
    ):
        yield topics, data, pub


async def run_worker(
    worker: RepairWorker, body: asyncio.Future[None] | asyncio.Task[None], stop: asyncio.Event
) -> None:
    task = asyncio.create_task(worker.run(stop))
    try:
        await body
    finally:
        stop.set()
        await task


def make_worker(pub: KafkaPublisher, topics: Topics, market: Market_, **settings: float) -> RepairWorker:
    return RepairWorker(
        {Market.US: market},
        pub,
        topics.market_data,
        SystemEvents("test", topics.system_events),
        ServiceMetrics("test"),
        RepairSettings(retry_base_s=0.05, retry_cap_s=0.2, **settings),
    )


def history_of(data: TopicReader, symbol: str) -> list[HistoryBars]:
    return [m for m in data.of_type(HistoryBars) if m.symbol == symbol]


def test_a_hole_covers_the_minutes_of_both_its_ends() -> None:
    since = T0 + timedelta(seconds=31)  # last tick before: 0:31 into minute 0
    until = T0 + timedelta(minutes=2, seconds=5)  # first tick after: in minute 2
    assert window_of(since, until) == (T0, T0 + timedelta(minutes=3))


async def test_pending_at_once_then_the_providers_minutes_inside_the_window_only(
    worker_on: tuple[Topics, TopicReader, KafkaPublisher],
) -> None:
    topics, data, pub = worker_on
    history = ScriptedHistory("alpaca", bars={"AAPL": [minute(i) for i in range(6)], "MSFT": [minute(2, 50.0)]})
    worker = make_worker(pub, topics, Market_("alpaca", frozenset({"AAPL", "MSFT", "TSLA"}), [history]))
    stop = asyncio.Event()

    async def body() -> None:
        worker.hole(
            Market.US,
            frozenset({"AAPL", "MSFT", "TSLA"}),
            T0 + timedelta(minutes=1, seconds=10),
            T0 + timedelta(minutes=3, seconds=1),
            "reconnect",
        )
        await eventually(lambda: len([m for m in data.of_type(HistoryBars) if m.state == "repaired"]) == 3, 15)

    await run_worker(worker, asyncio.ensure_future(body()), stop)
    aapl = history_of(data, "AAPL")
    assert [m.state for m in aapl] == ["pending", "repaired"]
    assert (aapl[0].start, aapl[0].end) == (T0 + timedelta(minutes=1), T0 + timedelta(minutes=4))
    assert [b[0] for b in aapl[1].bars] == [minute(i).row()[0] for i in (1, 2, 3)]  # minutes 0, 4, 5 are outside
    assert aapl[1].bars[0] == minute(1).row()
    assert history_of(data, "TSLA")[-1].bars == ()  # no trade in the window: confirmed empty
    assert [len(c[0]) for c in history.calls] == [2, 1]  # max_symbols_per_request


async def test_a_failing_history_is_retried_until_it_answers(
    worker_on: tuple[Topics, TopicReader, KafkaPublisher],
) -> None:
    topics, data, pub = worker_on
    history = ScriptedHistory(
        "alpaca",
        bars={"AAPL": [minute(1)]},
        script=[HistoryUnavailable("503 from the history endpoint"), HistoryUnavailable("429", retry_after_s=0.1)],
    )
    worker = make_worker(pub, topics, Market_("alpaca", frozenset({"AAPL"}), [history]))
    stop = asyncio.Event()

    async def body() -> None:
        worker.hole(
            Market.US,
            frozenset({"AAPL"}),
            T0 + timedelta(minutes=1),
            T0 + timedelta(minutes=1, seconds=30),
            "reconnect",
        )
        await eventually(lambda: any(m.state == "repaired" for m in history_of(data, "AAPL")), 15)

    await run_worker(worker, asyncio.ensure_future(body()), stop)
    states = [(m.state, m.attempt) for m in history_of(data, "AAPL")]
    assert states == [("pending", 0), ("failed", 1), ("failed", 2), ("repaired", 3)]
    assert history_of(data, "AAPL")[1].reason == "503 from the history endpoint"
    assert worker.pending(Market.US) == 0


async def test_a_source_without_history_is_stood_in_for_and_out_of_reach_is_final(
    worker_on: tuple[Topics, TopicReader, KafkaPublisher],
) -> None:
    topics, data, pub = worker_on
    tencent = ScriptedHistory("tencent", bars={"00700.HK": [minute(1)]}, reach_from=T0 + timedelta(minutes=1))
    worker = RepairWorker(
        {Market.HK: Market_("fushu", frozenset({"00700.HK"}), [None, tencent])},
        pub,
        topics.market_data,
        SystemEvents("test", topics.system_events),
        ServiceMetrics("test"),
        RepairSettings(retry_base_s=0.05),
    )
    stop = asyncio.Event()

    async def body() -> None:
        worker.hole(
            Market.HK,
            frozenset({"00700.HK"}),
            T0 + timedelta(minutes=1),
            T0 + timedelta(minutes=1, seconds=1),
            "failover",
        )
        worker.hole(
            Market.HK, frozenset({"00700.HK"}), T0 - timedelta(minutes=9), T0 - timedelta(minutes=8), "reconnect"
        )
        await eventually(lambda: len([m for m in history_of(data, "00700.HK") if m.state != "pending"]) == 2, 15)

    await run_worker(worker, asyncio.ensure_future(body()), stop)
    final = {m.state: m for m in history_of(data, "00700.HK") if m.state != "pending"}
    assert final["repaired"].source == "tencent"
    assert final["repaired"].reason == "fushu has no minute history; tencent stood in"
    assert "no longer reaches back" in (final["out_of_reach"].reason or "")


async def test_automatic_windows_that_touch_merge_into_one_fetch(
    worker_on: tuple[Topics, TopicReader, KafkaPublisher],
) -> None:
    topics, data, pub = worker_on
    history = ScriptedHistory("alpaca", settle_s=0.3)
    worker = make_worker(pub, topics, Market_("alpaca", frozenset({"AAPL"}), [history]))
    stop = asyncio.Event()

    async def body() -> None:
        worker.hole(Market.US, frozenset({"AAPL"}), T0, T0 + timedelta(minutes=1), "reconnect")
        worker.hole(
            Market.US,
            frozenset({"AAPL"}),
            T0 + timedelta(minutes=1, seconds=30),
            T0 + timedelta(minutes=3),
            "reconnect",
        )
        await eventually(lambda: any(m.state == "repaired" for m in history_of(data, "AAPL")), 15)

    await run_worker(worker, asyncio.ensure_future(body()), stop)
    assert [(c[1], c[2]) for c in history.calls] == [(T0, T0 + timedelta(minutes=4))]


async def test_repair_bars_command_asks_for_this_gateways_symbols(
    kafka_bootstrap: str, worker_on: tuple[Topics, TopicReader, KafkaPublisher]
) -> None:
    from shared.kafka import DeadLetters, Inbox, follow_topic

    topics, data, pub = worker_on
    history = ScriptedHistory("alpaca", bars={"AAPL": [minute(1)]})
    worker = make_worker(pub, topics, Market_("alpaca", frozenset({"AAPL", "MSFT"}), [history]))
    metrics = ServiceMetrics("test")
    inbox = Inbox(
        DeadLetters(pub, topics, "test", metrics), metrics, accepts={topics.control_commands: (ControlCommand,)}
    )
    stop = asyncio.Event()

    async def body() -> None:
        reader = asyncio.create_task(
            follow_topic(
                KafkaSettings(bootstrap_servers=kafka_bootstrap),
                "test-cmds",
                topics.control_commands,
                inbox,
                worker.on_records,
                stop,
                from_beginning=True,
            )
        )
        params = {
            "market": "US",
            "symbols": "AAPL",
            "from": T0.isoformat(),
            "to": (T0 + timedelta(minutes=2)).isoformat(),
        }
        cmd = ControlCommand(
            command="repair_bars", params=params, correlation_id="op-1", source="test", timestamp=utcnow()
        )
        await publish(kafka_bootstrap, topics.control_commands, cmd, key="datamanager")
        try:
            await eventually(lambda: any(m.state == "repaired" for m in history_of(data, "AAPL")), 20)
        finally:
            stop.set()
            await reader

    await run_worker(worker, asyncio.ensure_future(body()), asyncio.Event())
    repaired = [m for m in history_of(data, "AAPL") if m.state == "repaired"]
    assert repaired[0].request_id == "op-1" and (repaired[0].start, repaired[0].end) == (T0, T0 + timedelta(minutes=2))
    assert not history_of(data, "MSFT")  # only the symbols asked for
