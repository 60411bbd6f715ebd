"""datamanager with its state in real Redis and bars in real ClickHouse, on the real broker:
SIGKILL and restart, active/standby takeover, leases, snapshot-on-subscribe, storage outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.datamanager.service import DataManager
from services.ops.servers import ClickHouseServer, free_port
from shared.config import AppConfig
from shared.dto import (
    Bar,
    CommandResult,
    ControlCommand,
    DeadLetter,
    InterestUpdate,
    Message,
    PriceUpdate,
    Status,
    Subscription,
    UpdateType,
    decode,
    encode,
    utcnow,
)
from shared.sessions import trading_day
from shared.symbols import Market, market_of
from shared.topics import Topics
from tests.helpers import TopicFollower, TopicReader, env_without_overrides, eventually, running

ConfigMaker = Callable[..., AppConfig]
ROOT = Path(__file__).resolve().parents[2]


def durable(
    redis_url: str | None = None,
    redis_prefix: str = "",
    clickhouse_url: str | None = None,
    database: str = "",
    port: int = 0,
    **dm: Any,
) -> dict[str, Any]:
    """livedata.yml sections for Redis and ClickHouse (each only when given)."""
    live: dict[str, Any] = {"datamanager": {"http": {"port": port}, "active_lease_s": 2.0, **dm}}
    if redis_url:
        live["redis"] = {"url": redis_url}
        live["datamanager"]["redis_key_prefix"] = redis_prefix
    if clickhouse_url:
        live["clickhouse"] = {"url": clickhouse_url, "database": database, "flush_interval_ms": 200}
    return live


class Producer:
    """One producer for the whole test (sends are timed from just before they go out)."""

    def __init__(self, bootstrap: str) -> None:
        self._p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)

    async def __aenter__(self) -> Producer:
        await self._p.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._p.stop()

    async def send(self, topic: str, message: Message | bytes, key: str) -> None:
        value = message if isinstance(message, bytes) else encode(message)
        await self._p.send_and_wait(topic, value, key=key.encode())

    async def send_many(self, topic: str, items: list[tuple[str, Message]]) -> None:
        futures = [await self._p.send(topic, encode(m), key=k.encode()) for k, m in items]
        await asyncio.gather(*futures)


def interest(
    pid: str, kind: UpdateType, symbols: list[str], lease_s: float | None = None, at: datetime | None = None
) -> InterestUpdate:
    return InterestUpdate(
        portfolio_id=pid,
        node_id="n",
        symbols=tuple(symbols),
        update_type=kind,
        timestamp=at or utcnow(),
        lease_s=lease_s,
    )


def command(cid: str, name: str = "bar_snapshot", **params: Any) -> ControlCommand:
    return ControlCommand(command=name, correlation_id=cid, timestamp=utcnow(), source="test", params=params)


def symbols_for(i: int, n: int = 1000) -> list[str]:
    """``n`` distinct symbols of subscriber ``i`` across CN, HK and US."""
    start = i * n
    out = []
    for j in range(n):
        k = start + j
        if j % 5 < 3:
            out.append(f"{600000 + k:06d}.SH" if j % 2 == 0 else f"{k + 1:06d}.SZ")
        elif j % 5 == 3:
            out.append(f"{k + 1:05d}.HK")
        else:
            out.append(f"U{k:05d}")
    return out


def latest_subs(reader: TopicReader) -> dict[str, Subscription]:
    out: dict[str, Subscription] = {}
    for m in reader.of_type(Subscription):
        out[m.market] = m
    return out


async def snapshot(
    producer: Producer, topics: Topics, md: TopicReader, events: TopicReader, cid: str, **params: Any
) -> tuple[CommandResult, list[tuple[Any, ...]]]:
    """Ask for a bar_snapshot; its result and the bars it published (sorted tuples)."""
    mark = len(md.messages)
    await producer.send(topics.control_commands, command(cid, **params), key="datamanager")
    result = await events.wait_for(CommandResult, lambda r: r.correlation_id == cid, timeout_s=30)
    assert result.ok, result.detail
    want = result.detail["bars"]

    def bars() -> list[Bar] | None:
        got = [m for m in md.messages[mark:] if isinstance(m, Bar)]
        return got if len(got) >= want else None

    got = await eventually(bars, timeout_s=30, what=f"{want} bars of {cid}")
    rows = sorted(
        (b.symbol, b.period, b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.amount, b.change, b.source)
        for b in got
    )
    return result, rows


class DmProcess:
    """``python -m services.datamanager`` as a child process (SIGKILL-able)."""

    def __init__(self, config_dir: Path, port: int, log: Path) -> None:
        self.config_dir = config_dir
        self.port = port
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> DmProcess:
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - the child's log file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.datamanager",
                "--config-dir",
                str(self.config_dir),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env_without_overrides(),
                cwd=ROOT,
            )
        return self

    async def readyz(self) -> dict[str, Any] | None:
        if self.proc is None or self.proc.returncode is not None:
            raise AssertionError(f"datamanager exited: {self.log.read_text()[-2000:]}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                s.get(f"http://127.0.0.1:{self.port}/readyz") as r,
            ):
                body: dict[str, Any] = json.loads(await r.text())
                return body
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def role(self) -> str | None:
        body = await self.readyz()
        if body is None:
            return None
        if body.get("role") == "active" and not body.get("ready"):
            return "activating"
        return str(body.get("role"))

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 15)


@contextlib.asynccontextmanager
async def processes(*procs: DmProcess) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                await p.stop()
            await p.kill()


async def test_sigkill_restart_keeps_subscriptions_and_bar_snapshot(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: ConfigMaker,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    clickhouse_url: str,
    clickhouse_database: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    config = make_config(topics, livedata=durable(redis_url, redis_prefix, clickhouse_url, clickhouse_database, port))
    first = DmProcess(config.directory, port, tmp_path / "dm-1.log")
    second = DmProcess(config.directory, port, tmp_path / "dm-2.log")
    async with (
        processes(first, second),
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
        TopicReader(kafka_bootstrap, topics.market_data) as md,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        Producer(kafka_bootstrap) as producer,
    ):
        await first.start()
        await eventually(lambda: _role_is(first, "active"), timeout_s=30, what="first datamanager active")
        wanted = [symbols_for(i) for i in range(3)]
        for i, symbols in enumerate(wanted):
            await producer.send(topics.interest_updates, interest(f"p{i}", "replace", symbols), key=f"p{i}/n")
        union = {s for group in wanted for s in group}
        by_market = {m.value: tuple(sorted(s for s in union if market_of(s) == m)) for m in Market}

        def all_subscribed() -> bool:
            got = latest_subs(subs)
            return all(m in got and got[m].symbols == by_market[m] for m in by_market)

        await eventually(all_subscribed, timeout_s=20, what="3 x 1,000 symbols subscribed")
        before = latest_subs(subs)
        now = utcnow()
        ticks: list[tuple[str, Message]] = []
        for k, s in enumerate(sorted(union)):
            for step in range(2):
                price = 10.0 + k % 97 / 10 + step * 0.05
                at = now + timedelta(milliseconds=step * 10)
                if market_of(s) is Market.US:
                    t = PriceUpdate(symbol=s, price=price, timestamp=at, source="alpaca", last_size=10 + step)
                else:
                    vol = 1000.0 * (k + 1) + 100 * step
                    t = PriceUpdate(symbol=s, price=price, timestamp=at, source="em", volume=vol, amount=vol * price)
                ticks.append((s, t))
        await producer.send_many(topics.market_data, ticks)

        async def holds_all() -> bool:
            cid = f"status-{time.monotonic_ns()}"
            await producer.send(topics.control_commands, command(cid, "status"), key="datamanager")
            r = await events.wait_for(CommandResult, lambda r: r.correlation_id == cid, timeout_s=10)
            return int(r.detail["bar_symbols"]) >= len(union)

        await eventually(holds_all, timeout_s=30, interval_s=0.2, what="bars for all 3,000 symbols")
        day1, bars1 = await snapshot(producer, topics, md, events, "snap-1d-before")
        minute1, mbars1 = await snapshot(producer, topics, md, events, "snap-1m-before", period="1m")
        assert day1.detail["bars"] == len(union) and day1.detail["missing"] == 0
        assert minute1.detail["bars"] >= len(union)

        await first.kill()  # SIGKILL: no drain, no commit, no lease release
        count_before = len(subs.of_type(Subscription))
        await second.start()
        await eventually(lambda: _role_is(second, "active"), timeout_s=30, what="restarted datamanager active")
        await eventually(lambda: len(subs.of_type(Subscription)) >= count_before + 3, what="subscriptions republished")
        after = latest_subs(subs)
        for m in by_market:
            assert after[m].symbols == before[m].symbols
            assert after[m].revision > before[m].revision  # revisions only move forward
        day2, bars2 = await snapshot(producer, topics, md, events, "snap-1d-after")
        _, mbars2 = await snapshot(producer, topics, md, events, "snap-1m-after", period="1m")
        assert day2.detail["from_store"] == len(union)
        assert bars2 == bars1  # volumes included
        assert mbars2 == mbars1
        stored = await redis_client.hlen(f"{redis_prefix}:subs")
        assert stored == 3


async def _role_is(proc: DmProcess, value: str) -> bool:
    return await proc.role() == value


async def test_standby_takes_over_within_the_lease_and_answers_each_command_once(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: ConfigMaker,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    dms = [
        DmProcess(
            make_config(topics, livedata=durable(redis_url, redis_prefix, port=p)).directory, p, tmp_path / f"dm{i}.log"
        )
        for i, p in enumerate(ports)
    ]
    a, b = dms
    async with (
        processes(*dms),
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        Producer(kafka_bootstrap) as producer,
    ):
        await a.start()
        await eventually(lambda: _role_is(a, "active"), timeout_s=30, what="first instance active")
        await b.start()
        await eventually(lambda: _role_is(b, "standby"), timeout_s=30, what="second instance standby")
        await producer.send(topics.interest_updates, interest("p1", "replace", ["AAPL", "600000.SH"]), key="p1/n")
        await eventually(
            lambda: latest_subs(subs).get("US", None) is not None and latest_subs(subs)["US"].symbols == ("AAPL",),
            what="subscribed",
        )
        await producer.send(topics.control_commands, command("c1", "status"), key="datamanager")
        await events.wait_for(CommandResult, lambda r: r.correlation_id == "c1", timeout_s=15)
        published = len(subs.of_type(Subscription))

        await a.kill()
        killed = time.monotonic()
        await producer.send(topics.control_commands, command("c2", "status"), key="datamanager")  # during takeover
        await eventually(lambda: _role_is(b, "active"), timeout_s=15, interval_s=0.05, what="standby took over")
        takeover_s = time.monotonic() - killed
        assert takeover_s <= 5.0, takeover_s
        await events.wait_for(CommandResult, lambda r: r.correlation_id == "c2", timeout_s=15)
        await producer.send(topics.control_commands, command("c3", "status"), key="datamanager")
        answer = await events.wait_for(CommandResult, lambda r: r.correlation_id == "c3", timeout_s=15)
        await eventually(lambda: len(subs.of_type(Subscription)) >= published + 3, what="subscriptions republished")
        assert latest_subs(subs)["US"].symbols == ("AAPL",) and latest_subs(subs)["CN"].symbols == ("600000.SH",)
        assert answer.detail["role"] == "active"
        # the status events say which instance is active
        actives = [e for e in events.of_type(Status) if e.component == "datamanager" and e.state == "active"]
        assert len({e.detail["instance"] for e in actives}) == 2
        assert any(e.state == "standby" for e in events.of_type(Status))
        ids = [r.correlation_id for r in events.of_type(CommandResult)]
        assert sorted(ids) == ["c1", "c2", "c3"], ids  # each answered once
        print(f"takeover after SIGKILL: {takeover_s:.2f} s")


async def test_leases_expire_far_future_stamps_are_refused_and_interest_resumes_without_replay(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: ConfigMaker,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    config = make_config(topics, livedata=durable(redis_url, redis_prefix, max_clock_skew_s=60))
    async with (
        TopicReader(kafka_bootstrap, topics.subscriptions) as subs,
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        Producer(kafka_bootstrap) as producer,
    ):
        dm = DataManager(config)
        async with running(dm):
            await eventually(lambda: dm.interest.loaded.is_set(), what="interest loaded")
            await producer.send(topics.interest_updates, interest("p1", "replace", ["AAPL"], lease_s=1.0), key="p1/n")
            await producer.send(topics.interest_updates, interest("p2", "replace", ["MSFT"]), key="p2/n")
            year_9999 = datetime(9999, 1, 1, tzinfo=UTC)
            await producer.send(
                topics.interest_updates, interest("p3", "replace", ["IBM"], lease_s=1.0, at=year_9999), key="p3/n"
            )

            def us() -> tuple[str, ...] | None:
                sub = latest_subs(subs).get("US")
                return sub.symbols if sub else None

            await eventually(lambda: us() == ("AAPL", "MSFT"), what="both subscribed")
            await eventually(lambda: us() == ("MSFT",), timeout_s=5, what="p1's lease expired")
            letter = await dlq.wait_for(DeadLetter, timeout_s=10)
            assert "ahead of the receive clock" in letter.reason
            assert "IBM" not in dm.interest.registry.all_symbols()
            stored = {k.decode() for k in await redis_client.hkeys(f"{redis_prefix}:subs")}
            assert stored == {"p2\x1fn"}
        consumed = dm.metrics.messages_in.labels(topics.interest_updates)._value.get()
        assert consumed == 3
        dm2 = DataManager(config)
        async with running(dm2):
            await eventually(lambda: dm2.interest.loaded.is_set(), what="interest resumed")
            assert dm2.interest.registry.subscriber_symbols("p2", "n") == {"MSFT"}
            assert dm2.interest.registry.subscriber_symbols("p1", "n") == frozenset()
            # resumed from Redis at the stored offsets: nothing of the topic was read again
            assert dm2.metrics.messages_in.labels(topics.interest_updates)._value.get() == 0


class _Arrivals(TopicFollower):
    """Snapshot PriceUpdates on market data with the time each arrived here."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(topic, {"bootstrap_servers": bootstrap, "enable_auto_commit": False, "fetch_max_wait_ms": 5})
        self.snapshots: list[tuple[float, PriceUpdate]] = []

    def on_batch(self, records: list[ConsumerRecord[bytes, bytes]], received_at: float) -> None:
        for r in records:
            if r.value and b'"snapshot":true' in r.value:
                msg = decode(r.value)
                if isinstance(msg, PriceUpdate):
                    self.snapshots.append((received_at, msg))


