"""Test harness of the HTTP poller service tests (fushu, tencent): a feeder drained into lists."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.polling import HttpPollingFeeder
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.symbols import Market
from tests.helpers import eventually
from tests.simulators.http_fakes import FakeHttpServer

FeederT = TypeVar("FeederT", bound=HttpPollingFeeder[Any, Any])

FAST_POLLING: dict[str, Any] = {
    "poll_interval_s": 0.05,
    "poll_jitter_s": 0.0,
    "min_poll_gap_s": 0.0,
    "timeout_s": 1.0,
    "backoff_base_s": 0.02,
    "backoff_cap_s": 0.1,
    "rate_limited_pause_s": 0.05,
    "ban_hold_s": 0.3,
    "ban_jitter_cap_s": 0.1,
}
"""Settings that make a poller fast enough for tests; a test overrides what it checks."""


class PollerHarness(Generic[FeederT]):
    """A feeder plus a task draining its generator into ``ticks`` / ``batches``."""

    def __init__(self, feeder_type: type[FeederT], name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.service_metrics = ServiceMetrics("test")
        ctx = FeederContext(
            name=name,
            market=Market.HK,
            emit_status=lambda state, detail: self.statuses.append((state, detail)),
            metrics=FeederMetrics(self.service_metrics),
        )
        self.feeder = feeder_type(feeder_type.settings_model.model_validate(settings), ctx)
        self.batches: list[list[PriceUpdate]] = []
        self.ticks: list[PriceUpdate] = []
        self.task: asyncio.Task[None] | None = None

    def start(self, *symbols: str) -> None:
        if symbols:
            self.feeder.set_symbols(frozenset(symbols))
        self.task = asyncio.create_task(self._run(), name=f"{self.name}-test-pump")

    async def _run(self) -> None:
        gen = self.feeder.ticks()
        async with contextlib.aclosing(gen):
            async for batch in gen:
                self.batches.append(batch)
                self.ticks.extend(batch)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def states(self) -> list[str]:
        return [s for s, _ in self.statuses]

    def sample(self, name: str, **labels: str) -> float:
        registry = self.service_metrics.registry
        return registry.get_sample_value(name, {"source": self.name, **labels}) or 0.0

    def malformed(self, reason: str) -> float:
        return self.sample("livedata_feeder_malformed_total", reason=reason)

    def symbols_seen(self) -> set[str]:
        return {t.symbol for t in self.ticks}


@contextlib.asynccontextmanager
async def harnesses(
    feeder_type: type[FeederT], name: str, url: str, **settings: Any
) -> AsyncIterator[Callable[..., PollerHarness[FeederT]]]:
    """A factory of harnesses against ``url`` (``FAST_POLLING`` plus ``settings`` plus the
    call's overrides; ``url=`` replaces the base URL); every harness made is stopped on exit."""
    made: list[PollerHarness[FeederT]] = []

    def make(url: str = url, **overrides: Any) -> PollerHarness[FeederT]:
        h = PollerHarness(feeder_type, name, {**FAST_POLLING, **settings, **overrides, "base_url": url})
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.stop()


# -- scenarios of the shared poll loop; each provider's tests run them on its simulator ---


async def only_changes_are_emitted(h: PollerHarness[Any], sim: FakeHttpServer, key: str) -> None:
    """00700.HK and 00005.HK polled: repeated polls emit nothing (but still yield a batch);
    a trade on ``key`` (00700.HK on the wire) emits that one quote."""
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: len(h.ticks) == 2, 5, what="first ticks")
    n = len(sim.requests)
    await eventually(lambda: len(sim.requests) >= n + 3, 5, what="three more polls")
    assert len(h.ticks) == 2
    assert h.batches[-1] == []  # a successful poll still yields: the watchdog sees life
    sim.advance(key)
    await eventually(lambda: len(h.ticks) == 3, 5, what="the changed quote")
    assert h.ticks[-1].symbol == "00700.HK"


