"""End to end: the three daemons as processes, driven and observed only through Kafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.dto import (
    CommandResult,
    ControlCommand,
    DeadLetter,
    InterestUpdate,
    PriceUpdate,
    Status,
    UpdateType,
    utcnow,
)
from shared.topics import Topics
from tests.daemons import Daemon, System
from tests.helpers import TopicReader, eventually, publish

pytestmark = pytest.mark.e2e

DAEMONS = {
    "gateway": "services.feeder_gateway",
    "datamanager": "services.datamanager",
    "tasktimer": "services.tasktimer",
}


@pytest.fixture(scope="module")
async def system(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Topics, dict[str, Daemon]]]:
    async with System(tmp_path_factory.mktemp("e2e"), kafka_bootstrap, prefix=f"e2e.{uuid.uuid4().hex[:8]}") as s:
        yield s.topics, s.daemons


def interest(pid: str, kind: UpdateType, *symbols: str) -> InterestUpdate:
    return InterestUpdate(portfolio_id=pid, node_id="node", symbols=symbols, update_type=kind, timestamp=utcnow())


async def test_interest_drives_ticks_per_subscriber(
    kafka_bootstrap: str, system: tuple[Topics, dict[str, Daemon]]
) -> None:
    topics, _ = system
    async with TopicReader(kafka_bootstrap, topics.market_data) as md:
        wanted = {"600000.SH", "00700.HK", "AAPL"}
        sent = time.monotonic()
        await publish(kafka_bootstrap, topics.interest_updates, interest("p1", "replace", *wanted), key="p1/node")
        await eventually(
            lambda: {m.symbol for m in md.of_type(PriceUpdate)} == wanted,
            timeout_s=3,
            interval_s=0.01,
            what="ticks for the 3 symbols",
        )
        assert time.monotonic() - sent < 1.0, "first ticks of all three symbols took over 1 s"
        assert {m.symbol for m in md.of_type(PriceUpdate)} == wanted  # exactly those
        for rec, msg in zip(md.records, md.messages, strict=True):
            assert isinstance(msg, PriceUpdate) and rec.key == msg.symbol.encode()

        # a second subscriber's replace leaves the first one's symbols alone
        await publish(kafka_bootstrap, topics.interest_updates, interest("p2", "replace", "MSFT"), key="p2/node")
        await md.wait_for(PriceUpdate, lambda m: m.symbol == "MSFT", what="MSFT tick")
        await publish(kafka_bootstrap, topics.interest_updates, interest("p2", "replace", "NVDA"), key="p2/node")
        await md.wait_for(PriceUpdate, lambda m: m.symbol == "NVDA", what="NVDA tick")
        mark = len(md.messages)
        await eventually(
            lambda: {m.symbol for m in md.messages[mark:] if isinstance(m, PriceUpdate)} >= wanted,
            what="p1 symbols still flowing",
        )

        # remove stops a symbol
        await publish(kafka_bootstrap, topics.interest_updates, interest("p1", "remove", "AAPL"), key="p1/node")
        await eventually(lambda: _stopped(md, "AAPL"), timeout_s=5, what="AAPL ticks to stop")


def _stopped(md: TopicReader, symbol: str) -> bool:
    """True once the last 200 ticks hold none of ``symbol`` (others keep flowing)."""
    ticks = md.of_type(PriceUpdate)
    return len(ticks) > 400 and all(t.symbol != symbol for t in ticks[-200:])


async def test_bad_messages_are_dead_lettered_and_daemons_keep_serving(
    kafka_bootstrap: str, system: tuple[Topics, dict[str, Daemon]]
) -> None:
    topics, daemons = system
    async with (
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
    ):
        bad = {
            topics.subscriptions: b'{"type":"subscription"}',
            topics.interest_updates: b"{not json",
            topics.control_commands: b'{"type":"control_command","command":"x"}',
            topics.market_data: b'{"type":"price_update","symbol":"AAPL","price":-}',
        }
        for topic, raw in bad.items():
            await publish(kafka_bootstrap, topic, raw, key="bad")
        await eventually(
            lambda: {d.source_topic for d in dlq.of_type(DeadLetter)} >= set(bad),
            timeout_s=10,
            what="a dead letter per consumed topic",
        )
        letters = {d.source_topic: d for d in dlq.of_type(DeadLetter)}
        assert letters[topics.subscriptions].service == "feeder-gateway"
        assert letters[topics.interest_updates].service == "datamanager"
        assert all(d.reason and d.raw for d in letters.values())
        # still serving: a command is answered, all daemons ready
        cmd = ControlCommand(command="status", correlation_id="e2e-status", timestamp=utcnow(), source="e2e")
        await publish(kafka_bootstrap, topics.control_commands, cmd, key="datamanager")
        await events.wait_for(CommandResult, lambda r: r.correlation_id == "e2e-status" and r.ok)
        for daemon in daemons.values():
            assert await daemon.ready()
        assert events.of_type(Status)
        gateway_metrics = await daemons["gateway"].get("/metrics")
        for name in (
            "livedata_gateway_ticks_in_total",
            "livedata_gateway_ticks_out_total",
            "livedata_gateway_ticks_conflated_total",
            "livedata_gateway_queue_depth",
            "livedata_feed_latency_seconds_bucket",
            "livedata_feeder_reconnects_total",
            f'livedata_dead_lettered_total{{topic="{topics.subscriptions}"}} 1.0',
        ):
            assert name in gateway_metrics, name
        dm_metrics = await daemons["datamanager"].get("/metrics")
        assert f'livedata_dead_lettered_total{{topic="{topics.interest_updates}"}} 1.0' in dm_metrics
        assert "livedata_tick_latency_seconds_bucket" in dm_metrics
        assert '"status": "ok"' in await daemons["tasktimer"].get("/healthz")


async def test_sigterm_under_load_exits_zero_quickly(
    kafka_bootstrap: str, system: tuple[Topics, dict[str, Daemon]]
) -> None:
    topics, daemons = system
    symbols = [f"{600000 + i}.SH" for i in range(200)] + [f"SYM{i}" for i in range(200)]
    await publish(kafka_bootstrap, topics.interest_updates, interest("load", "replace", *symbols), key="load/node")
    async with TopicReader(kafka_bootstrap, topics.market_data) as md:
        await eventually(
            lambda: len({m.symbol for m in md.of_type(PriceUpdate)}) > 300, timeout_s=10, what="load flowing"
        )
    for name in ("gateway", "datamanager", "tasktimer"):
        rc, took = await daemons[name].terminate()
        log = daemons[name].log.read_text()
        assert rc == 0, f"{name} exited {rc}:\n{log[-3000:]}"
        assert took < 5.0, f"{name} took {took:.1f}s to stop"
        assert "stopped cleanly" in log
