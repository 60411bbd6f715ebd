"""Repair triggers: the datamanager asks the feeder-gateway for the provider's minute history
with a ``repair_bars`` ControlCommand (target ``feeder-gateway``, source ``datamanager``, a
fresh correlation_id, signed when ``security.sign`` is set) when

a) it resumed (a start, a takeover, a rebalance) and, per market in session, the newest
   restored tick is older than ``repair_after_gap_s``: [that tick, now] for the owned
   subscribed symbols of the market;
b) a symbol that was in a gap (GapWatch) ticks again: [its last tick before, its newest
   after], one command per market per check;
c) every ``repair_sweep_s`` and after resuming: today's ``incomplete`` minutes of owned
   symbols (memory, and the store for what memory no longer holds), grouped into windows;
   each minute is asked for at most ``SWEEP_TRIES`` times a day (one the provider lacks,
   or no longer reaches, stays incomplete without a request every sweep).

The gateway answers with HistoryBars on market data, which the tick intake merges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from services.datamanager.bars import BarAggregator
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.gap_watch import ClosedGap
from services.datamanager.interest import SubscribedSymbols
from services.datamanager.metrics import DatamanagerMetrics
from services.datamanager.ownership import Ownership
from shared.commands import RepairBarsParams
from shared.config import DatamanagerSettings
from shared.dto import ControlCommand, utcnow
from shared.kafka import KafkaPublisher
from shared.logs import kv
from shared.sessions import in_session, trading_day
from shared.signing import Signer, sign
from shared.symbols import Market, market_of
from shared.tasks import wait_first
from shared.topics import Topics

log = logging.getLogger("datamanager.repairs")

GATEWAY = "feeder-gateway"
SWEEP_TRIES = 3
"""How many times a day the sweep asks for one incomplete minute."""
MAX_TRACKED = 200_000
"""Incomplete minutes whose requests the sweep counts (past it, the count starts over)."""
MERGE_GAP_S = 300.0
"""Incomplete minutes of a symbol with at most this much between them are asked for in one window."""
MAX_SWEEP_COMMANDS = 50
"""Commands one sweep sends; past it the remaining windows of a market go in one."""
ANSWER_TIMEOUT_S = 60.0


class RepairTriggers:
    """Sends ``repair_bars`` to the gateway on resume, on closed gaps and on a sweep.

    ``resumed()`` (the tick intake's callback) and ``gaps_closed(gaps)`` (GapWatch's) only
    note what happened; ``run(stop)`` sends, once the subscribed symbols are known."""

    def __init__(
        self,
        settings: DatamanagerSettings,
        topics: Topics,
        publisher: KafkaPublisher,
        signer: Signer | None,
        registry: SubscribedSymbols,
        bars: Callable[[], BarAggregator],
        store: ClickHouseBars | None,
        ownership: Ownership,
        known: Callable[[], asyncio.Event],
        metrics: DatamanagerMetrics,
    ) -> None:
        self._after_gap_s = settings.repair_after_gap_s
        self._sweep_s = settings.repair_sweep_s
        self._topics = topics
        self._publisher = publisher
        self._signer = signer
        self._registry = registry
        self._bars = bars
        self._store = store
        self._own = ownership
        self._known = known
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._resumed: tuple[float, dict[Market, float]] | None = None  # when, newest restored tick per market
        self._gaps: list[ClosedGap] = []
        self._asked: dict[tuple[str, int], int] = {}  # incomplete minute → sweep requests today
        self._asked_days: frozenset[date] = frozenset()
        self.sent: list[ControlCommand] = []  # the latest commands sent (bounded), for status and tests

    def resumed(self) -> None:
        """Today's bars were just loaded: note each market's newest restored tick."""
        self._resumed = (time.time(), self._bars().newest_tick_per_market())
        self._wake.set()

    def gaps_closed(self, gaps: list[ClosedGap]) -> None:
        if len(self._gaps) < 100_000:  # bounded: the next check brings them again otherwise
            self._gaps.extend(gaps)
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        next_sweep = time.time() + self._sweep_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_first(self._wake, stop), max(next_sweep - time.time(), 0.0))
            if stop.is_set():
                return
            await wait_first(self._known(), stop)  # the subscribed symbols
            if stop.is_set():
                return
            self._wake.clear()
            sweep = time.time() >= next_sweep
            if self._resumed is not None:
                (at, newest), self._resumed = self._resumed, None
                await self._after_resume(at, newest)
                sweep = True
            if self._gaps:
                gaps, self._gaps = self._gaps, []
                await self._after_gaps(gaps)
            if sweep:
                await self.sweep()
                next_sweep = time.time() + self._sweep_s

    def _owned(self, market: Market) -> list[str]:
        own = self._own
        return sorted(s for s in self._registry.market_symbols(market) if own.owns(s))

    async def _after_resume(self, at: float, newest: dict[Market, float]) -> None:
        when = datetime.fromtimestamp(at, UTC)
        for market in Market:
            last = newest.get(market, 0.0)
            if last <= 0 or at - last <= self._after_gap_s or not in_session(market, when):
                continue  # nothing restored to start from, no hole, or the market is closed
            symbols = self._owned(market)
            if symbols:
                await self._ask(market, symbols, last, at, "resume")

    async def _after_gaps(self, gaps: list[ClosedGap]) -> None:
        by_market: dict[Market, list[ClosedGap]] = {}
        for g in gaps:
            by_market.setdefault(g.market, []).append(g)
        for market, closed in by_market.items():
            symbols = sorted({g.symbol for g in closed})
            await self._ask(market, symbols, min(g.before for g in closed), max(g.after for g in closed), "gap")

    async def sweep(self) -> int:
        """Ask for today's incomplete minutes; returns how many are incomplete now."""
        now = utcnow()
        days = frozenset(trading_day(m, now) for m in Market)
        if days != self._asked_days:
            self._asked, self._asked_days = {}, days
        bars = self._bars()
        minutes: dict[str, set[int]] = {
            s: {round(t * 1000) for t in starts} for s, starts in bars.incomplete_held().items()
        }
        if self._store is not None:
            try:
                stored = await self._store.incomplete_minutes(days)
            except Exception as e:  # the store is away: memory's marks alone this time
                log.warning("reading incomplete minutes failed", extra=kv(error=repr(e)[:200]))
                stored = []
            for symbol, start_ms in stored:
                if not self._own.owns(symbol):
                    continue
                day, held_from = bars.held_from(symbol)
                if day is not None and start_ms >= held_from * 1000:
                    continue  # memory holds that minute: its mark (or none) is the truth
                minutes.setdefault(symbol, set()).add(start_ms)
        total = sum(len(m) for m in minutes.values())
        self._metrics.incomplete_minutes.set(total)
        if len(self._asked) > MAX_TRACKED:
            self._asked = {}
        windows: dict[tuple[Market, int, int], list[str]] = {}
        for symbol, starts in minutes.items():
            due = sorted(s for s in starts if self._asked.get((symbol, s), 0) < SWEEP_TRIES)
            if not due:
                continue
            for s in due:
                self._asked[(symbol, s)] = self._asked.get((symbol, s), 0) + 1
            try:
                market = market_of(symbol)
            except ValueError:
                continue
            for a, b in _windows(due):
                windows.setdefault((market, a, b), []).append(symbol)
        sent = 0
        rest: dict[Market, tuple[int, int, set[str]]] = {}
        for (market, a, b), symbols in sorted(windows.items()):
            if sent < MAX_SWEEP_COMMANDS:
                sent += await self._ask(market, symbols, a / 1000, b / 1000, "sweep")
            else:
                lo, hi, names = rest.get(market, (a, b, set()))
                rest[market] = (min(lo, a), max(hi, b), names | set(symbols))
        for market, (a, b, names) in rest.items():
            await self._ask(market, sorted(names), a / 1000, b / 1000, "sweep")
        return total

    async def _ask(self, market: Market, symbols: list[str], start: float, end: float, trigger: str) -> int:
        """Send ``repair_bars`` for ``symbols`` of ``market`` and [start, end) (epoch s,
        start floored to its minute); returns the commands sent."""
        first = datetime.fromtimestamp(start - start % 60.0, UTC)
        last = max(datetime.fromtimestamp(end, UTC), first + timedelta(minutes=1))
        first = max(first, last - RepairBarsParams.MAX_WINDOW)
        sent = 0
        step = RepairBarsParams.MAX_SYMBOLS
        for i in range(0, len(symbols), step):
            chunk = tuple(symbols[i : i + step])
            params = RepairBarsParams(market, first, last, chunk, ANSWER_TIMEOUT_S).as_params()
            cmd = ControlCommand(
                command="repair_bars",
                correlation_id=f"dm-{trigger}-{uuid.uuid4().hex[:16]}",
                timestamp=utcnow(),
                source="datamanager",
                params=params,
                target=GATEWAY,
            )
            cmd = sign(self._signer, cmd)
            try:
                await self._publisher.publish(self._topics.control_commands, cmd, key=GATEWAY)
            except Exception as e:  # the broker is away: the sweep asks again for what stays incomplete
                log.warning(
                    "asking for a repair failed", extra=kv(trigger=trigger, market=market.value, error=repr(e)[:200])
                )
                continue
            sent += 1
            self._metrics.repair_requests.labels(trigger).inc()
            self.sent = [*self.sent[-99:], cmd]
            log.info(
                "repair asked",
                extra=kv(
                    trigger=trigger, market=market.value, symbols=len(chunk), start=first.isoformat(),
                    end=last.isoformat(), correlation_id=cmd.correlation_id,
                ),
            )  # fmt: skip
        return sent


def _windows(starts: list[int]) -> list[tuple[int, int]]:
    """Sorted minute starts (ms) → [first, last + 1 minute) windows, joining those closer
    than ``MERGE_GAP_S``."""
    out: list[tuple[int, int]] = []
    for s in starts:
        if out and s - out[-1][1] <= MERGE_GAP_S * 1000:  # at most that many good minutes between
            out[-1] = (out[-1][0], s + 60_000)
        else:
            out.append((s, s + 60_000))
    return out