async def test_snapshot_on_subscribe_within_100_ms_and_from_redis_after_a_restart(
    kafka_bootstrap: str, topics: Topics, make_config: ConfigMaker, redis_url: str, redis_prefix: str
) -> None:
    config = make_config(topics, livedata=durable(redis_url, redis_prefix))
    async with _Arrivals(kafka_bootstrap, topics.market_data) as arrivals, Producer(kafka_bootstrap) as producer:
        dm = DataManager(config)
        async with running(dm):
            await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
            await producer.send(topics.interest_updates, interest("p1", "replace", ["AAPL"]), key="p1/n")
            await eventually(lambda: "AAPL" in dm.interest.registry.all_symbols(), what="p1 subscribed")
            tick = PriceUpdate(symbol="AAPL", price=187.25, timestamp=utcnow(), source="alpaca", last_size=3)
            await producer.send(topics.market_data, tick, key="AAPL")
            await eventually(lambda: dm.intake.bars.ticks == 1, what="tick aggregated")
            sent = time.time()
            await producer.send(topics.interest_updates, interest("p2", "add", ["AAPL"]), key="p2/n")
            got = await eventually(lambda: arrivals.snapshots, timeout_s=5, what="snapshot price")
            received, snap = got[0]
            assert (snap.symbol, snap.price, snap.snapshot, snap.timestamp) == ("AAPL", 187.25, True, tick.timestamp)
            delay_s = received - sent
            print(f"snapshot-on-subscribe: {delay_s * 1000:.1f} ms")
            assert delay_s <= 0.1, delay_s
            await eventually(
                lambda: dm.intake.bars.rejected.get("snapshot_replay") == 1, what="own replay not aggregated"
            )
            assert dm.intake.bars.ticks == 1
        dm2 = DataManager(config)  # nothing in memory: the latest price comes from Redis
        async with running(dm2):
            await eventually(lambda: dm2.readiness()[0], timeout_s=15, what="restarted datamanager ready")
            await producer.send(topics.interest_updates, interest("p3", "add", ["AAPL"]), key="p3/n")
            await eventually(lambda: len(arrivals.snapshots) >= 2, timeout_s=5, what="snapshot from Redis")
            assert arrivals.snapshots[1][1].price == 187.25


