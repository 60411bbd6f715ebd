"""Prometheus metrics, one registry per service so services can share a process in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60)


class ServiceMetrics:
    """Metrics common to every service; services add their own on ``registry``."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = Counter("livedata_messages_consumed", "Messages consumed, by topic", ["topic"], registry=r)
        self.messages_out = Counter(
            "livedata_messages_published", "Messages published, by topic", ["topic"], registry=r
        )
        self.dead_lettered = Counter(
            "livedata_dead_lettered", "Bad messages sent to the dead-letter topic", ["topic"], registry=r
        )
        self.publish_errors = Counter(
            "livedata_publish_errors", "Failed publish attempts (retried)", ["topic"], registry=r
        )
        self.up = Gauge("livedata_up", "1 while the service runs", ["service"], registry=r)
        self.up.labels(service).set(1)

    def counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, doc, labels or [], registry=self.registry)

    def gauge(self, name: str, doc: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(name, doc, labels or [], registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CallbackCollector:
    """Metrics read from the service's own counters at scrape time (no per-tick cost)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, Callable[[], float]]] = []

    def collect(self) -> Iterator[Metric]:
        for kind, name, doc, fn in self.entries:
            family = CounterMetricFamily(name, doc) if kind == "counter" else GaugeMetricFamily(name, doc)
            family.add_metric([], float(fn()))
            yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


def add_callback_metric(metrics: ServiceMetrics, kind: str, name: str, doc: str, fn: Callable[[], float]) -> None:
    """Expose ``fn()`` as a counter or gauge named ``name`` on the service's registry."""
    collector = getattr(metrics, "_callbacks", None)
    if collector is None:
        collector = _CallbackCollector()
        metrics.registry.register(collector)
        metrics._callbacks = collector  # type: ignore[attr-defined]
    collector.entries.append((kind, name, doc, fn))


def counter_total(counter: Counter) -> float:
    """The sum of a counter's ``_total`` samples over all its labels."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