async def symbols_added_and_removed(
    h: PollerHarness[Any],
    sim: FakeHttpServer,
    symbols: tuple[str, str],
    requests: tuple[tuple[str, ...], tuple[str, ...]],
) -> None:
    """Polling ``symbols[0]``, then both (``requests[0]`` asked at once), then only
    ``symbols[1]`` (``requests[1]``); run it with a long poll interval."""
    first, added = symbols
    h.start(first)
    await eventually(lambda: h.ticks, 5, what="first tick")
    h.feeder.set_symbols(frozenset(symbols))
    await eventually(lambda: added in h.symbols_seen(), 3, what="new symbol polled")
    assert sim.requests[-1] == requests[0]
    assert "subscription_changed" in h.states()
    h.feeder.set_symbols(frozenset({added}))
    await eventually(lambda: sim.requests[-1] == requests[1], 3, what="unsubscribe reaches it")


async def recovers_from_silence(h: PollerHarness[Any], sim: FakeHttpServer, key: str | None) -> None:
    """A server that stops answering is a timeout (run it with a short ``timeout_s``); once it
    answers again, a trade on ``key`` (None: on every quote) arrives and the feed is up."""
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="first tick")
    sim.silent = True
    await eventually(lambda: "disconnected" in h.states(), 5, what="timeout noticed")
    assert not h.feeder.connected
    sim.silent = False
    sim.advance(key)
    await eventually(lambda: len(h.ticks) >= 2 and h.feeder.connected, 5, what="recovery")


async def restarts_with_the_snapshot(h: PollerHarness[Any]) -> None:
    """Closing the generator reports ``disconnected``; a fresh one emits the snapshot again."""
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="first tick")
    await h.stop()
    assert not h.feeder.connected and h.states()[-1] == "disconnected"
    h.start()
    await eventually(lambda: len(h.ticks) >= 2, 5, what="tick after restart")


async def garbage_body_backs_off(h: PollerHarness[Any], sim: FakeHttpServer) -> None:
    """An unreadable answer fails the poll (counted as ``bad_response``); recovery reports the gap."""
    h.start("00700.HK")
    await eventually(lambda: h.ticks, 5, what="first tick")
    sim.garbage_body = True
    await eventually(lambda: "disconnected" in h.states(), 5, what="garbage treated as failure")
    assert h.malformed("bad_response") >= 1
    sim.garbage_body = False
    await eventually(lambda: "gap" in h.states()[h.states().index("disconnected") :], 5, what="recovery")


async def ban_after_a_healthy_run_is_held_then_recovers(
    h: PollerHarness[Any], sim: FakeHttpServer, ban: Callable[[float], None], ban_s: float = 1.0
) -> float:
    """After a healthy run the provider bans us for ``ban_s`` (``ban``: 403s or resets):
    the source is held (status ``banned``, never a configuration error), sends nothing
    during the hold, is retried after it, and ticks again; run it with ``ban_hold_s``
    just above ``ban_s``. Returns the seconds from the ban's end to the first new tick."""
    h.start("00700.HK", "00005.HK")
    await eventually(lambda: len(h.ticks) >= 2, 5, what="first ticks")
    n = len(sim.requests)
    await eventually(lambda: len(sim.requests) >= n + 10, 5, what="a healthy run of polls")
    ticks_before = len(h.ticks)
    ban(ban_s)
    ban_ends = time.monotonic() + ban_s
    banned = await eventually(lambda: [d for s, d in h.statuses if s == "banned"], 5, what="ban noticed")
    held_from = len(sim.requests)
    hold = banned[0]["retry_in_s"]
    assert hold >= h.feeder.settings.ban_hold_s
    sim.advance(None)
    await eventually(lambda: len(h.ticks) > ticks_before, 10, what="ticks after the ban")
    recovered_s = time.monotonic() - ban_ends
    # nothing was sent during the hold: the first request after it was answered
    assert len(sim.requests) - held_from <= 2
    assert "config_error" not in h.states()
    after = h.states()[h.states().index("banned") :]
    assert "resubscribed" in after and "gap" in after
    gap = [d for s, d in h.statuses if s == "gap"][-1]
    assert gap["last_tick"] is not None
    assert h.symbols_seen() == {"00700.HK", "00005.HK"}
    return recovered_s
