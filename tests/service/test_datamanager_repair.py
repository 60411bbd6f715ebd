"""Gap repair in the datamanager, on the real broker and real ClickHouse: HistoryBars merged,
stored (an older table gains the columns), published as revised bars, kept over a restart,
and the ``repair_bars`` command answered per symbol."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from asynch import Connection

from services.datamanager.bars import BarRow
from services.datamanager.barstore import ClickHouseBars

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
