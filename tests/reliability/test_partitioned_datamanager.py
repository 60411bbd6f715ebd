"""Two partitioned datamanagers as processes on real Kafka, Redis and ClickHouse: they share
market data by consumer-group assignment, answer bar_snapshot per partition, and when one
freezes and is SIGKILLed the other takes its partitions (bars loaded from ClickHouse, no bar
regressed) and answers the command the frozen one never did."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from services.ops.servers import free_port
from shared.dto import Bar, CommandResult, Message, PriceUpdate, utcnow
from shared.partitioning import symbol_partition
from shared.symbols import Market, market_of
from shared.topics import Topics
from tests.helpers import TopicReader, eventually
from tests.service.test_datamanager_durable import (
    ConfigMaker,
    DmProcess,
    Producer,
    command,
    durable,
    interest,
    latest_subs,
    processes,
    symbols_for,
)

pytestmark = pytest.mark.reliability

PARTITIONS = 3  # market data in the tests (conftest FAST_KAFKA)
SYMBOLS = symbols_for(0, 300)


async def _partitions(proc: DmProcess) -> set[int] | None:
    body = await proc.readyz()
    if body is None or not body.get("ready"):
        return None
    return set(body.get("partitions", []))


async def _answers(
    events: TopicReader, cid: str, want: set[int] = set(range(PARTITIONS)), timeout_s: float = 30  # noqa: B006
) -> list[CommandResult]:
    """The command_results of ``cid`` once they cover ``want`` partitions."""

    def covered() -> list[CommandResult] | None:
        got = [r for r in events.of_type(CommandResult) if r.correlation_id == cid]
        named = {p for r in got for p in (r.partitions or ())}
        return got if want <= named else None

    found: list[CommandResult] = await eventually(covered, timeout_s=timeout_s, what=f"answers to {cid} for {want}")
    return found


def _daily(md: TopicReader, since: int) -> dict[str, Bar]:
    return {m.symbol: m for m in md.messages[since:] if isinstance(m, Bar) and m.period == "1d"}


def _ticks(step: int) -> list[tuple[str, Message]]:
    now = utcnow()
    out: list[tuple[str, Message]] = []
    for k, s in enumerate(SYMBOLS):
        price = 10.0 + k % 97 / 10 + step * 0.05
        at = now + timedelta(milliseconds=step)
        if market_of(s) is Market.US:
            t = PriceUpdate(symbol=s, price=price, timestamp=at, source="alpaca", last_size=10 + step)
        else:
            vol = 1000.0 * (k + 1) + 100 * step
            t = PriceUpdate(symbol=s, price=price, timestamp=at, source="em", volume=vol, amount=vol * price)
        out.append((s, t))
    return out


def _expected_volume(symbol: str, steps: list[int]) -> float:
    k = SYMBOLS.index(symbol)
    if market_of(symbol) is Market.US:
        return float(sum(10 + s for s in steps))  # trades: sizes summed
    return 1000.0 * (k + 1) + 100 * max(steps)  # snapshots: the day's cumulative volume


async def test_two_members_share_partitions_and_one_takes_over_from_a_dead_one(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: ConfigMaker,
    redis_url: str,
    redis_prefix: str,
    clickhouse_url: str,
    clickhouse_database: str,
    tmp_path: Path,
) -> None:
    ports = free_port(), free_port()
    configs = [
        make_config(
            topics,
            livedata=durable(
                redis_url, redis_prefix, clickhouse_url, clickhouse_database, port, partitioned=True, member_id=f"m{i}"
            ),
        )
        for i, port in enumerate(ports)
    ]
    first, second = (
        DmProcess(c.directory, port, tmp_path / f"dm-{i}.log")
        for i, (c, port) in enumerate(zip(configs, ports, strict=True))
    )
    async with (
        processes(first, second),
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
        TopicReader(kafka_bootstrap, topics.market_data) as md,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        Producer(kafka_bootstrap) as producer,
    ):
        await first.start()
        await eventually(lambda: _partitions(first), timeout_s=30, what="first member ready")
        await second.start()

        async def split() -> bool:
            a, b = await _partitions(first), await _partitions(second)
            return bool(a and b and not a & b and a | b == set(range(PARTITIONS)))

        await eventually(split, timeout_s=30, interval_s=0.2, what="the partitions split between the two members")
        share = {0: await _partitions(first), 1: await _partitions(second)}

        await producer.send(topics.interest_updates, interest("p0", "replace", SYMBOLS), key="p0/n")
        by_market = {m.value: tuple(sorted(s for s in SYMBOLS if market_of(s) == m)) for m in Market}
        await eventually(
            lambda: all(latest_subs(subs).get(m) and latest_subs(subs)[m].symbols == by_market[m] for m in by_market),
            timeout_s=20,
            what="subscriptions published by the lease holder",
        )
        await producer.send_many(topics.market_data, _ticks(0))
        await producer.send_many(topics.market_data, _ticks(1))

        async def all_folded() -> bool:
            cid = f"status-{time.monotonic_ns()}"
            await producer.send(topics.control_commands, command(cid, "status"), key="datamanager")
            answers = await _answers(events, cid, timeout_s=10)
            mine = {r.instance: int(r.detail["bar_symbols"]) for r in answers}
            return sum(mine.values()) >= len(SYMBOLS)

        await eventually(all_folded, timeout_s=40, interval_s=0.3, what="both members folded their symbols' ticks")

        mark = len(md.messages)
        await producer.send(topics.control_commands, command("snap-both"), key="datamanager")
        answers = await _answers(events, "snap-both")
        assert len(answers) == 2 and all(r.ok for r in answers)
        assert sum(r.detail["bars"] for r in answers) == len(SYMBOLS), answers
        assert sum(r.detail["missing"] for r in answers) == 0
        for r in answers:  # each member answered for its own partitions only
            assert r.partition_count == PARTITIONS
        await eventually(lambda: len(_daily(md, mark)) == len(SYMBOLS), timeout_s=20, what="every daily bar published")
        before = _daily(md, mark)
        for s, b in before.items():
            assert b.volume == _expected_volume(s, [0, 1]), s

        # the second member freezes: a command arrives that only the first can answer now
        assert second.proc is not None
        os.kill(second.proc.pid, signal.SIGSTOP)
        try:
            await producer.send(topics.control_commands, command("snap-frozen"), key="datamanager")
            first_share = share[0]
            assert first_share is not None
            early = await _answers(events, "snap-frozen", want=first_share)
            assert {p for r in early for p in (r.partitions or ())} == first_share
            # its session times out: the first takes every partition and answers for the rest
            async def owns_all() -> bool:
                return await _partitions(first) == set(range(PARTITIONS))

            await eventually(owns_all, timeout_s=30, interval_s=0.2, what="the first member owns every partition")
            late = await _answers(events, "snap-frozen")
            assert {p for r in late for p in (r.partitions or ())} == set(range(PARTITIONS))
        finally:
            await second.kill()

        await producer.send_many(topics.market_data, _ticks(2))
        await eventually(all_folded, timeout_s=30, interval_s=0.3, what="the survivor folds every symbol")
        mark = len(md.messages)
        await producer.send(topics.control_commands, command("snap-after"), key="datamanager")
        after_answers = await _answers(events, "snap-after")
        assert sum(r.detail["bars"] for r in after_answers) == len(SYMBOLS)

        wrong: dict[str, tuple[float, float]] = {}

        def all_grown() -> dict[str, Bar] | None:
            got = _daily(md, mark)
            wrong.clear()
            wrong.update({s: (b.volume, _expected_volume(s, [0, 1, 2])) for s, b in got.items()})
            wrong.update({s: (-1.0, _expected_volume(s, [0, 1, 2])) for s in SYMBOLS if s not in got})
            for s in [s for s, (v, e) in wrong.items() if v == e]:
                del wrong[s]
            return got if not wrong else None

        try:
            after = await eventually(all_grown, timeout_s=30, what="every daily bar carries all three ticks")
        except AssertionError as e:
            shown = {s: (*wrong[s], symbol_partition(s, PARTITIONS)) for s in sorted(wrong)[:10]}
            await producer.send(topics.control_commands, command("status-end", "status"), key="datamanager")
            end = await _answers(events, "status-end", timeout_s=10)
            raise AssertionError(
                f"{e}: {len(wrong)} wrong (got, want, partition): {shown}, share {share}, "
                f"status {[r.detail for r in end]}"
            ) from None
        taken = [s for s in SYMBOLS if symbol_partition(s, PARTITIONS) in (share[1] or set())]
        assert taken, "the dead member owned symbols"
        for s in SYMBOLS:  # no bar regressed: the taken-over symbols resumed from ClickHouse
            assert after[s].volume >= before[s].volume and after[s].high >= before[s].high, s
