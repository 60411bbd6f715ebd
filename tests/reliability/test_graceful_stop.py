"""Fault: SIGTERM of each daemon in turn under 5,000 ticks/s (issue 8, scenario 6), the three
daemons and a client SDK running as processes on the real broker, Redis and ClickHouse.

Measured and printed: each daemon's exit code and exit time; for the gateway, its final
"drained" figures against what is on the market-data topic (published = ticks on the
topic, each once; the newest tick of every symbol is there, so accepted = published +
conflated); for the datamanager, its tick consumer's committed offsets against the end
offsets of market.data before and after the stop (its periodic commit is set 30 s apart so
the commit seen is the one the shutdown makes).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest

from shared.client import LiveDataClient
from shared.dto import DecodeError, PriceUpdate, decode
from tests.daemons import System
from tests.helpers import eventually
from tests.reliability.loaded_system import (
    SIM,
    SYMBOLS,
    Received,
    committed_offsets,
    end_offsets,
    follow,
    merge,
    metric,
    read_topic,
    stores,
)

pytestmark = pytest.mark.reliability

EXIT_S = 5.0


async def test_sigterm_each_daemon_under_load_drains_and_commits(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    clickhouse_url: str,
    clickhouse_database: str,
    tmp_path: Path,
) -> None:
    live = merge(
        {"gateway": {"queue_size": 5000}},
        stores(redis_url, redis_prefix, clickhouse_url, clickhouse_database),
        {"clickhouse": {"flush_interval_ms": 30_000}},  # no periodic commit within the test
    )
    group = f"{live['datamanager']['group_id']}.bars"
    jobs = {"jobs": [{"name": "beat", "cron": "* * * * *", "timezone": "UTC", "command": "status"}]}
    system = System(tmp_path, kafka_bootstrap, sim=SIM, task_timer=jobs, livedata=live)
    topics = system.topics
    received = Received()
    async with (
        system,
        LiveDataClient(kafka_bootstrap, "p1", "n1", topics=topics, lease_s=30.0) as client,
    ):
        await client.replace(SYMBOLS)
        reader = asyncio.create_task(follow(client, received), name="test.follow")
        try:
            await eventually(lambda: len(received.last_seq) == len(SYMBOLS), timeout_s=20, what="every symbol ticking")
            await eventually(lambda: received.ticks >= 10_000, timeout_s=20, what="the load running (10,000 ticks)")

            # -- the gateway --------------------------------------------------------------
            gateway = system["gateway"]
            last = await gateway.get("/metrics")
            last_in, last_out = metric(last, "livedata_gateway_ticks_in"), metric(last, "livedata_gateway_ticks_out")
            gw_rc, gw_s = await gateway.terminate(timeout_s=15)
            drained = re.search(r"drained published=(\d+) conflated=(\d+)", gateway.log.read_text())
            assert drained is not None, gateway.log.read_text()[-3000:]
            published, conflated = int(drained.group(1)), int(drained.group(2))
            ticks = []
            for rec in await read_topic(kafka_bootstrap, topics.market_data):
                try:
                    msg = decode(rec.value or b"")
                except DecodeError:
                    continue
                if isinstance(msg, PriceUpdate) and not msg.snapshot:
                    ticks.append((msg.symbol, msg.sequence or 0))
            twice = sum(n - 1 for n in Counter(ticks).values() if n > 1)
            newest: dict[str, int] = {}
            for symbol, seq in ticks:
                newest[symbol] = max(seq, newest.get(symbol, 0))
            accepted = sum(newest.values())  # sequences count every tick accepted, per symbol
            print(
                f"\ngateway SIGTERM: exit {gw_rc} in {gw_s:.2f}s; drained: published {published}, conflated"
                f" {conflated} (last /metrics before the signal: in {last_in:.0f}, out {last_out:.0f});"
                f" on the topic {len(ticks)} ticks, {twice} twice; accepted by sequence {accepted}"
                f" = published + conflated {published + conflated}"
            )

            # -- the datamanager ----------------------------------------------------------
            dm = system["datamanager"]
            ends = await end_offsets(kafka_bootstrap, topics.market_data)
            total = sum(ends.values())

            async def caught_up() -> bool:
                text = await dm.get("/metrics")
                return metric(text, "livedata_messages_consumed", topic=topics.market_data) >= total

            await eventually(caught_up, timeout_s=20, what="the datamanager caught up")
            before = await committed_offsets(kafka_bootstrap, group, topics.market_data, sorted(ends))
            dm_rc, dm_s = await dm.terminate(timeout_s=15)
            after = await committed_offsets(kafka_bootstrap, group, topics.market_data, sorted(ends))
            ends_after = await end_offsets(kafka_bootstrap, topics.market_data)
            print(
                f"datamanager SIGTERM: exit {dm_rc} in {dm_s:.2f}s; market.data end offsets {ends} ({total} records);"
                f" committed before the signal {sum(before.values())} ({total - sum(before.values())} behind),"
                f" after the exit {after}"
            )

            # -- the tasktimer ------------------------------------------------------------
            tt_rc, tt_s = await system["tasktimer"].terminate(timeout_s=15)
            print(f"tasktimer SIGTERM: exit {tt_rc} in {tt_s:.2f}s")
        finally:
            reader.cancel()

    assert gw_rc == 0 and gw_s <= EXIT_S
    assert len(ticks) == published and twice == 0  # every tick it counted published is on the topic, once
    assert accepted == published + conflated  # its queue was drained: nothing accepted is left unaccounted
    assert dm_rc == 0 and dm_s <= EXIT_S
    assert ends_after == ends  # nothing was published to market data meanwhile
    assert after == ends  # everything it consumed is committed
    assert tt_rc == 0 and tt_s <= EXIT_S

