"""The market watchdog against a simulator: frozen pollers and watchdog restarts report their gap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.fushu.feeder import FushuFeeder
from services.feeder_gateway.feeders.wanted import WantedSymbols
from services.feeder_gateway.market_feed import MarketFeed
from services.feeder_gateway.tick_queue import ConflatingTickQueue
from shared.dto import Status, SystemEvent
from shared.events import SystemEvents
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.service.poller_helpers import FAST_POLLING
from tests.simulators.fushu import FushuSimulator

KEY = "watchdog-key"


class RecordingEvents(SystemEvents):
    def __init__(self) -> None:
        super().__init__("test", "events")
        self.seen: list[SystemEvent] = []

    def emit(self, event: SystemEvent) -> None:
        self.seen.append(event)

    def states(self, component: str) -> list[str]:
        return [e.state for e in self.seen if isinstance(e, Status) and e.component == component]


@contextlib.asynccontextmanager
async def fushu_market(sim: FushuSimulator, **settings: Any) -> AsyncIterator[tuple[MarketFeed, RecordingEvents]]:
    wanted = WantedSymbols()
    events = RecordingEvents()
    ctx = FeederContext(
        name="fushu",
        market=Market.HK,
        emit_status=lambda state, detail: events.status("feeder.fushu.HK", state, **detail),
        metrics=FeederMetrics(ServiceMetrics("test")),
        wanted=wanted.view(),
    )
    raw = {**FAST_POLLING, "base_url": sim.url, "api_key": KEY, **settings}
    feeder = FushuFeeder(FushuFeeder.settings_model.model_validate(raw), ctx)
    feed = MarketFeed(Market.HK, [feeder], wanted, ConflatingTickQueue(1000), events, stale_in_session_only=False)
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop), name="test.market_feed")
    try:
        yield feed, events
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_frozen_poller_is_restarted_and_the_restart_reports_its_gap() -> None:
    async with FushuSimulator(KEY, auto_advance=True) as sim, fushu_market(sim, frozen_after_s=0.5) as (feed, events):
        feed.set_symbols(frozenset({"00700.HK", "00005.HK"}))
        await eventually(lambda: "subscribed" in events.states("feeder.fushu.HK"), what="first poll")
        sim.auto_advance = False  # polls keep succeeding, the quotes stop moving
        frozen_at = time.monotonic()
        await eventually(lambda: "frozen" in events.states("feed.HK"), 5, what="frozen detected")
        detected_s = time.monotonic() - frozen_at
        assert 0.3 <= detected_s <= 2.0  # the quotes last moved up to one poll before
        # one source: a restart of itself, not a failover to itself
        await eventually(lambda: "restarted" in events.states("feed.HK"), what="restart")
        assert "failover" not in events.states("feed.HK") and feed.switches == 0
        after = events.states("feeder.fushu.HK")
        await eventually(
            lambda: {"resubscribed", "gap"} <= set(events.states("feeder.fushu.HK")[len(after) - 1 :]),
            what="the restart reports resubscribed and gap",
        )
        gap = [e for e in events.seen if isinstance(e, Status) and e.state == "gap"][-1]
        assert gap.detail["last_tick"] is not None
        print(f"frozen poller detected after {detected_s:.2f}s")
