"""Repairs through the tick intake: the stored rows a batch's HistoryBars need before the
fold, and the bars they revised published on market data once ClickHouse has them.

Memory holds a symbol's minutes from ``held_since`` on; a repair window reaching further
back is read from the store (and from its rows still pending) before the batch is folded,
retried while the store is away. Revised bars wait here after each drain and are
published as ``Bar`` keyed by symbol only after the flush stored them and before the
offsets are committed (a crash republishes them, never loses them); then the outcomes go
to the ledger, for the ``repair_bars`` answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from services.datamanager.bars import BarAggregator, BarRow, row_bar
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.metrics import DatamanagerMetrics
from services.datamanager.repair import DAY_MS, BarKey, RepairOutcome, StoredWindow
from services.datamanager.repair_answers import RepairLedger
from shared.dto import HistoryBars, Message
from shared.kafka import KafkaPublisher
from shared.logs import kv
from shared.tasks import retry_until_stopped

log = logging.getLogger("datamanager.repairs")

NO_WINDOW = StoredWindow()  # a batch without history to read: never written (no rows)


class RepairFlow:
    """The intake's repair side: ``stored_windows`` before a fold, ``folded`` after it,
    ``drained`` at each flush and ``stored`` once the flush is home."""

    def __init__(
        self,
        publisher: KafkaPublisher,
        topic: str,
        ledger: RepairLedger,
        metrics: DatamanagerMetrics,
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self.ledger = ledger
        self._metrics = metrics
        self._held: dict[BarKey, BarRow] = {}  # revised bars to publish once stored (latest version)
        self._outcomes: list[RepairOutcome] = []  # merged, not yet stored
        self.published = 0

    async def stored_windows(
        self,
        bars: BarAggregator,
        decoded: Sequence[tuple[object, Message]],
        store: ClickHouseBars | None,
        stop: asyncio.Event,
    ) -> StoredWindow | None:
        """What the store holds of the batch's repair windows memory does not; None if
        stopped before the store answered (the batch is then not folded)."""
        spans: dict[tuple[int, int], set[str]] = {}
        for _, msg in decoded:
            if type(msg) is HistoryBars:
                span = bars.stored_span(msg)
                if span is not None:
                    spans.setdefault(span, set()).add(msg.symbol)
        if not spans or store is None:
            return NO_WINDOW
        window = StoredWindow()

        async def read() -> bool:
            for (a, b), symbols in spans.items():
                window.add(await store.read_window(symbols, a, b))
                window.add(_pending(store.pending.values(), symbols, a, b))  # newer than what is stored
            return True

        if await retry_until_stopped(read, stop, "reading stored bars for a repair failed", log) is None:
            return None
        return window

    def folded(self, repairs: list[RepairOutcome]) -> None:
        """Outcomes of one fold: counted now, handed to the ledger once stored."""
        if not repairs:
            return
        self._outcomes.extend(repairs)
        counter = self._metrics.repaired
        for o in repairs:
            for quality, n in o.revised.items():
                counter.labels(quality).inc(n)
            if o.revised:
                log.info(
                    "history merged",
                    extra=kv(
                        symbol=o.symbol, state=o.state, source=o.source[:64], replaced=o.replaced, added=o.added,
                        incomplete=o.incomplete, request=(o.request_id or "")[:64],
                    ),
                )  # fmt: skip

    def drained(self, rows: Iterable[BarRow], revised: set[BarKey]) -> None:
        """The rows of one drain: keep the latest version of each revised bar."""
        held = self._held
        if not revised and not held:
            return
        for r in rows:
            k = (r.symbol, r.period, r.start_ms)
            if k in revised or k in held:
                held[k] = r

    async def stored(self) -> bool:
        """The flush stored everything drained: publish the revised bars, then tell the
        ledger; False (kept for the next flush) if publishing failed."""
        if self._held:
            items = [(r.symbol, row_bar(r)) for r in self._held.values()]
            try:
                await self._publisher.publish_many(self._topic, items)
            except Exception as e:  # the broker is away: the next flush publishes them (no commit before)
                log.warning("publishing revised bars failed", extra=kv(bars=len(items), error=repr(e)[:200]))
                return False
            self.published += len(items)
            self._held = {}
        if self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            self.ledger.record(outcomes)
        return True


def _pending(rows: Iterable[BarRow], symbols: set[str], start_ms: int, end_ms: int) -> list[BarRow]:
    out = []
    for r in rows:
        if r.symbol in symbols and (
            (r.period == "1m" and start_ms <= r.start_ms < end_ms)
            or (r.period == "1d" and start_ms - DAY_MS <= r.start_ms < end_ms)
        ):
            out.append(r)
    return out
