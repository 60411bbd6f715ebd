"""Bars in ClickHouse through asynch: one versioned row per (symbol, period, start).

Schema kept to what ClickHouse 18.16 and current releases both accept: times as epoch
milliseconds (Int64), the trading day as Date, no DateTime64/LowCardinality/Map/CODEC/TTL.
``ReplacingMergeTree(version)`` ordered by (symbol, period, start) keeps the newest
version of a bar once parts merge; reads use ``FINAL`` so a replay or a late-tick
revision is never seen twice before that.

Columns newer than the first schema (``quality``, ``revision``: a repaired or incomplete
minute and its version) are added to an existing table on connect.

Writes go through ``pending`` (the newest version per bar, bounded by the caller): a
flush inserts everything pending in one batch; on any error the connection is dropped
(asynch 0.4 cannot be trusted after one: "expected Pong", stale connections) and the
rows stay pending for the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import date
from typing import Any

from asynch import Connection

from services.datamanager.bars import BarRow
from services.datamanager.repair import DAY_MS
from shared.logs import kv
from shared.store_urls import CLICKHOUSE_SCHEMES, StoreURLError, check_url

log = logging.getLogger("datamanager.clickhouse")

COLUMNS = (
    "symbol",
    "period",
    "start",
    "trading_day",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "amount",
    "prev_close",
    "source",
    "last_tick_ms",
    "tick_partition",
    "tick_offset",
    "cum_volume",
    "cum_amount",
    "quality",
    "revision",
)

ADDED_COLUMNS = (("quality", "String DEFAULT ''"), ("revision", "UInt32 DEFAULT 0"))
"""Columns newer than the first schema: added to an existing table (``ALTER TABLE ... ADD
COLUMN`` after a look at system.columns: 18.16 has no ``ADD COLUMN IF NOT EXISTS``)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}.bars (
    symbol String,
    period String,
    start Int64,
    trading_day Date,
    open Float64,
    high Float64,
    low Float64,
    close Float64,
    volume Float64,
    amount Float64,
    prev_close Nullable(Float64),
    source String,
    last_tick_ms Int64,
    tick_partition Int32,
    tick_offset Int64,
    cum_volume Nullable(Float64),
    cum_amount Nullable(Float64),
    quality String DEFAULT '',
    revision UInt32 DEFAULT 0,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(trading_day)
ORDER BY (symbol, period, start)
"""

BarKey = tuple[str, str, int]


class ClickHouseBars:
    """The bars table: batched upserts with retry, reads with FINAL."""

    def __init__(self, url: str, database: str, timeout_s: float = 2.0) -> None:
        check_url("clickhouse.url", url, CLICKHOUSE_SCHEMES)  # asynch's DSNError would repeat it whole
        self._url = url
        self.database = database
        self._timeout_s = timeout_s
        self._conn: Connection | None = None
        self._schema_ready = False
        self._version = 0
        self.pending: dict[BarKey, BarRow] = {}
        self.stored = 0  # rows inserted
        self.failures = 0  # failed operations (each dropped its connection)
        self.healthy = False
        self._lock = asyncio.Lock()  # one query at a time per connection

    def _next_version(self) -> int:
        v = max(self._version + 1, time.time_ns() // 1000)
        self._version = v
        return v

    async def _connection(self) -> Connection:
        if self._conn is None:
            try:
                conn = Connection(
                    dsn=self._url,
                    connect_timeout=self._timeout_s,
                    send_receive_timeout=self._timeout_s,
                    sync_request_timeout=self._timeout_s,
                )
            except Exception as e:  # its message repeats the DSN, password included
                raise StoreURLError(f"clickhouse.url: asynch refused it ({type(e).__name__})") from None
            await asyncio.wait_for(conn.connect(), self._timeout_s)
            self._conn = conn
        if not self._schema_ready:
            await self._run(self._conn, f"CREATE DATABASE IF NOT EXISTS {self.database}")
            await self._run(self._conn, SCHEMA.format(db=self.database))
            await self._add_columns(self._conn)
            self._schema_ready = True
        return self._conn

    async def _add_columns(self, conn: Connection) -> None:
        """Bring a table made by an older release up to ``COLUMNS``."""
        have = await self._run(
            conn,
            "SELECT name FROM system.columns WHERE database = %(db)s AND table = 'bars'",
            {"db": self.database},
        )
        names = {r[0] for r in have}
        for name, kind in ADDED_COLUMNS:
            if name not in names:
                await self._run(conn, f"ALTER TABLE {self.database}.bars ADD COLUMN {name} {kind}")
                log.info("clickhouse column added", extra=kv(table=f"{self.database}.bars", column=name))

    async def _run(self, conn: Connection, query: str, args: Any = None) -> list[Any]:
        async with conn.cursor() as cur:
            await asyncio.wait_for(cur.execute(query, args), self._timeout_s * 5)
            if query.lstrip().upper().startswith("SELECT"):
                rows: list[Any] = await cur.fetchall()
                return rows
            return []

    async def _discard(self, error: BaseException) -> None:
        self.failures += 1
        was_healthy, self.healthy = self.healthy, False
        conn, self._conn = self._conn, None
        # one warning when it goes away, then one per 50 failures (retries run every flush)
        level = logging.WARNING if was_healthy or self.failures % 50 == 1 else logging.DEBUG
        log.log(level, "clickhouse operation failed; connection dropped", extra=kv(error=repr(error)[:300]))
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception as e:  # the connection is broken anyway
                log.debug("closing a broken connection failed", extra=kv(error=repr(e)))

    async def execute(self, query: str, args: Any = None) -> list[Any]:
        """Run one query; any error drops the connection and is raised."""
        async with self._lock:
            try:
                conn = await self._connection()
                rows = await self._run(conn, query, args)
            except asyncio.CancelledError:
                await self._discard(asyncio.CancelledError())
                raise
            except Exception as e:
                await self._discard(e)
                raise
            if not self.healthy:
                log.info("clickhouse answers", extra=kv(pending=len(self.pending), failures=self.failures))
            self.healthy = True
            return rows

    async def start(self) -> bool:
        """Connect and create the schema; False (logged) if ClickHouse is away for now."""
        try:
            await self.execute("SELECT 1")
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception as e:
                log.debug("closing clickhouse connection failed", extra=kv(error=repr(e)))

    def add(self, rows: Iterable[BarRow]) -> None:
        pending = self.pending
        for r in rows:
            pending[(r.symbol, r.period, r.start_ms)] = r

    async def flush(self) -> bool:
        """Insert everything pending in one batch; True if nothing is left pending."""
        if not self.pending:
            return True
        batch = self.pending
        self.pending = {}
        version = self._next_version()
        values = [(*r, version) for r in batch.values()]
        try:
            await self.execute(f"INSERT INTO {self.database}.bars ({', '.join(COLUMNS)}, version) VALUES", values)
        except Exception:
            batch.update(self.pending)  # rows added meanwhile are newer
            self.pending = batch
            return False
        self.stored += len(values)
        return not self.pending

    async def read(self, day: date, period: str, symbols: Iterable[str] | None = None) -> list[BarRow]:
        """Stored bars of ``day`` (newest version of each), optionally for ``symbols`` only."""
        where = "trading_day = %(day)s AND period = %(period)s"
        args: dict[str, Any] = {"day": day, "period": period}
        names = tuple(symbols) if symbols is not None else None
        if names is not None:
            if not names:
                return []
            where += " AND symbol IN %(symbols)s"
            args["symbols"] = names
        rows = await self.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {self.database}.bars FINAL WHERE {where} ORDER BY symbol, start", args
        )
        return [BarRow(*r) for r in rows]

    async def read_window(self, symbols: Iterable[str], start_ms: int, end_ms: int) -> list[BarRow]:
        """Stored minute bars of ``symbols`` starting in [start_ms, end_ms), and their daily
        bars of the days those minutes fall on (a repair revises both)."""
        names = tuple(sorted(set(symbols)))
        if not names:
            return []
        args: dict[str, Any] = {"symbols": names, "a": start_ms, "b": end_ms, "d": start_ms - DAY_MS}
        table = f"{self.database}.bars FINAL"
        cols = ", ".join(COLUMNS)
        minutes = await self.execute(
            f"SELECT {cols} FROM {table} WHERE period = '1m' AND symbol IN %(symbols)s"
            " AND start >= %(a)s AND start < %(b)s ORDER BY symbol, start",
            args,
        )
        days = await self.execute(
            f"SELECT {cols} FROM {table} WHERE period = '1d' AND symbol IN %(symbols)s"
            " AND start >= %(d)s AND start < %(b)s ORDER BY symbol, start",
            args,
        )
        return [BarRow(*r) for r in minutes] + [BarRow(*r) for r in days]

    async def incomplete_minutes(self, days: Iterable[date]) -> list[tuple[str, int]]:
        """(symbol, start ms) of every stored minute bar of ``days`` marked ``incomplete``."""
        day_list = tuple(sorted(set(days)))
        if not day_list:
            return []
        rows = await self.execute(
            f"SELECT symbol, start FROM {self.database}.bars FINAL WHERE period = '1m'"
            " AND trading_day IN %(days)s AND quality = 'incomplete' ORDER BY symbol, start",
            {"days": day_list},
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    async def resume_rows(self, days: Iterable[date], partitions: Iterable[int] | None = None) -> list[BarRow]:
        """Each symbol's daily bar and newest minute bar of ``days`` (to resume aggregation),
        optionally only of the symbols whose ticks came from ``partitions`` of market data."""
        day_list = tuple(sorted(set(days)))
        if not day_list:
            return []
        cols = ", ".join(COLUMNS)
        table = f"{self.database}.bars"
        args: dict[str, Any] = {"days": day_list}
        only = ""
        if partitions is not None:
            args["parts"] = tuple(sorted(set(partitions)))
            if not args["parts"]:
                return []
            only = " AND tick_partition IN %(parts)s"
        daily = await self.execute(
            f"SELECT {cols} FROM {table} FINAL WHERE period = '1d' AND trading_day IN %(days)s{only}", args
        )
        minutes = await self.execute(
            f"SELECT {cols} FROM {table} FINAL WHERE period = '1m' AND trading_day IN %(days)s{only}"
            f" AND (symbol, start) IN (SELECT symbol, max(start) FROM {table}"
            f" WHERE period = '1m' AND trading_day IN %(days)s{only} GROUP BY symbol)",
            args,
        )
        return [BarRow(*r) for r in daily] + [BarRow(*r) for r in minutes]
