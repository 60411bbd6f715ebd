"""The datamanager's metrics, and the one way a record whose processing raised is handled.

Every part reads its figures through ``DatamanagerMetrics`` (as the feeders share
``FeederMetrics``); figures another part already counts are read from it when scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka import ConsumerRecord
from prometheus_client import Histogram

from shared.kafka import DeadLetters
from shared.logs import kv
from shared.metrics import LATENCY_BUCKETS_S, ServiceMetrics, add_callback_metric

if TYPE_CHECKING:  # the parts import this module
    from services.datamanager.interest import InterestRegistry
    from services.datamanager.leadership import Leadership
    from services.datamanager.tick_intake import TickIntake

log = logging.getLogger("datamanager")

OTHER_SOURCE = "other"
"""The label of ticks from a source not in data_sources.yml."""

MAX_FAILURE_KINDS = 100
"""Distinct failure reasons kept for ``status`` (a flood of distinct messages stays bounded)."""


class DatamanagerMetrics:
    """Counters and gauges of the datamanager, on the service's registry."""

    def __init__(self, metrics: ServiceMetrics, sources: frozenset[str] = frozenset()) -> None:
        self.service = metrics
        self._sources = sources
        self.rejected = metrics.counter(
            "livedata_datamanager_ticks_rejected", "Ticks dropped by data-quality checks", ["reason"]
        )
        self.failed = metrics.counter(
            "livedata_datamanager_records_failed", "Records whose processing raised (dead-lettered)", ["topic"]
        )
        self.flagged = metrics.counter("livedata_datamanager_price_limit_flags", "Moves beyond the board's price limit")
        self.input_rejected = metrics.counter(
            "livedata_datamanager_input_rejected",
            "Interest updates and commands refused by identity, signature or limit checks (dead-lettered)",
            ["reason"],
        )
        self.gaps = metrics.gauge("livedata_datamanager_symbols_in_gap", "Subscribed symbols without ticks in session")
        self.repaired = metrics.counter(
            "livedata_datamanager_bars_repaired",
            "Bars revised by gap repair (the provider's minute history), by the quality they got",
            ["quality"],
        )
        self.incomplete_minutes = metrics.gauge(
            "livedata_datamanager_incomplete_minutes",
            "Today's minute bars of this instance's symbols marked incomplete (as of the last repair sweep)",
        )
        self.repair_requests = metrics.counter(
            "livedata_datamanager_repair_requests", "repair_bars commands sent to the gateway, by trigger", ["trigger"]
        )
        self.latency = Histogram(
            "livedata_tick_latency_seconds",
            "Provider time → datamanager receive time, per source",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=metrics.registry,
        )
        self.messages_in = metrics.messages_in

    def source_label(self, source: str) -> str:
        """A tick's ``source`` as a label value: a configured source name, else ``other``
        (a label value from message content would make a new series per value)."""
        return source if source in self._sources else OTHER_SOURCE

    def read(self, kind: str, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A figure read from its owner when scraped (``kind``: counter or gauge)."""
        add_callback_metric(self.service, kind, name, doc, fn)

    def read_parts(self, intake: TickIntake, registry: InterestRegistry, leadership: Leadership) -> None:
        """The figures the parts count themselves."""
        store = intake.store
        figures = [
            ("counter", "ticks_aggregated", "Ticks folded into bars", lambda: intake.bars.ticks),
            ("counter", "bar_revisions", "Late ticks that revised a bar", lambda: intake.bars.revisions),
            ("gauge", "subscribers", "Subscribers with interest", lambda: registry.subscriber_count),
            ("gauge", "symbols", "Symbols in the union of interest", lambda: len(registry.all_symbols())),
            ("gauge", "active", "1 while this instance is the active one", lambda: float(leadership.active.is_set())),
        ]
        if store is not None:
            figures += [
                ("gauge", "bars_pending", "Bars waiting for ClickHouse", lambda: len(store.pending)),
                ("counter", "bars_stored", "Bar rows inserted into ClickHouse", lambda: store.stored),
                ("counter", "clickhouse_failures", "Failed ClickHouse operations, retried", lambda: store.failures),
            ]
        for kind, name, doc, fn in figures:
            self.read(kind, f"livedata_datamanager_{name}", doc, fn)


class RecordFailures:
    """A record whose processing raised: dead-lettered with the reason, counted per topic
    and per reason (bounded) for ``status``; the consumer goes on with the next one."""

    def __init__(self, dead: DeadLetters, metrics: DatamanagerMetrics) -> None:
        self._dead = dead
        self._metrics = metrics
        self.by_reason: dict[str, int] = {}

    async def failed(self, rec: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        self._metrics.failed.labels(rec.topic).inc()
        reason = f"processing failed: {type(error).__name__}: {error}"
        kind = reason[:80]
        if kind in self.by_reason or len(self.by_reason) < MAX_FAILURE_KINDS:
            self.by_reason[kind] = self.by_reason.get(kind, 0) + 1
        try:
            await self._dead.send(rec, reason[:500])
        except Exception as e:  # the dead-letter topic itself is away: logged, never fatal
            log.error("dead letter failed", extra=kv(topic=rec.topic, offset=rec.offset, error=repr(e)))
