"""Scale-out, end to end on Apache Kafka: two partitioned datamanagers and two sharded gateways
as processes, 3,000 symbols at 3,000 ticks/s, bars in ClickHouse. SIGKILL the datamanager that
holds the lease: the other takes its partitions (and the lease), and no bar is lost or
regressed (ClickHouse before and after: volumes and highs never decrease, versions only
increase, every symbol keeps its daily and minute bars), and its ``bar_snapshot`` answers for
every partition with every symbol's daily bar at least as grown as before.

The sim's volumes are cumulative, so a lost tick hides behind the next one: 60 canary symbols
of their own are traded throughout (300 trades/s, size 100 each, from a plain producer), and
once everything is committed each one's stored daily volume is exactly what it traded on the
topic: no trade lost or counted twice across the kill."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.ops.servers import free_port, kafka_available
from shared.config import KafkaSettings, TopicPartitions
from shared.dto import Bar, CommandResult
from shared.kafka import ensure_topics
from shared.topics import Topics
from tests.daemons import ROOT, Daemon
from tests.helpers import TopicReader, env_without_overrides, eventually, publish, unavailable, write_config_dir
from tests.plugins.broker import BrokerPool
from tests.reliability.scale_out import (
    canary_mismatches,
    canary_process_args,
    daily_symbols,
    gateway_sections,
    judge,
    member_sections,
    minute_symbols,
    partitions_of,
    split_between,
    stored_bars,
    traded_canaries,
    uncommitted,
)
from tests.service.test_datamanager_durable import command, interest, symbols_for

pytestmark = pytest.mark.reliability

PARTITIONS = 6
SYMBOLS = symbols_for(0, 3000)  # 60 % CN, 20 % HK, 20 % US
SIM = {"type": "sim", "ticks_per_s_per_symbol": 1.0, "interval_ms": 100.0}  # 3,000 ticks/s in all
KAFKA = {"linger_ms": 0, "session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
CANARIES, CANARY_PER_S = 60, 300.0


@pytest.fixture(scope="module")
def apache_kafka(broker_pool: BrokerPool) -> str:
    """An Apache Kafka broker: the session's, or one started for this test beside Tansu."""
    if broker_pool.choice.kind in ("kafka", "external", "docker"):
        return broker_pool.address()
    ok, why = kafka_available()
    if not ok:
        unavailable(f"the scale-out test runs on Apache Kafka, which cannot start here: {why}")
    return broker_pool.address("kafka")


@pytest.fixture
async def scale_topics(apache_kafka: str) -> AsyncIterator[Topics]:
    t = Topics(f"test.{uuid.uuid4().hex[:10]}")
    kafka = KafkaSettings(bootstrap_servers=apache_kafka)
    partitions = TopicPartitions(market_data=PARTITIONS)
    await ensure_topics(kafka, t.with_partitions(partitions), t.with_configs(kafka.retention))
    yield t
    admin = AIOKafkaAdminClient(bootstrap_servers=apache_kafka)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(t.prefix + ".")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def _answers(events: TopicReader, cid: str, timeout_s: float = 30) -> list[CommandResult]:
    """The command_results of ``cid`` once they name every partition."""

    def covered() -> list[CommandResult] | None:
        got = [r for r in events.of_type(CommandResult) if r.correlation_id == cid]
        named = {p for r in got for p in (r.partitions or ())}
        return got if named >= set(range(PARTITIONS)) else None

    found: list[CommandResult] = await eventually(covered, timeout_s=timeout_s, what=f"answers to {cid}")
    return found


