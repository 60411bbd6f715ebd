"""Alpaca corrections and cancels through the gateway: TradeCorrection on market data, keyed by symbol."""

from __future__ import annotations

from collections.abc import Callable

from services.feeder_gateway.service import FeederGateway
from shared.config import AppConfig
from shared.dto import PriceUpdate, Status, Subscription, TradeCorrection, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running
from tests.simulators.alpaca import AlpacaSimulator

T = "2024-03-04T14:30:00.123456789Z"


async def test_corrections_and_cancels_are_published_on_market_data(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    async with AlpacaSimulator() as sim:
        sources = {"markets": {"US": {"sources": [{"type": "alpaca", "url": sim.url, "channels": ["trades"]}]}}}
        secure = {"alpaca": {"key": "test-key", "secret": "test-secret"}}
        config = make_config(topics, {"gateway": {"markets": ["US"]}}, data_sources=sources, secure=secure)
        gw = FeederGateway(config)
        async with (
            running(gw),
            TopicReader(kafka_bootstrap, topics.market_data) as md,
            TopicReader(kafka_bootstrap, topics.system_events) as events,
        ):
            await eventually(lambda: gw.watcher.caught_up.is_set(), what="subscriptions loaded")
            await publish(
                kafka_bootstrap,
                topics.subscriptions,
                Subscription(market="US", symbols=("AAPL",), timestamp=utcnow()),
                key="US",
            )
            await md.wait_for(PriceUpdate, lambda m: m.symbol == "AAPL", what="AAPL trades")
            await sim.send_data(
                [
                    {"T": "c", "S": "AAPL", "x": "V", "oi": 7, "op": 170.1, "os": 100, "ci": 8, "cp": 170.2,
                     "cs": 90, "oc": [], "cc": [], "t": T, "z": "C"},
                    {"T": "x", "S": "AAPL", "x": "V", "i": 9, "p": 170.3, "s": 50, "a": "C", "t": T, "z": "C"},
                    {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "rc": "T12", "rm": "News", "t": T},
                ]
            )  # fmt: skip
            fixes = await eventually(
                lambda: len(md.of_type(TradeCorrection)) == 2 and md.of_type(TradeCorrection), what="two corrections"
            )
            fix, cancel = fixes
            assert (fix.original_id, fix.original_price, fix.original_size) == (7, 170.1, 100)
            assert (fix.corrected_price, fix.corrected_size) == (170.2, 90)
            assert not fix.cancelled and fix.source == "alpaca" and fix.exchange == "V"
            assert cancel.cancelled and cancel.original_id == 9 and cancel.original_size == 50
            keys = [rec.key for rec, m in zip(md.records, md.messages, strict=True) if isinstance(m, TradeCorrection)]
            assert keys == [b"AAPL", b"AAPL"]
            # a halt stays a status event
            await events.wait_for(Status, lambda s: s.state == "trading_status", what="halt status")
            assert gw.corrections.published == 2
