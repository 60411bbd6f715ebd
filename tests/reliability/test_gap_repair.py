"""Gap repair end to end (issue 17): the gateway and the datamanager as processes on the real
broker, Redis and ClickHouse, the Alpaca simulator as the US provider (stream and minute
history from one exchange tape).

1. The provider drops us for 90 s in session, and its history endpoint is down when we come
   back: the hole's minutes are marked ``incomplete`` (in ClickHouse), then, once the history
   answers, every minute bar of the hole equals the simulator's truth, in ClickHouse and on
   market data (``quality: repaired``, revision up); bars before the hole are unchanged.
2. The datamanager is down (SIGKILL) for ``LIVEDATA_DM_DOWN_S`` seconds (45 in the suite;
   the issue's 3 minutes with ``LIVEDATA_DM_DOWN_S=180``), then back: the minutes it missed
   equal the truth as well (its ticks are replayed from Kafka; in session it also asks the
   gateway for the window's provider minutes).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from services.datamanager.bars import BarRow
from services.datamanager.barstore import ClickHouseBars
from shared.client import LiveDataClient
from shared.dto import Bar, HistoryBars, PriceUpdate, utcnow
from shared.sessions import in_session, trading_day
from shared.symbols import Market
from tests.daemons import System
from tests.helpers import TopicReader, eventually
from tests.reliability.loaded_system import merge, stores
from tests.simulators.alpaca import AlpacaSimulator, MinuteTruth

pytestmark = pytest.mark.reliability

SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN"]
DROP_S = 90.0
DM_DOWN_S = float(os.environ.get("LIVEDATA_DM_DOWN_S", "45"))
MINUTE = timedelta(minutes=1)


def same(bar: BarRow, truth: MinuteTruth) -> bool:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume) == (
        truth.open,
        truth.high,
        truth.low,
        truth.close,
        truth.volume,
    ) and abs(bar.amount - truth.amount) <= 1e-6 * max(truth.amount, 1.0)


async def stored_minutes(store: ClickHouseBars) -> dict[tuple[str, datetime], BarRow]:
    day = trading_day(Market.US, utcnow())
    rows = await store.read(day, "1m", SYMBOLS)
    return {(r.symbol, datetime.fromtimestamp(r.start_ms / 1000, tz=utcnow().tzinfo)): r for r in rows}


def mismatches(
    bars: dict[tuple[str, datetime], BarRow], sim: AlpacaSimulator, start: datetime, end: datetime
) -> list[str]:
    """Every minute of [start, end) where the stored bar differs from the tape's truth."""
    out = []
    for sym in SYMBOLS:
        truth = sim.truth(sym, "iex")
        m = start
        while m < end:
            t, b = truth.get(m), bars.get((sym, m))
            if t is None and b is not None:
                out.append(f"{sym} {m:%H:%M}: stored {b.volume} but the tape has no trade")
            elif t is not None and (b is None or not same(b, t)):
                out.append(f"{sym} {m:%H:%M}: stored {b and (b.open, b.high, b.low, b.close, b.volume)} truth {t[:5]}")
            m += MINUTE
        if len(out) > 20:
            break
    return out


@pytest.mark.timeout(120 + DROP_S + DM_DOWN_S + 240)
async def test_a_90s_drop_and_a_datamanager_downtime_are_repaired(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    clickhouse_url: str,
    clickhouse_database: str,
    tmp_path: Path,
) -> None:
    async with AlpacaSimulator(symbol_limit=None, interval_s=0.05, iex_share=0.6) as sim:
        data_sources = {
            "markets": {
                "US": {
                    "sources": [
                        {
                            "type": "alpaca",
                            "name": "us-alpaca",
                            "url": sim.url,
                            "history_url": sim.history_url,
                            "channels": ["trades"],
                            "symbol_limit": None,
                            "backoff_base_s": 0.2,
                            "backoff_cap_s": 0.5,
                            "connect_timeout_s": 2.0,
                        }
                    ]
                }
            }
        }
        live = merge(
            stores(redis_url, redis_prefix, clickhouse_url, clickhouse_database),
            {"clickhouse": {"flush_interval_ms": 200}},
            {"gateway": {"repair": {"retry_base_s": 1.0, "retry_cap_s": 3.0}}},
        )
        system = System(
            tmp_path, kafka_bootstrap, data_sources=data_sources, livedata=live, names=("gateway", "datamanager")
        )
        (system.config_dir / "secure.yml").write_text(
            yaml.safe_dump({"us-alpaca": {"key": sim.key, "secret": sim.secret}})
        )
        (system.config_dir / "secure.yml").chmod(0o600)
        store = ClickHouseBars(clickhouse_url, clickhouse_database)
        topics = system.topics
        try:
            async with (
                system,
                TopicReader(kafka_bootstrap, topics.market_data) as data,
                LiveDataClient(kafka_bootstrap, "p-repair", "n1", topics=topics, lease_s=None) as client,
            ):
                await client.replace(SYMBOLS)
                await eventually(
                    lambda: {m.symbol for m in data.of_type(PriceUpdate)} >= set(SYMBOLS),
                    timeout_s=30,
                    what="every symbol ticking",
                )
                await _drop_scenario(sim, store, data, system)
                await _datamanager_down_scenario(sim, store, data, system)
        finally:
            await store.stop()


