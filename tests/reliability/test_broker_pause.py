"""Fault: the broker freezes (SIGSTOP) under 5,000 ticks/s, then resumes (SIGCONT).

A frozen broker accepts connections and answers nothing, the nastiest outage for a client.
Measured and printed: the gateway's RSS while frozen (bounded: the queue conflates per
symbol instead of growing), ticks conflated and counted, the conflation alert raised,
readiness false while frozen, ticks flowing again after the resume.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.ops.servers import LocalServer, make_broker
from shared.client import LiveDataClient
from shared.dto import Alert, PriceUpdate, utcnow
from tests.daemons import System
from tests.helpers import TopicReader, eventually
from tests.plugins.broker import BrokerPool
from tests.reliability.test_broker_outage import SYMBOLS, metric

pytestmark = pytest.mark.reliability

PAUSE_S = 10.0  # how long the broker stays frozen: the injected fault


@pytest.fixture
def broker(broker_pool: BrokerPool, tmp_path: Path) -> LocalServer:
    kind = broker_pool.choice.kind if broker_pool.choice.kind in ("kafka", "tansu") else "kafka"
    server = make_broker(kind, log_path=tmp_path / "broker.log")
    server.start()
    yield server  # type: ignore[misc]
    server.close()


async def test_broker_frozen_under_load(broker: LocalServer, tmp_path: Path) -> None:
    sim = {"type": "sim", "ticks_per_s_per_symbol": 25, "interval_ms": 40}  # 200 symbols: 5,000 ticks/s
    live = {"gateway": {"queue_size": 5000, "alert_interval_s": 5}}
    async with System(tmp_path, broker.address, sim=sim, livedata=live) as system:
        gateway = system["gateway"]
        client = LiveDataClient(broker.address, "p1", "n1", topics=system.topics, lease_s=30.0)
        received: list[float] = []

        async def consume() -> None:
            while True:
                for item in await client.next_batch():
                    if isinstance(item, PriceUpdate) and not item.snapshot:
                        received.append(time.monotonic())

        async with client:
            await client.replace(SYMBOLS)
            reader = asyncio.create_task(consume(), name="test.consume")
            try:
                await eventually(lambda: len(received) > 5000, timeout_s=15, what="ticks flowing")
                rss_before = gateway.rss_mb()
                conflated_before = metric(await gateway.get("/metrics"), "livedata_gateway_ticks_conflated")

                broker.pause()
                paused_at = time.monotonic()
                paused_wall = utcnow()

                async def not_ready() -> bool:
                    return not await gateway.ready()

                await eventually(not_ready, timeout_s=PAUSE_S, what="gateway not ready while the broker is frozen")
                not_ready_after_s = time.monotonic() - paused_at
                rss_peak = rss_before
                while time.monotonic() - paused_at < PAUSE_S:  # sample memory through the fault
                    rss_peak = max(rss_peak, gateway.rss_mb())
                    await asyncio.sleep(0.5)
                conflated_frozen = metric(await gateway.get("/metrics"), "livedata_gateway_ticks_conflated")

                broker.resume()
                resumed_at = time.monotonic()
                await eventually(
                    lambda: received and received[-1] > resumed_at, timeout_s=10, what="ticks after the resume"
                )
                flow_s = received[-1] - resumed_at
                await gateway.wait_ready(timeout_s=15)
                ready_s = time.monotonic() - resumed_at
                async with TopicReader(broker.address, system.topics.system_events) as events:
                    alert = await events.wait_for(
                        Alert,
                        lambda a: a.code == "ticks_conflated" and a.timestamp > paused_wall,
                        timeout_s=15,
                        what="a conflation alert raised while the broker was frozen",
                    )
            finally:
                reader.cancel()
        conflated = conflated_frozen - conflated_before
        print(
            f"\n[{broker.kind}] frozen {PAUSE_S:.0f}s at 5,000 ticks/s: gateway not ready after"
            f" {not_ready_after_s:.1f}s;"
            f" RSS {rss_before:.0f} MB before, peak {rss_peak:.0f} MB frozen; {conflated:.0f} ticks conflated"
            f" (counted) while frozen; alert {alert.code!r}: {alert.message}; ticks again {flow_s:.2f}s after"
            f" the resume, ready again after {ready_s:.2f}s"
        )
        assert rss_peak < 150 and rss_peak - rss_before < 50  # bounded: conflated, not queued
        assert conflated > 10_000  # ~5,000/s for ~10 s, minus the queue's room
        assert flow_s <= 10.0
