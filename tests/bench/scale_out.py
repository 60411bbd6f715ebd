"""The scale-out scenario at full market (the long form of tests/reliability/test_scale_out.py):
two partitioned datamanagers and two sharded gateways under the full market's load, bars in
ClickHouse; SIGKILL the member holding the lease, later start it again.

``python -m tests.bench --only scale_out [--minutes N]`` (default 5; ``--quick`` 1.5). The
load and deployment are the full-market benchmark's (tests/bench/full_market.py), with the
gateway split in two shards (``gateway.shard``) and two members (``member_id`` m0, m1). A third
of the way in, the lease holder is SIGKILLed; two thirds in, it starts again with its member
id. Figures: seconds from the kill until the survivor owns every partition, and from the
restart until the two share them again; the longest pause in bar storage around each; bars
lost or regressed across each move (ClickHouse before against after: volumes and highs never
lower, versions only higher, every symbol still with its daily and minute bars); canary
symbols traded at a known size throughout (the sim's cumulative volumes hide a lost tick),
each one's stored daily volume against what it traded on the topic once all is committed;
each process's RSS at the end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.config import TopicPartitions
from shared.dto import InterestUpdate, utcnow
from tests.bench.daemons import Daemon
from tests.bench.full_market import (
    CANARIES,
    CANARY_PER_S,
    PARTITIONS,
    Deployment,
    Load,
    MemberSampler,
    Stores,
    longest_pause,
    running,
)
from tests.bench.harness import BenchContext, Figure, Figures, NotMeasured, fresh_topics
from tests.bench.storage import _servers
from tests.bench.universe import full_market
from tests.helpers import eventually, publish
from tests.reliability.scale_out import (
    BarKey,
    StoredBar,
    canary_mismatches,
    judge,
    partitions_of,
    split_between,
    stored_bars,
    traded_canaries,
    uncommitted,
)

NAME = "scale_out"
TITLE = "two datamanagers and two sharded gateways at full market: a member killed and restarted"
NEEDS_BROKER = True
BROKER_KINDS = ("kafka", "external")
DEFAULT_MINUTES = 5.0
QUICK_MINUTES = 1.5


async def _holder(members: dict[str, Daemon]) -> str | None:
    for label, d in members.items():
        if (await d.readiness()).get("role") == "active":
            return label
    return None


async def _grown_since(url: str, db: str, before: dict[BarKey, StoredBar], symbols: set[str]) -> Any:
    """The stored bars once every symbol's daily bar has a newer version than in ``before``."""
    bars = await stored_bars(url, db)
    grown = {k[0] for k, b in bars.items() if k[1] == "1d" and k in before and b.version > before[k].version}
    return bars if grown >= symbols else None


