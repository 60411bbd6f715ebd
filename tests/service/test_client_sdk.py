"""The client SDK against the gateway and datamanager: subscribe, receive, unsubscribe."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.datamanager.service import DataManager
from services.feeder_gateway.service import FeederGateway
from shared.client import LiveDataClient
from shared.config import AppConfig
from shared.dto import PriceUpdate
from shared.topics import Topics
from tests.helpers import eventually, running

SIM = {
    "markets": {
        m: {"sources": [{"type": "sim", "ticks_per_s_per_symbol": 20, "interval_ms": 20}]} for m in ("CN", "HK", "US")
    }
}


async def test_subscribe_receive_unsubscribe(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    config = make_config(topics, data_sources=SIM)
    dm, gw = DataManager(config), FeederGateway(config)
    async with running(dm), running(gw):
        await eventually(lambda: dm.interest.loaded.is_set() and gw.watcher.caught_up.is_set(), what="services up")
        async with LiveDataClient(kafka_bootstrap, "p1", "node-a", topics=topics) as client:
            started = time.monotonic()
            await client.subscribe(["aapl.us", "00700.HK"])
            got: set[str] = set()

            async def both() -> bool:
                for u in await client.next_batch():
                    assert isinstance(u, PriceUpdate)
                    got.add(u.symbol)
                return got == {"AAPL", "00700.HK"}

            await eventually(both, timeout_s=5, what="ticks for both symbols")
            assert time.monotonic() - started < 2.0
            await client.unsubscribe(["AAPL"])
            await eventually(lambda: gw.feeds["US"].symbols == frozenset(), what="gateway dropped AAPL")  # type: ignore[index]
            await client.next_batch()
            later = {u.symbol for u in await client.next_batch()}
            assert later == {"00700.HK"}
            await client.clear()
            await eventually(lambda: not dm.interest.registry.all_symbols(), what="interest cleared")