async def test_killing_either_datamanager_moves_its_partitions_with_no_bar_lost_or_regressed(
    apache_kafka: str,
    scale_topics: Topics,
    redis_url: str,
    redis_prefix: str,
    clickhouse_url: str,
    clickhouse_database: str,
    tmp_path: Path,
) -> None:
    topics = scale_topics
    shared: dict[str, Any] = {
        "redis": {"url": redis_url},
        "clickhouse": {"url": clickhouse_url, "database": clickhouse_database, "flush_interval_ms": 200},
        "datamanager": {
            "redis_key_prefix": redis_prefix,
            "group_id": f"dm-{uuid.uuid4().hex[:8]}",
            "active_lease_s": 2.0,
        },
    }
    kafka = {"bootstrap_servers": apache_kafka, **KAFKA, "partitions": {"market_data": PARTITIONS}}
    sources = {"markets": {m: {"sources": [SIM]} for m in ("CN", "HK", "US")}}
    env = env_without_overrides()

    def daemon(name: str, label: str, sections: dict[str, Any]) -> Daemon:
        port = sections[name]["http"]["port"]
        live = {**shared, name: {**shared.get(name, {}), **sections[name]}}
        directory = write_config_dir(tmp_path, kafka, topics.prefix, live, data_sources=sources)
        return Daemon(name, directory, port, tmp_path / f"{label}.log", env)

    members = [daemon("datamanager", f"dm-{i}", member_sections(free_port(), f"m{i}")) for i in range(2)]
    gateways = [daemon("gateway", f"gw-{i}", gateway_sections(free_port(), i, 2)) for i in range(2)]
    everything = set(SYMBOLS)
    group = f"{shared['datamanager']['group_id']}.bars"
    canary: asyncio.subprocess.Process | None = None
    try:
        for d in members + gateways:
            await d.start()
        for d in members + gateways:
            await d.wait_ready(timeout_s=40)
        await eventually(
            lambda: split_between(members, PARTITIONS),
            timeout_s=30,
            interval_s=0.2,
            what="the partitions split between the two members",
        )
        canary = await asyncio.create_subprocess_exec(
            sys.executable,
            *canary_process_args(apache_kafka, topics.market_data, CANARIES, CANARY_PER_S, KAFKA),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await publish(apache_kafka, topics.interest_updates, interest("p0", "replace", SYMBOLS), key="p0/n")

        async def both_publish() -> bool:
            out = [(await g.metrics()).get("livedata_gateway_ticks_out_total", 0) for g in gateways]
            return all(n > 0 for n in out)

        await eventually(both_publish, timeout_s=30, interval_s=0.2, what="both gateway shards publishing")

        async def all_stored() -> dict[Any, Any] | None:
            bars = await stored_bars(clickhouse_url, clickhouse_database)
            return bars if daily_symbols(bars) >= everything and minute_symbols(bars) >= everything else None

        before = await eventually(all_stored, timeout_s=40, interval_s=0.5, what="every symbol's bars stored")
        shares = {id(d): await partitions_of(d) for d in members}

        async def holds_lease(d: Daemon) -> bool:
            return (await d.readiness()).get("role") == "active"

        leader = await eventually(
            lambda: _first(members, holds_lease), timeout_s=20, interval_s=0.2, what="a lease holder"
        )
        survivor = next(d for d in members if d is not leader)
        killed_share = shares[id(leader)]
        assert killed_share, "the lease holder owned partitions"
        await leader.kill()  # SIGKILL: no revoke, no flush, no commit, no lease release
        killed_at = time.monotonic()

        async def owns_all() -> bool:
            return await partitions_of(survivor) == set(range(PARTITIONS))

        await eventually(owns_all, timeout_s=30, interval_s=0.2, what="the survivor owns every partition")
        took_s = time.monotonic() - killed_at
        await eventually(lambda: holds_lease(survivor), timeout_s=20, interval_s=0.2, what="the survivor leads")

        async def all_grown() -> dict[Any, Any] | None:
            bars = await stored_bars(clickhouse_url, clickhouse_database)
            grown = {k[0] for k, b in bars.items() if k[1] == "1d" and k in before and b.version > before[k].version}
            return bars if grown >= everything else None

        after = await eventually(
            all_grown, timeout_s=40, interval_s=0.5, what="every symbol's daily bar stored again after the takeover"
        )
        verdict = judge(before, after, everything)
        assert verdict.ok, verdict.summary()
        print(f"\nscale-out: partitions {sorted(killed_share)} moved in {took_s:.1f} s; {len(after)} bars checked")

        async with (
            TopicReader(apache_kafka, topics.system_events) as events,
            TopicReader(apache_kafka, topics.market_data) as md,
        ):
            mark = len(md.messages)
            await publish(apache_kafka, topics.control_commands, command("snap-after"), key="datamanager")
            answers = await _answers(events, "snap-after")
            assert all(r.ok for r in answers), answers
            assert sum(int(r.detail["bars"]) for r in answers) >= len(everything)

            def daily() -> dict[str, Bar] | None:
                got = {m.symbol: m for m in md.messages[mark:] if isinstance(m, Bar) and m.period == "1d"}
                return got if set(got) >= everything else None

            snapshot = await eventually(daily, timeout_s=30, what="every symbol's daily bar published")
        stored_daily = {k[0]: b for k, b in before.items() if k[1] == "1d"}
        for s in everything:
            assert snapshot[s].volume >= stored_daily[s].volume, (s, snapshot[s].volume, stored_daily[s].volume)

        # the load stops; once the survivor has committed everything, the canaries add up
        canary.kill()
        await canary.wait()
        for g in gateways:
            await g.stop()

        async def all_committed() -> bool:
            return await uncommitted(apache_kafka, group, topics.market_data) == 0

        await eventually(all_committed, timeout_s=30, interval_s=0.3, what="every record committed by the survivor")
        traded = await traded_canaries(apache_kafka, topics.market_data)
        assert len(traded) == CANARIES, f"{len(traded)} canaries traded"
        wrong = canary_mismatches(traded, await stored_bars(clickhouse_url, clickhouse_database))
        assert not wrong, f"{len(wrong)} canaries stored another volume than they traded (traded, stored): " + str(
            dict(list(wrong.items())[:5])
        )
    finally:
        if canary is not None and canary.returncode is None:
            canary.kill()
            await canary.wait()
        for d in gateways + members:
            await d.stop()


async def _first(members: list[Daemon], check: Any) -> Daemon | None:
    for d in members:
        if await check(d):
            return d
    return None