async def test_a_tick_of_no_market_is_dead_lettered_and_bad_stamps_do_not_freeze_a_symbol(
    kafka_bootstrap: str, topics: Topics, make_config: ConfigMaker
) -> None:
    dm = DataManager(make_config(topics, livedata=durable()))
    async with (
        running(dm),
        TopicReader(kafka_bootstrap, topics.deadletter) as dlq,
        Producer(kafka_bootstrap) as producer,
    ):
        await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
        now = utcnow()
        bad = [
            PriceUpdate(symbol="foo.bar", price=1.0, timestamp=now, source="t", last_size=1),
            PriceUpdate(symbol="AAPL", price=1e308, timestamp=now, source="t", last_size=1),
            PriceUpdate(
                symbol="AAPL", price=100.0, timestamp=datetime(2100, 1, 1, tzinfo=UTC), source="t", last_size=1
            ),
            PriceUpdate(symbol="AAPL", price=100.0, timestamp=now, source="t", last_size=1),
            PriceUpdate(symbol="AAPL", price=250.0, timestamp=now + timedelta(seconds=1), source="t", last_size=2),
        ]
        for t in bad:
            await producer.send(topics.market_data, t, key=t.symbol)
        letter = await dlq.wait_for(DeadLetter, timeout_s=10)
        assert "belongs to no market" in letter.reason and letter.source_topic == topics.market_data
        await eventually(lambda: dm.intake.bars.ticks == 2, what="the good ticks aggregated")
        day = dm.intake.bars.daily_bar("AAPL")
        assert day is not None and (day.open, day.high, day.close, day.volume) == (100.0, 250.0, 250.0, 3)
        assert dm.intake.bars.rejected == {"bad_price": 1, "future_timestamp": 1}


