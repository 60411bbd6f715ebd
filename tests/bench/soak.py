"""The full market for 30 minutes (``make soak``; ``--minutes N`` to shorten): each daemon's
RSS every 30 s and its slope after the warm-up, with bars in ClickHouse.

The deployment and load of the full-market benchmark (tests/bench/full_market.py): Redis,
ClickHouse, the gateway with sim feeders at the full market's rates (CN and HK one snapshot
per symbol every 3 s, US 20,000 trades/s), a partitioned datamanager member, the tasktimer
firing ``bar_snapshot`` every minute, one subscriber holding all 14,141 symbols. The first
sixth of the run is the warm-up (at least 20 s); the slope (least squares, MB/min) is taken
over the samples after it.

The datamanager keeps ``minute_history`` minute bars per symbol (120 by default), so for two
hours its state grows by design, one minute bar per ticking symbol per minute. A second
datamanager figure subtracts that growth, measured in process (the memory benchmark's
projection at the full market's symbol count), from its slope: what is left is what would
still grow once the history is full.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.datamanager.bars import BarAggregator
from shared.config import TopicPartitions
from shared.dto import InterestUpdate, utcnow
from tests.bench.daemons import Daemon, rss_mb
from tests.bench.full_market import PARTITIONS, Deployment, Stores, counters, running
from tests.bench.harness import BenchContext, Figure, Figures, NotMeasured, fresh_topics, slope_per_minute
from tests.bench.memory import _bar_state_mb
from tests.bench.storage import _servers
from tests.bench.universe import full_market
from tests.helpers import eventually, publish

NAME = "soak"
TITLE = "the full market for 30 minutes: each daemon's RSS and its slope, bars in ClickHouse"
NEEDS_BROKER = True
BROKER_KINDS = ("kafka", "external")
DEFAULT_MINUTES = 30.0
QUICK_MINUTES = 2.0
TARGET_SLOPE_MB_PER_MIN = 0.5
TARGET_RSS_MB = 250.0
MIN_WARMUP_S = 20.0
HISTORY_SAMPLE_MINUTES = 10  # minute bars the in-process projection folds per symbol


async def _ticks_out(gateway: Daemon) -> float:
    return (await gateway.metrics()).get("livedata_gateway_ticks_out_total", 0.0)


async def _soak(ctx: BenchContext, stores: Stores, minutes: float, every_s: float) -> dict[str, Any]:
    everything = [s for group in full_market().values() for s in group]
    jobs = {"jobs": [{"name": "snapshot", "cron": "* * * * *", "timezone": "UTC", "command": "bar_snapshot"}]}
    async with fresh_topics(ctx, NAME, TopicPartitions(market_data=PARTITIONS)) as topics:
        dep = Deployment(ctx, topics, stores)
        gateway = dep.daemon("gateway", "gateway")
        member = dep.member("m0")
        timer = dep.daemon("tasktimer", "tasktimer", task_timer=jobs)
        procs = {"gateway": gateway, "datamanager": member, "tasktimer": timer}
        async with running(member, gateway, timer):
            update = InterestUpdate(
                portfolio_id="bench",
                node_id="soak",
                symbols=tuple(everything),
                update_type="replace",
                timestamp=utcnow(),
            )
            await publish(ctx.bootstrap, topics.interest_updates, update, key="bench/soak")

            async def flowing() -> bool:
                return await _ticks_out(gateway) >= len(everything)

            await eventually(flowing, timeout_s=60, interval_s=0.2, what="the full market flowing")
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
            broker = "broker (Apache Kafka JVM)"
            if ctx.broker_pid:
                samples[broker] = []
            load: list[tuple[float, float, float]] = []  # (s, gateway ticks out, bars stored)
            started = time.monotonic()
            next_sample = started
            duration_s = minutes * 60.0
            while True:
                now = time.monotonic() - started
                for name, d in procs.items():
                    samples[name].append((now, d.rss_mb()))
                if ctx.broker_pid:
                    samples[broker].append((now, rss_mb(ctx.broker_pid)))
                load.append((now, await _ticks_out(gateway), (await counters(member))["stored"]))
                if now >= duration_s:
                    break
                next_sample += every_s
                await asyncio.sleep(max(0.0, next_sample - time.monotonic()))  # the sampling period
            gm = await gateway.metrics()
    (t0, ticks0, stored0), (t1, ticks1, stored1) = load[0], load[-1]
    return {
        "rss": samples,
        "ticks_out_per_s": round((ticks1 - ticks0) / (t1 - t0)) if t1 > t0 else None,
        "bars_stored_per_s": round((stored1 - stored0) / (t1 - t0)) if t1 > t0 else None,
        "gateway_conflated": gm.get("livedata_gateway_ticks_conflated_total", 0.0),
        "symbols": len(everything),
    }


def history_growth_mb_per_min(symbols: list[str]) -> tuple[float, int]:
    """MB per minute the datamanager's minute-bar history grows by at ``symbols`` (each
    ticking every minute) until it holds ``minute_history`` bars; and that count."""
    history = getattr(BarAggregator(), "minute_history", None)
    if not isinstance(history, int):
        raise NotMeasured("BarAggregator has no minute_history: the designed growth is unknown")
    minutes = min(HISTORY_SAMPLE_MINUTES, history)
    if minutes < 4:
        raise NotMeasured(f"a minute_history of {history} is too short to take its growth from")
    # the marginal growth: each symbol's fixed state is in both
    first = _bar_state_mb(symbols, 2)
    return (_bar_state_mb(symbols, minutes) - first) / (minutes - 2), history


async def run(ctx: BenchContext) -> list[Figure]:
    if ctx.broker_kind not in BROKER_KINDS:
        return [Figure(NAME, TITLE, None, "", skipped="Apache Kafka only")]
    minutes = ctx.minutes if ctx.minutes is not None else ctx.pick(DEFAULT_MINUTES, QUICK_MINUTES)
    every_s = ctx.pick(30.0, 10.0) if ctx.minutes is None or ctx.minutes >= 5 else 10.0
    warmup_s = max(MIN_WARMUP_S, minutes * 60.0 / 6)
    async with _servers(ctx) as (redis, clickhouse):
        soak = await _soak(ctx, Stores(redis, clickhouse), minutes, every_s)
    figures = Figures(NAME)
    common = {
        "minutes": minutes,
        "sample_every_s": every_s,
        "warmup_s": warmup_s,
        **{k: v for k, v in soak.items() if k != "rss"},
    }
    slopes: dict[str, float] = {}
    for name, series in soak["rss"].items():
        daemon = not name.startswith("broker")
        settled = [s for s in series if s[0] >= warmup_s]
        end_mb = round(series[-1][1], 1)
        figures.append(
            Figure(
                NAME,
                f"{name} RSS after {minutes:g} min at full market",
                end_mb,
                "MB",
                target=f"<= {TARGET_RSS_MB:g} MB" if daemon else "report",
                met=end_mb <= TARGET_RSS_MB if daemon else None,
                details={
                    "peak_mb": round(max(v for _, v in series), 1),
                    "samples": [(round(t), round(v, 1)) for t, v in series],
                    **(common if name == "gateway" else {}),
                },
            )
        )
        with figures.measure(
            f"{name} RSS slope after the warm-up ({minutes:g} min run)",
            "MB/min",
            target=f"<= {TARGET_SLOPE_MB_PER_MIN:g} MB/min" if daemon and name != "datamanager" else "report",
        ) as f:
            f.details["window_samples"] = len(settled)
            slope = slopes[name] = round(slope_per_minute(settled), 3)
            f.value = slope
            if daemon and name != "datamanager":
                f.met = slope <= TARGET_SLOPE_MB_PER_MIN
    everything = [s for group in full_market().values() for s in group]
    with figures.measure(
        "datamanager RSS slope after the warm-up, net of the minute-bar history filling",
        "MB/min",
        target=f"<= {TARGET_SLOPE_MB_PER_MIN:g} MB/min",
    ) as f:
        if "datamanager" not in slopes:
            raise NotMeasured("the datamanager's slope was not measured")
        growth, history = history_growth_mb_per_min(everything)
        if minutes > history:
            raise NotMeasured(f"the run outlasted the {history}-minute history: take the slope after it instead")
        f.details["designed_growth_mb_per_min"] = round(growth, 3)
        f.details["how"] = (
            "Python heap (tracemalloc) of a BarAggregator fed one tick per symbol per minute, 1 symbol in 5,"
            f" scaled to {len(everything):,} symbols"
        )
        f.details["raw_slope_mb_per_min"] = slopes["datamanager"]
        f.details["history_full_after_min"] = history
        f.value = round(slopes["datamanager"] - growth, 3)
        f.met = f.value <= TARGET_SLOPE_MB_PER_MIN
    return figures
