"""Memory: RSS of each daemon (real processes) with 5,000 subscribed symbols at 5,000
ticks/s, sampled from /proc/<pid>/status once a second, and its slope.

The three daemons run as ``python -m services.<name> --config-dir DIR``; a subscriber's
interest names 5,000 symbols (CN, HK, US), the sim ticks each once a second, and the
tasktimer fires ``bar_snapshot`` every minute. The slope (least squares, MB/min) is taken
after a settling period. A second figure projects the datamanager's minute-bar history
(``BarAggregator.minute_history`` bars per symbol) at 5,000 symbols, measured in process:
a 60-second run cannot show growth that only levels off after two hours.
Quick mode samples 12 s: its slopes mostly show start-up growth.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from services.datamanager.bars import BarAggregator
from shared.dto import InterestUpdate, PriceUpdate, utcnow
from shared.symbols import Market
from tests.bench.daemons import Daemon, daemons, rss_mb
from tests.bench.harness import (
    BenchContext,
    Figure,
    Figures,
    flat,
    fresh_topics,
    sim_sources,
    slope_per_minute,
    symbols_by_market,
)
from tests.helpers import eventually, publish

NAME = "memory"
TITLE = "daemon RSS at 5,000 symbols and 5,000 ticks/s, and its slope"
NEEDS_BROKER = True
SYMBOLS = 5000
TARGET_MB = 150.0
FLAT_MB_PER_MIN = 1.0  # "no growth": a slope under this over the window


async def _ticks_out(gateway: Daemon) -> float:
    return (await gateway.metrics()).get("livedata_gateway_ticks_out_total", 0.0)


async def _daemon_rss(ctx: BenchContext, duration_s: float, settle_s: float) -> dict[str, dict[str, Any]]:
    load = flat(symbols_by_market(SYMBOLS))
    jobs = {"jobs": [{"name": "snapshot", "cron": "* * * * *", "timezone": "UTC", "command": "bar_snapshot"}]}
    async with (
        fresh_topics(ctx, NAME) as topics,
        daemons(
            ctx,
            topics,
            ["gateway", "datamanager", "tasktimer"],
            data_sources=sim_sources(list(Market), 1.0, 100.0),
            task_timer=jobs,
        ) as procs,
    ):
        idle = {name: d.rss_mb() for name, d in procs.items()}
        gateway = procs["gateway"]
        await publish(
            ctx.bootstrap,
            topics.interest_updates,
            InterestUpdate(
                portfolio_id="bench", node_id="memory", symbols=tuple(load), update_type="replace", timestamp=utcnow()
            ),
            key="bench/memory",
        )
        await eventually(
            lambda: _ticks_out_at_least(gateway, SYMBOLS), timeout_s=30, interval_s=0.1, what="the load flowing"
        )
        ticks0 = await _ticks_out(gateway)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        broker_label = f"broker ({'Apache Kafka JVM' if ctx.broker_kind == 'kafka' else 'Tansu'})"
        if ctx.broker_pid:
            samples[broker_label] = []
        started = time.monotonic()
        next_sample = started
        while True:
            now = time.monotonic()
            for name, d in procs.items():
                samples[name].append((now - started, d.rss_mb()))
            if ctx.broker_pid:
                samples[broker_label].append((now - started, rss_mb(ctx.broker_pid)))
            if now - started >= duration_s:
                break
            next_sample += 1.0
            await asyncio.sleep(max(0.0, next_sample - time.monotonic()))  # the sampling period
        elapsed = time.monotonic() - started
        ticks_per_s = (await _ticks_out(gateway) - ticks0) / elapsed
        dm_metrics = await procs["datamanager"].metrics()
    out: dict[str, dict[str, Any]] = {}
    for name, series in samples.items():
        out[name] = {
            "idle_mb": round(idle[name], 1) if name in idle else None,
            "at_load_start_mb": round(series[0][1], 1),
            "end_mb": round(series[-1][1], 1),
            "peak_mb": round(max(v for _, v in series), 1),
            "samples": len(series),
            "settled": [s for s in series if s[0] >= settle_s],  # the slope's window (taken in run)
        }
    out["gateway"]["ticks_out_per_s"] = round(ticks_per_s)
    out["datamanager"]["ticks_aggregated"] = dm_metrics.get("livedata_datamanager_ticks_aggregated_total")
    return out


async def _ticks_out_at_least(gateway: Daemon, n: float) -> bool:
    return await _ticks_out(gateway) >= n


def _bar_state_mb(symbols: list[str], minutes: int, sample_every: int = 5) -> float:
    """Python heap (tracemalloc) held by a BarAggregator after ``minutes`` + 1 minutes of
    one tick per symbol per minute, measured on every ``sample_every``-th symbol and
    scaled to all of them (per-symbol state is independent)."""
    sample = symbols[::sample_every]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bars = BarAggregator()
        start = datetime(2024, 3, 4, 1, 0, 5, tzinfo=UTC)  # no market's midnight within 2 hours
        on_tick = bars.on_tick
        for minute in range(minutes + 1):
            ts = start + timedelta(minutes=minute)
            price = 10.0 + minute % 10 * 0.01
            for i, sym in enumerate(sample):
                on_tick(
                    PriceUpdate(
                        symbol=sym,
                        price=price,
                        timestamp=ts,
                        source="sim",
                        volume=1000.0 * (minute + 1) + i,
                        amount=10_000.0 * (minute + 1),
                        open_price=10.0,
                        high_price=10.1,
                        low_price=9.9,
                    )
                )
            bars.drain()  # the service drains changed bars to the store once a second
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    kept = min(len(bars.minute_bars(s)) for s in sample[:10])
    assert kept >= minutes, f"expected {minutes} minute bars per symbol, held {kept}"
    return held * len(symbols) / len(sample) / 2**20


async def run(ctx: BenchContext) -> list[Figure]:
    duration_s = ctx.pick(60.0, 12.0)
    settle_s = ctx.pick(10.0, 4.0)
    per_daemon = await _daemon_rss(ctx, duration_s, settle_s)
    figures = Figures(NAME)
    for name, stats in per_daemon.items():
        is_daemon = not name.startswith("broker")
        end_mb = stats["end_mb"]
        settled = stats.pop("settled")
        figures.append(
            Figure(
                NAME,
                f"{name} RSS after {duration_s:g} s",
                end_mb,
                "MB",
                target=f"<= {TARGET_MB:g} MB" if is_daemon else "report",
                met=end_mb <= TARGET_MB if is_daemon else None,
                details=stats,
            )
        )
        judged = is_daemon and not ctx.quick  # a 12-second window shows start-up, not growth
        target = f"<= {FLAT_MB_PER_MIN:g} MB/min (no growth)"
        with figures.measure(
            f"{name} RSS slope (after {settle_s:g} s)",
            "MB/min",
            target=target if judged else ("report" if not is_daemon else f"full run only: {target}"),
        ) as f:
            f.details["window_samples"] = len(settled)
            slope = round(slope_per_minute(settled), 3)
            stats["slope_mb_per_min"] = slope
            f.value = slope
            f.met = slope <= FLAT_MB_PER_MIN if judged else None
    minutes = BarAggregator().minute_history
    projected = _bar_state_mb(flat(symbols_by_market(SYMBOLS)), minutes)
    figures.append(
        Figure(
            NAME,
            f"datamanager bar state, {SYMBOLS:,} symbols after {minutes} min (projected)",
            round(projected, 1),
            "MB",
            target=f"<= {TARGET_MB:g} MB (the whole daemon's budget)",
            met=projected <= TARGET_MB,
            details={
                "how": "Python heap (tracemalloc) of a BarAggregator fed one tick per symbol per minute for"
                f" {minutes + 1} minutes (minute_history={minutes}), 1 symbol in 5, scaled to {SYMBOLS}",
                "bytes_per_minute_bar": round(projected * 2**20 / (SYMBOLS * minutes)),
            },
        )
    )
    return figures