async def test_clickhouse_down_for_10_s_loses_no_bar(
    kafka_bootstrap: str, topics: Topics, make_config: ConfigMaker, tmp_path: Path
) -> None:
    server = ClickHouseServer(data_dir=tmp_path / "ch")
    await asyncio.to_thread(server.start)
    try:
        config = make_config(topics, livedata=durable(clickhouse_url=server.url, database="outage"))
        dm = DataManager(config)
        assert dm.intake.store is not None
        store = dm.intake.store
        async with running(dm, timeout_s=20), Producer(kafka_bootstrap) as producer:
            await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
            await producer.send(topics.interest_updates, interest("p1", "replace", ["AAPL"]), key="p1/n")
            base = utcnow()
            sent = 0

            async def tick() -> None:
                nonlocal sent
                t = PriceUpdate(
                    symbol="AAPL",
                    price=100.0 + sent / 100,
                    timestamp=base + timedelta(milliseconds=10 * sent),
                    source="t",
                    last_size=1,
                )
                await producer.send(topics.market_data, t, key="AAPL")
                sent += 1
                await eventually(lambda: dm.intake.bars.ticks == sent, what=f"tick {sent} aggregated")

            await tick()
            await eventually(lambda: store.stored > 0 and not store.pending, what="first bars stored")
            await asyncio.to_thread(server.stop)
            down = time.monotonic()
            while time.monotonic() - down < 10.0:  # ten seconds of ticks while ClickHouse is away
                await tick()
            assert store.failures > 0 and store.pending, "the outage was noticed and bars are held"
            await asyncio.to_thread(server.start)
            await eventually(lambda: not store.pending, timeout_s=15, what="held bars stored after the outage")
            rows = await store.read(trading_day(Market.US, base), "1d", ["AAPL"])
            assert rows and rows[0].volume == sent  # every tick's trade is in the stored daily bar
    finally:
        await asyncio.to_thread(server.close)
