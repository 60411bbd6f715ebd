"""Gap repair in the datamanager, on the real broker and real ClickHouse: HistoryBars merged,
stored (an older table gains the columns), published as revised bars, kept over a restart,
and the ``repair_bars`` command answered per symbol."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from asynch import Connection

from services.datamanager.bars import BarRow
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.service import DataManager
from shared.dto import Bar, CommandResult, ControlCommand, HistoryBars, HistoryState, PriceUpdate, utcnow
from shared.sessions import in_session, trading_day
from shared.symbols import Market
from shared.topics import Topics
from tests.helpers import TopicReader, eventually, running
from tests.service.test_datamanager_durable import ConfigMaker, Producer, command, durable, interest

OLD_SCHEMA = """
CREATE TABLE {db}.bars (
    symbol String, period String, start Int64, trading_day Date,
    open Float64, high Float64, low Float64, close Float64, volume Float64, amount Float64,
    prev_close Nullable(Float64), source String, last_tick_ms Int64, tick_partition Int32,
    tick_offset Int64, cum_volume Nullable(Float64), cum_amount Nullable(Float64), version UInt64
) ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(trading_day) ORDER BY (symbol, period, start)
"""


def _row(symbol: str, at: datetime, close: float, quality: str = "", revision: int = 0, period: str = "1m") -> BarRow:
    return BarRow(
        symbol, period, round(at.timestamp() * 1000), at.date(), close, close, close, close, 1.0, close, None,
        "alpaca", 0, 0, 0, None, None, quality, revision,
    )  # fmt: skip


async def test_an_older_table_gains_quality_and_revision_and_keeps_its_rows(
    clickhouse_url: str, clickhouse_database: str
) -> None:
    db = clickhouse_database
    at = datetime(2024, 3, 4, 14, 31, tzinfo=UTC)
    conn = Connection(dsn=clickhouse_url)
    await conn.connect()
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {db}")
            await cur.execute(OLD_SCHEMA.format(db=db))
            await cur.execute(
                f"INSERT INTO {db}.bars VALUES",
                [("AAPL", "1m", round(at.timestamp() * 1000), date(2024, 3, 4), 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                  None, "alpaca", 0, 0, 0, None, None, 1)],
            )  # fmt: skip
    finally:
        await conn.close()
    store = ClickHouseBars(clickhouse_url, db)
    try:
        assert await store.start()
        old = await store.read(date(2024, 3, 4), "1m")
        assert [(r.close, r.quality, r.revision) for r in old] == [(1.0, "", 0)]
        store.add(
            [
                _row("AAPL", at, 2.0, "repaired", 1),
                _row("AAPL", at + timedelta(minutes=1), 3.0, "incomplete", 2),
                _row("AAPL", at + timedelta(minutes=9), 4.0),
                _row("AAPL", at.replace(hour=5, minute=0), 9.0, period="1d"),
            ]
        )
        assert await store.flush()
        window = await store.read_window(
            ["AAPL", "MSFT"], round(at.timestamp() * 1000), round(at.timestamp() * 1000) + 120_000
        )
        assert [(r.period, r.close, r.quality, r.revision) for r in window] == [
            ("1m", 2.0, "repaired", 1),
            ("1m", 3.0, "incomplete", 2),
            ("1d", 9.0, "", 0),
        ]
        assert await store.incomplete_minutes([date(2024, 3, 4)]) == [("AAPL", round(at.timestamp() * 1000) + 60_000)]
    finally:
        await store.stop()
    again = ClickHouseBars(clickhouse_url, db)  # a second start finds the columns there
    try:
        assert await again.start()
    finally:
        await again.stop()


# -- the datamanager merging, storing, publishing and answering ---------------------------


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _hist(
    state: HistoryState,
    symbol: str,
    start: datetime,
    end: datetime,
    bars: list[tuple[datetime, float, float, float, float, float, float]] | None = None,
    request_id: str | None = None,
) -> HistoryBars:
    rows = tuple((b[0].timestamp() * 1000, *b[1:]) for b in bars or [])
    return HistoryBars(
        symbol=symbol,
        start=start,
        end=end,
        source="alpaca-sip",
        state=state,
        timestamp=utcnow(),
        bars=rows,
        request_id=request_id,
    )


def _shape(rows: list[BarRow]) -> dict[int, tuple[Any, ...]]:
    return {r.start_ms: (r.open, r.high, r.low, r.close, r.volume, r.amount, r.quality, r.revision) for r in rows}


async def test_history_is_merged_stored_published_kept_over_a_restart_and_answered_per_symbol(
    kafka_bootstrap: str, topics: Topics, make_config: ConfigMaker, clickhouse_url: str, clickhouse_database: str
) -> None:
    config = make_config(
        topics, livedata=durable(clickhouse_url=clickhouse_url, database=clickhouse_database, gap_alert_s=1)
    )
    base = _minute(utcnow()) - timedelta(minutes=8)
    m = [base + timedelta(minutes=i) for i in range(6)]
    ms = [round(x.timestamp() * 1000) for x in m]
    day = trading_day(Market.US, base)
    reader = ClickHouseBars(clickhouse_url, clickhouse_database)

    async def stored(symbol: str = "AAPL") -> dict[int, tuple[Any, ...]]:
        return _shape(await reader.read(day, "1m", [symbol]))

    async with (
        TopicReader(kafka_bootstrap, topics.market_data) as md,
        TopicReader(kafka_bootstrap, topics.system_events) as events,
        TopicReader(kafka_bootstrap, topics.control_commands) as commands,
        Producer(kafka_bootstrap) as producer,
    ):
        dm = DataManager(config)
        async with running(dm, timeout_s=20):
            await eventually(lambda: dm.readiness()[0], timeout_s=15, what="datamanager ready")
            await producer.send(topics.interest_updates, interest("p1", "replace", ["AAPL", "MSFT"]), key="p1/n")
            await eventually(lambda: "MSFT" in dm.interest.registry.all_symbols(), what="subscribed")
            ticks = [(m[0], 100.0, 10), (m[0] + timedelta(seconds=30), 101.0, 5), (m[1], 102.0, 1), (m[3], 103.0, 2)]
            for at, price, size in ticks:
                t = PriceUpdate(
                    symbol="AAPL", price=price, timestamp=at + timedelta(seconds=1), source="alpaca", last_size=size
                )
                await producer.send(topics.market_data, t, key="AAPL")
            await eventually(lambda: dm.intake.bars.ticks == 4, what="ticks aggregated")
            first = (100.0, 101.0, 100.0, 101.0, 15.0, 1505.0, "", 0)
            before = await eventually(
                lambda: _when(stored(), lambda s: len(s) == 3 and s[ms[0]] == first),
                timeout_s=10,
                what="3 minutes stored",
            )

            # a hole is known: the minutes of [m0, m2) become incomplete, in ClickHouse and on market data
            mark = len(md.messages)
            await producer.send(topics.market_data, _hist("pending", "AAPL", m[0], m[2]), key="AAPL")
            marked = await eventually(
                lambda: _when(stored(), lambda s: s[ms[0]][6:] == s[ms[1]][6:] == ("incomplete", 1)),
                timeout_s=10,
                what="incomplete minutes stored",
            )
            assert marked[ms[3]] == before[ms[3]]  # outside the window
            published = await eventually(
                lambda: _bars_since(md, mark, 2), timeout_s=10, what="incomplete bars published"
            )
            assert {(b.timestamp, b.quality, b.revision) for b in published} == {
                (m[0], "incomplete", 1),
                (m[1], "incomplete", 1),
            }
            # the sweep asks the gateway for them
            assert await dm.repair_triggers.sweep() == 2
            swept = await eventually(lambda: _asked(commands, "sweep"), timeout_s=10, what="a sweep's repair_bars")
            assert swept[0].params["symbols"] == ["AAPL"] and swept[0].target == "feeder-gateway"
            assert (swept[0].params["from"], swept[0].params["to"]) == (m[0].isoformat(), m[2].isoformat())

            # the provider's minutes: m0, m1 replaced, m2 added; m3 outside the window untouched
            provider = [
                (m[0], 100.0, 101.5, 99.5, 101.0, 40.0, 4040.0),
                (m[1], 102.0, 102.0, 101.0, 101.5, 3.0, 304.0),
                (m[2], 101.5, 101.6, 101.4, 101.6, 2.0, 203.1),
            ]
            mark = len(md.messages)
            await producer.send(topics.market_data, _hist("repaired", "AAPL", m[0], m[3], provider), key="AAPL")
            repaired = await eventually(
                lambda: _when(stored(), lambda s: len(s) == 4 and s[ms[0]][6] == "repaired"),
                timeout_s=10,
                what="repaired rows",
            )
            assert repaired[ms[0]] == (100.0, 101.5, 99.5, 101.0, 40.0, 4040.0, "repaired", 2)
            assert repaired[ms[1]] == (102.0, 102.0, 101.0, 101.5, 3.0, 304.0, "repaired", 2)
            assert repaired[ms[2]] == (101.5, 101.6, 101.4, 101.6, 2.0, 203.1, "repaired", 0)
            assert repaired[ms[3]] == before[ms[3]]
            published = await eventually(lambda: _bars_since(md, mark, 4), timeout_s=10, what="repaired bars published")
            minute_bars = {(b.timestamp, b.quality, b.revision, b.source) for b in published if b.period == "1m"}
            assert minute_bars == {
                (m[0], "repaired", 2, "alpaca-sip"),
                (m[1], "repaired", 2, "alpaca-sip"),
                (m[2], "repaired", 0, "alpaca-sip"),
            }
            daily = [b for b in published if b.period == "1d"]
            assert daily and daily[-1].volume == 18 + 25 + 2 + 2 and daily[-1].revision == 1  # aggregated: follows
            snap = await _snapshot_1m(producer, topics, md, events, "snap-1")
            assert {(b.timestamp, b.quality, b.revision, b.close) for b in snap if b.symbol == "AAPL"} == {
                (m[0], "repaired", 2, 101.0),
                (m[1], "repaired", 2, 101.5),
                (m[2], "repaired", 0, 101.6),
                (m[3], None, 0, 103.0),
            }

            window = {"from": m[4].isoformat(), "to": m[5].isoformat()}
            # repair_bars: answered per symbol once the gateway's HistoryBars for it are stored;
            # a status command meanwhile is answered at once (the wait blocks no other command)
            await producer.send(
                topics.control_commands,
                command("rep-1", "repair_bars", market="US", symbols="AAPL,MSFT", timeout_s=30, **window),
                key="datamanager",
            )
            await producer.send(topics.control_commands, command("st-1", "status"), key="datamanager")
            status = await events.wait_for(CommandResult, lambda r: r.correlation_id == "st-1", timeout_s=10)
            assert not [r for r in events.of_type(CommandResult) if r.correlation_id == "rep-1"], (
                "answered before the history"
            )
            assert status.ok
            await producer.send(
                topics.market_data,
                _hist("repaired", "AAPL", m[4], m[5], [(m[4], 104.0, 104.0, 104.0, 104.0, 1.0, 104.0)], "rep-1"),
                key="AAPL",
            )
            await producer.send(
                topics.market_data, _hist("out_of_reach", "MSFT", m[4], m[5], request_id="rep-1"), key="MSFT"
            )
            answer = await events.wait_for(CommandResult, lambda r: r.correlation_id == "rep-1", timeout_s=30)
            assert answer.ok, answer.detail
            counts = {"source": "alpaca-sip", "replaced": 0, "incomplete": 0, "reason": None}
            assert answer.detail["symbols"] == {
                "AAPL": {"state": "repaired", "added": 1, **counts},
                "MSFT": {"state": "out_of_reach", "added": 0, **counts},
            }
            assert answer.detail["totals"] == {
                "symbols": 2,
                "states": {"repaired": 1, "out_of_reach": 1},
                "replaced": 0,
                "added": 1,
                "incomplete": 0,
            }
            assert answer.detail["complete"] is True
            bad = await _command_result(producer, topics, events, "rep-bad", "repair_bars", market="XX")
            assert not bad.ok and "params.market" in bad.detail["error"]

        # a restart keeps the repaired bars (ClickHouse) and their quality
        restarted = DataManager(config)
        async with running(restarted, timeout_s=20):
            await eventually(lambda: restarted.readiness()[0], timeout_s=15, what="restarted datamanager ready")
            snap = await _snapshot_1m(producer, topics, md, events, "snap-2")
            assert {(b.timestamp, b.quality, b.revision) for b in snap if b.symbol == "AAPL"} == {
                (m[0], "repaired", 2),
                (m[1], "repaired", 2),
                (m[2], "repaired", 0),
                (m[3], None, 0),
                (m[4], "repaired", 0),
            }
            if in_session(Market.US, utcnow()):  # the newest restored tick is minutes old: a repair is asked
                asked = await eventually(
                    lambda: _asked(commands, "resume"), timeout_s=10, what="a repair asked after resuming"
                )
                assert asked[0].target == "feeder-gateway" and asked[0].params["market"] == "US"
                assert datetime.fromisoformat(asked[0].params["from"]) == m[3]  # the newest restored tick's minute
                # a symbol silent in session that ticks again: [its last tick before, its newest after]
                old = PriceUpdate(symbol="MSFT", price=400.0, timestamp=m[0], source="alpaca", last_size=1)
                await producer.send(topics.market_data, old, key="MSFT")
                await eventually(lambda: "MSFT" in restarted.gaps.in_gap, timeout_s=10, what="MSFT in a gap")
                new = PriceUpdate(symbol="MSFT", price=401.0, timestamp=utcnow(), source="alpaca", last_size=1)
                await producer.send(topics.market_data, new, key="MSFT")
                gap = await eventually(lambda: _asked(commands, "gap"), timeout_s=10, what="a repair asked after a gap")
                assert gap[0].params["symbols"] == ["MSFT"] and gap[0].params["from"] == m[0].isoformat()
                assert datetime.fromisoformat(gap[0].params["to"]) >= new.timestamp.replace(microsecond=0)
        await reader.stop()


def _asked(commands: TopicReader, trigger: str) -> list[ControlCommand]:
    return [
        c
        for c in commands.of_type(ControlCommand)
        if c.command == "repair_bars" and c.correlation_id.startswith(f"dm-{trigger}-")
    ]


async def _when(value: Any, ok: Callable[[Any], bool]) -> Any:
    got = await value
    return got if ok(got) else None


def _bars_since(md: TopicReader, mark: int, n: int) -> list[Bar] | None:
    got = [b for b in md.messages[mark:] if isinstance(b, Bar)]
    return got if len(got) >= n else None


async def _command_result(
    producer: Producer, topics: Topics, events: TopicReader, cid: str, name: str, **params: Any
) -> CommandResult:
    await producer.send(topics.control_commands, command(cid, name, **params), key="datamanager")
    result: CommandResult = await events.wait_for(CommandResult, lambda r: r.correlation_id == cid, timeout_s=30)
    return result


async def _snapshot_1m(producer: Producer, topics: Topics, md: TopicReader, events: TopicReader, cid: str) -> list[Bar]:
    mark = len(md.messages)
    result = await _command_result(producer, topics, events, cid, "bar_snapshot", market="US", period="1m")
    assert result.ok, result.detail
    got = await eventually(lambda: _bars_since(md, mark, result.detail["bars"]), timeout_s=15, what=f"bars of {cid}")
    assert isinstance(got, list)
    return got