async def _after_first_whole_minute(data: TopicReader) -> None:
    """Until the minute after the first tick's has begun (5 s in): a whole minute of bars is
    stored before the hole then (a point on the clock, not a condition)."""
    first = min(m.timestamp for m in data.of_type(PriceUpdate))
    target = first.replace(second=0, microsecond=0) + MINUTE + timedelta(seconds=5)
    await asyncio.sleep(max(0.0, (target - utcnow()).total_seconds()))


async def _drop_scenario(sim: AlpacaSimulator, store: ClickHouseBars, data: TopicReader, system: System) -> None:
    await _after_first_whole_minute(data)
    before = await stored_minutes(store)
    sim.history_down = 503
    dropped_at = utcnow()
    sim.go_down(DROP_S)
    hole_start = dropped_at.replace(second=0, microsecond=0)

    def history(state: str) -> list[HistoryBars]:
        return [m for m in data.of_type(HistoryBars) if m.state == state and m.start <= hole_start < m.end]

    await eventually(lambda: len(history("pending")) >= len(SYMBOLS), timeout_s=DROP_S + 30, what="the hole announced")
    window = history("pending")[0]
    assert window.start == hole_start and window.end - window.start >= timedelta(seconds=DROP_S)
    await eventually(lambda: len(history("failed")) >= len(SYMBOLS), timeout_s=60, what="the history outage said")

    async def marked_incomplete() -> bool:
        bars = await stored_minutes(store)
        return all(bars[(s, hole_start)].quality == "incomplete" for s in SYMBOLS if (s, hole_start) in bars)

    await eventually(marked_incomplete, timeout_s=20, interval_s=0.5, what="the hole's minutes marked incomplete")
    sim.history_down = None
    await eventually(lambda: len(history("repaired")) >= len(SYMBOLS), timeout_s=60, what="the hole repaired")

    async def right() -> bool:
        return not mismatches(await stored_minutes(store), sim, window.start, window.end)

    try:
        await eventually(right, timeout_s=30, interval_s=0.5, what="every minute of the hole equal to the tape")
    except AssertionError:
        raise AssertionError(
            "\n".join(mismatches(await stored_minutes(store), sim, window.start, window.end))
        ) from None
    after = await stored_minutes(store)
    for (sym, m), bar in after.items():
        if window.start <= m < window.end and sim.truth(sym, "iex").get(m):
            assert bar.quality == "repaired" and bar.source == "us-alpaca", (sym, m, bar)
    untouched = [k for k, b in before.items() if k[1] < window.start and after.get(k) != b]
    assert not untouched, f"bars outside the hole changed: {untouched[:5]}"
    published = [b for b in data.of_type(Bar) if b.period == "1m" and window.start <= b.timestamp < window.end]
    assert {b.symbol for b in published if b.quality == "repaired" and b.revision >= 1} >= set(SYMBOLS)
    print(f"\nhole {window.start:%H:%M}-{window.end:%H:%M} repaired for {len(SYMBOLS)} symbols after the outage")


async def _datamanager_down_scenario(
    sim: AlpacaSimulator, store: ClickHouseBars, data: TopicReader, system: System
) -> None:
    dm = system["datamanager"]
    down_at = utcnow()
    await dm.kill()
    await asyncio.sleep(DM_DOWN_S)  # the downtime itself: a duration, not a condition
    started = time.monotonic()
    await dm.start()
    await dm.wait_ready(60)
    back_at = utcnow()
    start = down_at.replace(second=0, microsecond=0)
    end = back_at.replace(second=0, microsecond=0) + MINUTE  # through the minute it came back in
    await asyncio.sleep(max(0.0, (end - utcnow()).total_seconds()) + 2)  # until that minute has ended

    async def right() -> bool:
        return not mismatches(await stored_minutes(store), sim, start, end)

    try:
        await eventually(right, timeout_s=60, interval_s=0.5, what="the downtime's minutes equal to the tape")
    except AssertionError:
        raise AssertionError("\n".join(mismatches(await stored_minutes(store), sim, start, end))) from None
    ready_s = time.monotonic() - started
    asked = "out of session: no repair asked"
    if in_session(Market.US, back_at):  # the datamanager asks the gateway for the window it missed

        def resumed(state: str) -> list[HistoryBars]:
            return [
                m
                for m in data.of_type(HistoryBars)
                if m.state == state and (m.request_id or "").startswith("dm-resume-") and m.start <= start < m.end
            ]

        await eventually(lambda: len(resumed("repaired")) >= len(SYMBOLS), 120, 0.5, "the resume's repair")

        async def repaired() -> bool:
            bars = await stored_minutes(store)
            return not mismatches(bars, sim, start, end) and all(
                bars[(s, m)].quality == "repaired"
                for s in SYMBOLS
                for m in sim.truth(s, "iex")
                if start <= m < end and (s, m) in bars
            )

        await eventually(repaired, timeout_s=30, interval_s=0.5, what="the downtime's minutes repaired")
        asked = (
            f"repaired from provider history ({resumed('repaired')[0].start:%H:%M}-{resumed('repaired')[0].end:%H:%M})"
        )
    print(
        f"\ndatamanager down {DM_DOWN_S:.0f}s: ready again in {ready_s:.1f}s; minutes "
        f"{start:%H:%M}-{end:%H:%M} equal the tape; {asked}"
    )
