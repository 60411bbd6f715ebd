"""Several gateways on a real broker: complementary shards publish every symbol exactly once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest

from services.feeder_gateway.service import FeederGateway
from shared.config import AppConfig, ConfigError
from shared.dto import PriceUpdate, Subscription, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running
from tests.service.test_gateway import FAST_SIM

CN = [f"60{i:04d}.SH" for i in range(20)]


def rejected(gw: FeederGateway, market: str) -> float:
    value = gw.metrics.registry.get_sample_value("livedata_gateway_symbols_rejected_total", {"market": market})
    return value or 0.0


async def test_complementary_shards_publish_every_symbol_exactly_once(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    gws = [
        FeederGateway(
            make_config(topics, livedata={"gateway": {"shard": {"count": 2, "index": i}}}, data_sources=FAST_SIM)
        )
        for i in range(2)
    ]
    async with running(gws[0]), running(gws[1]), TopicReader(kafka_bootstrap, topics.market_data) as md:
        await eventually(lambda: all(gw.watcher.caught_up.is_set() for gw in gws), what="subscriptions loaded")
        await publish(
            kafka_bootstrap,
            topics.subscriptions,
            Subscription(market="CN", symbols=(*CN, "foo.bar", "AAPL"), timestamp=utcnow()),
            key="CN",
        )
        await eventually(lambda: {m.symbol for m in md.of_type(PriceUpdate)} == set(CN), what="every symbol ticks")
        mine = [gw.feeds["CN"].symbols for gw in gws]  # type: ignore[index]
        assert mine[0] and mine[1] and not mine[0] & mine[1] and mine[0] | mine[1] == set(CN)
        seen = len(md.records)
        await eventually(lambda: len(md.records) > seen + 200, what="more ticks")
        # each symbol comes from one gateway only: its sequence never repeats
        sequences: dict[str, list[int]] = defaultdict(list)
        for m in md.of_type(PriceUpdate):
            sequences[m.symbol].append(m.sequence or 0)
        for sym, seqs in sequences.items():
            assert len(seqs) == len(set(seqs)), sym
        # the symbols of no market (or of another) are rejected where they enter, never ticked
        assert all(rejected(gw, "CN") == 2 for gw in gws)
        assert not {"foo.bar", "FOO.BAR", "AAPL"} & set(sequences)


def test_a_shard_index_out_of_range_is_a_clear_error(topics: Topics, make_config: Callable[..., AppConfig]) -> None:
    with pytest.raises(ConfigError, match=r"livedata\.yml.*gateway\.shard.*index 2 is not below count 2"):
        make_config(topics, livedata={"gateway": {"shard": {"count": 2, "index": 2}}})
