"""What the scale-out scenario (two partitioned datamanagers, two sharded gateways) and its
full-market long form share: the processes' config sections, the stored bars read back from
ClickHouse, and the one judgement of a takeover: no bar lost or regressed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from services.datamanager.barstore import ClickHouseBars
from shared.dto import PriceUpdate, decode
from shared.kafka import assign_all
from tests.daemons import Daemon

BarKey = tuple[str, str, int]  # (symbol, period, start ms)


@dataclass(frozen=True)
class StoredBar:
    volume: float
    high: float
    version: int


async def stored_bars(url: str, database: str) -> dict[BarKey, StoredBar]:
    """Every bar in ClickHouse, the newest version of each (FINAL)."""
    store = ClickHouseBars(url, database)
    await store.start()
    try:
        rows = await store.execute(f"SELECT symbol, period, start, volume, high, version FROM {database}.bars FINAL")
    finally:
        await store.stop()
    return {(s, p, start): StoredBar(float(v), float(h), int(ver)) for s, p, start, v, h, ver in rows}


def daily_symbols(bars: dict[BarKey, StoredBar]) -> set[str]:
    return {s for s, period, _ in bars if period == "1d"}


def minute_symbols(bars: dict[BarKey, StoredBar]) -> set[str]:
    return {s for s, period, _ in bars if period == "1m"}


@dataclass
class Judgement:
    """What a later read of the stored bars says against an earlier one."""

    lost: list[BarKey]  # stored before, gone after
    regressed: list[tuple[BarKey, StoredBar, StoredBar]]  # volume or high lower, or an older version
    unversioned: list[BarKey]  # changed without a newer version
    without_daily: list[str]  # symbols of ``symbols`` without a daily bar after
    without_minute: list[str]  # ... without a minute bar after

    @property
    def ok(self) -> bool:
        return not (self.lost or self.regressed or self.unversioned or self.without_daily or self.without_minute)

    def summary(self) -> dict[str, Any]:
        return {
            "lost": len(self.lost),
            "regressed": len(self.regressed),
            "changed_without_new_version": len(self.unversioned),
            "symbols_without_daily_bar": len(self.without_daily),
            "symbols_without_minute_bar": len(self.without_minute),
            "examples": {
                "lost": self.lost[:5],
                "regressed": [(k, vars(b), vars(a)) for k, b, a in self.regressed[:5]],
                "unversioned": self.unversioned[:5],
                "without_daily": self.without_daily[:5],
            },
        }


def judge(before: dict[BarKey, StoredBar], after: dict[BarKey, StoredBar], symbols: set[str]) -> Judgement:
    """No bar stored before is gone or lower after (volume, high), versions only increase
    (a changed bar has a newer one), and every symbol still has its daily and minute bars."""
    lost: list[BarKey] = []
    regressed: list[tuple[BarKey, StoredBar, StoredBar]] = []
    unversioned: list[BarKey] = []
    for key, b in before.items():
        a = after.get(key)
        if a is None:
            lost.append(key)
        elif a.volume < b.volume or a.high < b.high or a.version < b.version:
            regressed.append((key, b, a))
        elif a != b and a.version == b.version:
            unversioned.append(key)
    days, minutes = daily_symbols(after), minute_symbols(after)
    return Judgement(sorted(lost), regressed, unversioned, sorted(symbols - days), sorted(symbols - minutes))


def gateway_sections(port: int, index: int, count: int) -> dict[str, Any]:
    """livedata.yml's gateway section of shard ``index`` of ``count``."""
    return {"gateway": {"http": {"port": port}, "shard": {"count": count, "index": index}}}


def member_sections(port: int, member_id: str) -> dict[str, Any]:
    """livedata.yml's datamanager section of a partitioned member (merged over the shared one)."""
    return {"datamanager": {"http": {"port": port}, "partitioned": True, "member_id": member_id}}


async def partitions_of(d: Daemon) -> set[int] | None:
    """The market-data partitions a ready member owns (None: not ready, or too busy to answer)."""
    try:
        doc = await d.readiness()
    except (aiohttp.ClientError, TimeoutError):
        return None
    if not doc.get("ticks_consumer") or "partitions" not in doc:
        return None
    return set(doc["partitions"])


async def split_between(members: list[Daemon], count: int) -> bool:
    """Every member owns some partitions, each partition once."""
    shares = [await partitions_of(d) for d in members]
    if any(not s for s in shares):
        return False
    owned = [s for s in shares if s]
    return set().union(*owned) == set(range(count)) and sum(len(s) for s in owned) == count


# -- canaries: symbols traded at a known size, so a lost or doubled trade shows exactly -------


def canary_process_args(bootstrap: str, topic: str, symbols: int, per_s: float, kafka: dict[str, Any]) -> list[str]:
    """``python -m tests.bench.market_load`` arguments trading only canaries (size 100 each)."""
    return [
        "-m",
        "tests.bench.market_load",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--duration-s",
        "3600",
        "--canary",
        str(symbols),
        "--canary-rate",
        str(per_s),
        "--kafka",
        json.dumps(kafka),
    ]


async def traded_canaries(bootstrap: str, topic: str) -> dict[str, float]:
    """Each CANARY symbol's traded volume on ``topic`` (every partition, from the beginning)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, float] = {}
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp, records in (await consumer.getmany(*left, timeout_ms=500, max_records=20_000)).items():
                for r in records:
                    if r.key is None or not r.key.startswith(b"CANARY"):
                        continue
                    m = decode(r.value or b"")
                    if isinstance(m, PriceUpdate) and not m.snapshot and m.last_size is not None:
                        out[m.symbol] = out.get(m.symbol, 0.0) + m.last_size
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return out


async def uncommitted(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed yet."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic, wait_s=10)
        ends = await consumer.end_offsets(tps)
        behind = 0
        for tp in tps:
            behind += max(ends[tp] - (await consumer.committed(tp) or 0), 0)
        return behind
    finally:
        await consumer.stop()


def canary_mismatches(traded: dict[str, float], bars: dict[BarKey, StoredBar]) -> dict[str, tuple[float, float]]:
    """Canaries whose stored daily volume is not what they traded: symbol → (traded, stored)."""
    stored: dict[str, tuple[int, float]] = {}
    for (s, period, start), b in bars.items():
        if period == "1d" and s in traded and (s not in stored or start > stored[s][0]):
            stored[s] = (start, b.volume)
    return {s: (v, stored.get(s, (0, 0.0))[1]) for s, v in traded.items() if stored.get(s, (0, 0.0))[1] != v}