async def _scenario(ctx: BenchContext, stores: Stores, minutes: float) -> dict[str, Any]:
    everything = [s for group in full_market().values() for s in group]
    symbols = set(everything)
    third_s = minutes * 60.0 / 3
    out: dict[str, Any] = {"symbols": len(everything)}
    async with fresh_topics(ctx, NAME, TopicPartitions(market_data=PARTITIONS)) as topics:
        dep = Deployment(ctx, topics, stores)
        url, db = stores.clickhouse.url, dep.database
        members = {f"m{i}": dep.member(f"m{i}") for i in range(2)}
        gateways = [
            dep.daemon("gateway", f"gateway-{i}", gateway={"shard": {"count": 2, "index": i}}) for i in range(2)
        ]
        canary = Load(ctx, topics.market_data, {}, {}, 0.0, 0.0, 3600.0, canary=(CANARIES, CANARY_PER_S))
        async with running(*members.values(), *gateways), MemberSampler() as sampler:
            for label, d in members.items():
                sampler.watch(label, d)
            m = list(members.values())
            await eventually(lambda: split_between(m, PARTITIONS), timeout_s=60, interval_s=0.2, what="the split")
            await canary.start()
            update = InterestUpdate(
                portfolio_id="bench",
                node_id="scale-out",
                symbols=tuple(everything),
                update_type="replace",
                timestamp=utcnow(),
            )
            await publish(ctx.bootstrap, topics.interest_updates, update, key="bench/scale-out")
            started = time.monotonic()

            async def all_stored() -> Any:
                bars = await stored_bars(url, db)
                days = {k[0] for k in bars if k[1] == "1d"}
                return bars if days >= symbols else None

            await eventually(all_stored, timeout_s=120, interval_s=1.0, what="every symbol's bars stored")
            await asyncio.sleep(max(0.0, third_s - (time.monotonic() - started)))  # the load runs
            before_kill = await stored_bars(url, db)
            victim = await eventually(lambda: _holder(members), timeout_s=20, interval_s=0.2, what="a lease holder")
            survivor = members["m1" if victim == "m0" else "m0"]
            out["killed"] = victim
            out["killed_share"] = sorted(await partitions_of(members[victim]) or ())
            killed_at = time.perf_counter()
            await members[victim].kill()

            async def owns_all() -> bool:
                return await partitions_of(survivor) == set(range(PARTITIONS))

            await eventually(owns_all, timeout_s=60, interval_s=0.1, what="the survivor owns every partition")
            out["takeover_s"] = round(time.perf_counter() - killed_at, 2)
            after_kill = await eventually(
                lambda: _grown_since(url, db, before_kill, symbols),
                timeout_s=120,
                interval_s=1.0,
                what="every daily bar stored again after the takeover",
            )
            out["after_kill"] = judge(before_kill, after_kill, symbols).summary()
            out["bars_resumed_s"] = round(time.perf_counter() - killed_at, 2)
            await asyncio.sleep(max(0.0, 2 * third_s - (time.monotonic() - started)))  # the load runs
            before_restart = await stored_bars(url, db)
            restarted_at = time.perf_counter()
            await members[victim].start()
            await members[victim].wait_ready(60)
            await eventually(lambda: split_between(m, PARTITIONS), timeout_s=60, interval_s=0.1, what="the re-split")
            out["rejoin_s"] = round(time.perf_counter() - restarted_at, 2)
            after_restart = await eventually(
                lambda: _grown_since(url, db, before_restart, symbols),
                timeout_s=120,
                interval_s=1.0,
                what="every daily bar stored again after the rejoin",
            )
            out["after_restart"] = judge(before_restart, after_restart, symbols).summary()
            await asyncio.sleep(max(0.0, 3 * third_s - (time.monotonic() - started)))  # the load runs
            out["rss_mb"] = {
                **{f"datamanager {label}": round(d.rss_mb(), 1) for label, d in members.items()},
                **{f"gateway shard {i}": round(d.rss_mb(), 1) for i, d in enumerate(gateways)},
            }
            stored = sampler.total("stored")
            out["pause_after_kill_s"] = round(longest_pause(stored, killed_at, killed_at + out["bars_resumed_s"]), 2)
            out["pause_after_restart_s"] = round(longest_pause(stored, restarted_at, restarted_at + 30.0), 2)
            out["pause_steady_s"] = round(longest_pause(stored, killed_at - 20.0, killed_at), 2)
            out["gateway_ticks_out"] = [
                (await g.metrics()).get("livedata_gateway_ticks_out_total", 0.0) for g in gateways
            ]
            await canary.kill()  # the load stops; what is on the topic is what counts
            for g in gateways:
                await g.stop()
            group = f"{dep.group}.bars"

            async def all_committed() -> bool:
                return await uncommitted(ctx.bootstrap, group, topics.market_data) == 0

            await eventually(all_committed, timeout_s=120, interval_s=0.5, what="every record committed")
            traded = await traded_canaries(ctx.bootstrap, topics.market_data)
            wrong = canary_mismatches(traded, await stored_bars(url, db))
            out["canaries"] = {
                "symbols": len(traded),
                "trades": round(sum(traded.values()) / 100),
                "wrong": len(wrong),
                "trades_missing": round(sum(max(t - s, 0.0) for t, s in wrong.values()) / 100),
                "trades_extra": round(sum(max(s - t, 0.0) for t, s in wrong.values()) / 100),
                "examples": {k: list(v) for k, v in list(wrong.items())[:5]},
            }
    return out


async def run(ctx: BenchContext) -> list[Figure]:
    if ctx.broker_kind not in BROKER_KINDS:
        return [Figure(NAME, TITLE, None, "", skipped="Apache Kafka only")]
    minutes = ctx.minutes if ctx.minutes is not None else ctx.pick(DEFAULT_MINUTES, QUICK_MINUTES)
    async with _servers(ctx) as (redis, clickhouse):
        sc = await _scenario(ctx, Stores(redis, clickhouse), minutes)
    figures = Figures(NAME)
    figures.append(
        Figure(
            NAME,
            "member SIGKILLed: until the survivor owns every partition",
            sc["takeover_s"],
            "s",
            target="report",
            details={k: v for k, v in sc.items() if k not in ("after_kill", "after_restart")},
        )
    )
    figures.append(
        Figure(NAME, "member restarted: until the two share the partitions again", sc["rejoin_s"], "s", target="report")
    )
    for key, label in (("pause_after_kill_s", "after the kill"), ("pause_after_restart_s", "after the restart")):
        figures.append(
            Figure(
                NAME,
                f"longest pause in bar storage {label}",
                sc[key],
                "s",
                baseline=sc["pause_steady_s"],
                baseline_name="the longest pause in the 20 s before",
                target="report",
            )
        )
    for key, label in (("after_kill", "the takeover"), ("after_restart", "the rejoin")):
        with figures.measure(f"bars lost or regressed across {label}", "bars", target="0", details=sc[key]) as f:
            j = sc[key]
            if not j:
                raise NotMeasured("not judged")
            f.value = float(
                j["lost"]
                + j["regressed"]
                + j["changed_without_new_version"]
                + j["symbols_without_daily_bar"]
                + j["symbols_without_minute_bar"]
            )
            f.met = f.value == 0
    with figures.measure(
        "canary trades lost or doubled across the kill and the rejoin (stored daily volume against the topic)",
        "symbols",
        target="0",
        details=sc.get("canaries", {}),
    ) as f:
        if "canaries" not in sc:
            raise NotMeasured("the canaries were not checked")
        f.value = float(sc["canaries"]["wrong"])
        f.met = f.value == 0
    for name, mb in sc["rss_mb"].items():
        figures.append(Figure(NAME, f"{name} RSS at the end", mb, "MB", target="<= 250 MB", met=mb <= 250.0))
    return figures
