"""The gateway under failure: source failover and back, and a paused broker."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from services.feeder_gateway.service import FeederGateway
from services.ops.servers import TansuBroker
from shared.config import AppConfig, KafkaSettings, load_config
from shared.dto import PriceUpdate, Status, Subscription, utcnow
from shared.kafka import ensure_topics
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running
from tests.simulators.eastmoney import EastMoneySimulator

CN = ("600000.SH", "000001.SZ")


def first_tick_after(ticks: list[PriceUpdate], source: str, after: datetime) -> dict[str, datetime]:
    first: dict[str, datetime] = {}
    for t in ticks:
        if t.source == source and t.receive_time is not None and t.receive_time >= after:
            first.setdefault(t.symbol, t.receive_time)
    return first


async def test_silent_primary_fails_over_within_2s_and_back(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    async with EastMoneySimulator(tick_interval_s=0.05, heartbeat_interval_s=0.2) as em:
        sources = {
            "markets": {
                "CN": {
                    "failback_after_s": 3,
                    "stale_watchdog": "always",  # the test runs at any hour
                    "sources": [
                        {
                            "type": "eastmoney",
                            "base_url": em.url,
                            "stale_after_s": 1.0,
                            "min_request_interval_s": 0,
                            "request_jitter_s": 0,
                        },
                        {"type": "sim", "ticks_per_s_per_symbol": 20, "interval_ms": 20},
                    ],
                }
            }
        }
        gw = FeederGateway(make_config(topics, data_sources=sources, gateway={"markets": ["CN"]}))
        async with (
            running(gw),
            TopicReader(kafka_bootstrap, topics.market_data) as md,
            TopicReader(kafka_bootstrap, topics.system_events) as events,
        ):
            await eventually(lambda: gw.watcher.caught_up.is_set(), what="subscriptions loaded")
            await publish(
                kafka_bootstrap,
                topics.subscriptions,
                Subscription(market="CN", symbols=CN, timestamp=utcnow()),
                key="CN",
            )
            await eventually(
                lambda: {t.symbol for t in md.of_type(PriceUpdate) if t.source == "eastmoney"} == set(CN),
                what="primary ticks",
            )
            em.silent = True
            em.silence_streams()
            stale = await events.wait_for(Status, lambda s: s.state == "stale", timeout_s=5, what="stale status")
            await eventually(
                lambda: len(first_tick_after(md.of_type(PriceUpdate), "sim", stale.timestamp)) == len(CN),
                what="secondary ticks for both symbols",
            )
            firsts = first_tick_after(md.of_type(PriceUpdate), "sim", stale.timestamp)
            for symbol, at in firsts.items():
                assert (at - stale.timestamp).total_seconds() < 2.0, f"{symbol} served by the secondary too late"
            feed = gw.feeds["CN"]  # type: ignore[index]
            assert feed.active == 1
            # still silent: the probe of the primary (a new stream) fails and nothing switches
            first_failure = feed._sources[0].failed_at
            streams = len(em.requested())
            await eventually(lambda: len(em.requested()) > streams, timeout_s=8, what="a probe of the primary")
            await eventually(
                lambda: feed._sources[0].failed_at != first_failure, timeout_s=5, what="the probe to give up"
            )
            assert feed.active == 1 and not [s for s in events.of_type(Status) if s.state == "failback"]

            em.silent = False  # the primary recovers: back to it at the next probe
            back = await events.wait_for(Status, lambda s: s.state == "failback", timeout_s=10, what="failback status")
            assert back.detail["source"] == "eastmoney"
            await eventually(
                lambda: len(first_tick_after(md.of_type(PriceUpdate), "eastmoney", back.timestamp)) == len(CN),
                what="primary ticks again",
            )
            assert feed.active == 0


def _write_config(d: Path, bootstrap: str, prefix: str, **sections: Any) -> AppConfig:
    live = {
        "kafka": {"bootstrap_servers": bootstrap, "linger_ms": 0, "request_timeout_ms": 5000},
        "topics": {"prefix": prefix},
        **sections,
    }
    (d / "livedata.yml").write_text(yaml.safe_dump(live))
    sim = {"type": "sim", "ticks_per_s_per_symbol": 100, "interval_ms": 10}
    (d / "data_sources.yml").write_text(yaml.safe_dump({"markets": {"US": {"sources": [sim]}}}))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return load_config(d, env=env)


async def test_paused_broker_conflates_with_bounded_memory_then_delivers_latest(tmp_path: Path) -> None:
    symbols = tuple(f"S{i}" for i in range(20))
    queue_size = 500
    with TansuBroker() as broker:
        topics = Topics(f"bp.{uuid.uuid4().hex[:6]}")
        await ensure_topics(
            KafkaSettings(bootstrap_servers=broker.bootstrap_servers),
            topics.with_partitions(KafkaSettings().partitions),
        )
        config = _write_config(
            tmp_path,
            broker.bootstrap_servers,
            topics.prefix,
            gateway={"queue_size": queue_size, "markets": ["US"], "http": {"port": 0}},
        )
        gw = FeederGateway(config)
        async with running(gw, timeout_s=20), TopicReader(broker.bootstrap_servers, topics.market_data) as md:
            await eventually(lambda: gw.watcher.caught_up.is_set(), what="subscriptions loaded")
            await publish(
                broker.bootstrap_servers,
                topics.subscriptions,
                Subscription(market="US", symbols=symbols, timestamp=utcnow()),
                key="US",
            )
            await eventually(
                lambda: len({t.symbol for t in md.of_type(PriceUpdate)}) == len(symbols), what="all symbols flowing"
            )
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)  # the broker stops answering
            try:
                await eventually(lambda: gw.queue.conflated > 5_000, timeout_s=20, what="conflation while paused")
                # memory is bounded: the FIFO plus one tick per symbol
                assert len(gw.queue) <= queue_size + len(symbols)
                # stop generating, so the last tick of each symbol is known
                gw.feeds["US"].set_symbols(frozenset())  # type: ignore[index]
                seen_accepted = [-1]

                def no_new_ticks() -> bool:
                    quiet = gw.queue.accepted == seen_accepted[0]
                    seen_accepted[0] = gw.queue.accepted
                    return quiet

                await eventually(no_new_ticks, interval_s=0.1, what="the sim feeder to go idle")
                latest = dict(gw.queue._sequence)
                assert set(latest) == set(symbols)
            finally:
                os.kill(broker.pid, signal.SIGCONT)

            def delivered() -> bool:
                newest: dict[str, int] = {}
                for t in md.of_type(PriceUpdate):
                    newest[t.symbol] = max(newest.get(t.symbol, 0), t.sequence or 0)
                return newest == latest

            await eventually(delivered, timeout_s=30, what="the latest tick of every symbol delivered after resume")
            assert gw.metrics.registry.get_sample_value("livedata_gateway_ticks_conflated_total") == gw.queue.conflated
