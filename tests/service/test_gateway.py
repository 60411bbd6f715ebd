"""feeder-gateway on a real broker: subscriptions in, keyed ticks out, bad input dead-lettered."""

from __future__ import annotations

from collections.abc import Callable

from services.feeder_gateway.service import FeederGateway
from shared.config import AppConfig
from shared.dto import DeadLetter, PriceUpdate, Subscription, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, publish, running

FAST_SIM = {
    "markets": {
        m: {"sources": [{"type": "sim", "ticks_per_s_per_symbol": 50, "interval_ms": 20}]} for m in ("CN", "HK", "US")
    }
}


async def test_ticks_follow_the_subscription(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    gw = FeederGateway(make_config(topics, data_sources=FAST_SIM))
    async with running(gw), TopicReader(kafka_bootstrap, topics.market_data) as md:
        await eventually(lambda: gw.watcher.caught_up.is_set(), what="subscriptions loaded")
        await publish(
            kafka_bootstrap,
            topics.subscriptions,
            Subscription(market="CN", symbols=("600000.SH", "000001.SZ"), timestamp=utcnow()),
            key="CN",
        )
        await eventually(
            lambda: {m.symbol for m in md.of_type(PriceUpdate)} == {"600000.SH", "000001.SZ"},
            what="ticks for both symbols",
        )
        for rec, msg in zip(md.records, md.messages, strict=True):
            assert isinstance(msg, PriceUpdate) and rec.key == msg.symbol.encode()
        # the last value per market wins: narrow to one symbol
        await publish(
            kafka_bootstrap,
            topics.subscriptions,
            Subscription(market="CN", symbols=("000001.SZ",), timestamp=utcnow()),
            key="CN",
        )
        await eventually(lambda: gw.feeds["CN"].symbols == {"000001.SZ"}, what="narrowed subscription")  # type: ignore[index]
        seen = len(md.records)
        await eventually(lambda: len(md.records) > seen + 20, what="more ticks")
        later = [m.symbol for m in md.messages[seen + 5 :] if isinstance(m, PriceUpdate)]
        assert set(later) == {"000001.SZ"}
        sequences = [m.sequence or 0 for m in md.of_type(PriceUpdate) if m.symbol == "000001.SZ"]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert gw.queue.conflated == 0


async def test_malformed_subscription_is_dead_lettered_and_serving_goes_on(
    kafka_bootstrap: str, topics: Topics, make_config: Callable[..., AppConfig]
) -> None:
    gw = FeederGateway(make_config(topics, data_sources=FAST_SIM))
    async with (
        running(gw),
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        TopicReader(kafka_bootstrap, topics.market_data) as md,
    ):
        await eventually(lambda: gw.watcher.caught_up.is_set(), what="subscriptions loaded")
        await publish(kafka_bootstrap, topics.subscriptions, b'{"type":"subscription","market":"US"}', key="US")
        await publish(kafka_bootstrap, topics.subscriptions, b"\xff garbage", key="US")
        letters: list[DeadLetter] = await eventually(
            lambda: len(dlq.of_type(DeadLetter)) >= 2 and dlq.of_type(DeadLetter), what="two dead letters"
        )
        assert "missing required field `symbols`" in letters[0].reason
        assert letters[0].source_topic == topics.subscriptions and letters[0].service == "feeder-gateway"
        assert "undecodable" in letters[1].reason
        await publish(
            kafka_bootstrap,
            topics.subscriptions,
            Subscription(market="US", symbols=("AAPL",), timestamp=utcnow()),
            key="US",
        )
        await md.wait_for(PriceUpdate, lambda m: m.symbol == "AAPL", what="AAPL tick after bad input")
        assert (
            gw.metrics.registry.get_sample_value("livedata_dead_lettered_total", {"topic": topics.subscriptions}) == 2
        )
