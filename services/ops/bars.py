"""``livedata bars SYMBOL [--date D] [--period 1m|1d] [--json|--csv]``: stored bars.

Where they come from (``--from``):
- ``store``: ClickHouse (``clickhouse.url``), through the datamanager's own reader;
- ``datamanager``: a ``bar_snapshot`` command for the symbol's market and day, whose bars
  the running datamanager publishes on market data (from ClickHouse plus its memory, so
  also what is not flushed yet). It answers for symbols some subscriber holds: the demo
  subscribes its symbols, and without ClickHouse (the demo's default) this is the only
  place bars are kept;
- ``auto`` (default): ``store`` when ``clickhouse.url`` is set, else ``datamanager``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Literal

import msgspec

from services.ops.common import NOT_READY, OK, USAGE, Unreachable, config_for, err, start_consumer, start_publisher
from shared.config import AppConfig
from shared.dto import Bar, CommandResult, ControlCommand, DecodeError, decode, utcnow
from shared.signing import sign, signer_from_config
from shared.topics import Topics

Source = Literal["auto", "store", "datamanager"]
Output = Literal["table", "json", "csv"]


async def from_store(config: AppConfig, symbol: str, day: date, period: str) -> list[Bar]:
    from services.datamanager.bars import row_bar
    from services.datamanager.barstore import ClickHouseBars

    ch = config.livedata.clickhouse
    assert ch.url is not None
    store = ClickHouseBars(ch.url.get_secret_value(), ch.database, ch.connect_timeout_s)
    try:
        rows = await store.read(day, period, [symbol])
    except Exception as e:  # asynch raises its own errors, OSError or timeouts: all "unreachable"
        raise Unreachable(
            f"ClickHouse ({ch.database}) unreachable or refused the read: {type(e).__name__}: {e}"
        ) from None
    finally:
        await store.stop()
    return [row_bar(r) for r in rows]


async def from_datamanager(config: AppConfig, symbol: str, day: date, period: str, wait_s: float) -> list[Bar] | None:
    """The bars a bar_snapshot for the symbol's market brings; None if no result came."""
    from shared.kafka import assign_all
    from shared.symbols import market_of

    topics = Topics(config.livedata.topics.prefix)
    consumer = await start_consumer(config, "livedata-bars")
    try:
        md = await assign_all(consumer, topics.market_data)
        ev = await assign_all(consumer, topics.system_events)
        consumer.assign(md + ev)
        await consumer.seek_to_end(*md, *ev)
        for tp in md + ev:
            await consumer.position(tp)  # pinned before the command goes out
        cmd = ControlCommand(
            command="bar_snapshot",
            params={"market": market_of(symbol).value, "date": day.isoformat(), "period": period},
            source="livedata-cli",
            correlation_id=f"cli-bars:{uuid.uuid4().hex}",
            timestamp=utcnow(),
        )
        pub = await start_publisher(config, "livedata-cli")
        try:
            await pub.publish(topics.control_commands, sign(signer_from_config(config), cmd), key="datamanager")
        finally:
            await pub.stop()
        found: dict[float, Bar] = {}
        answered: dict[object, int] | None = None  # market-data end offsets seen after the result
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for recs in batches.values():
                for rec in recs:
                    if rec.topic == topics.market_data and rec.key != symbol.encode():
                        continue
                    try:
                        msg = decode(rec.value or b"")
                    except DecodeError:
                        continue
                    if isinstance(msg, Bar) and msg.symbol == symbol and msg.period == period:
                        if msg.trading_day in (None, day.isoformat()):
                            found[msg.timestamp.timestamp()] = msg
                    elif isinstance(msg, CommandResult) and msg.correlation_id == cmd.correlation_id:
                        if not msg.ok:
                            err(f"datamanager: bar_snapshot failed: {msg.detail}")
                            return []
                        answered = {}
            if answered is not None:
                # the bars were published before the result: read market data up to where it
                # ended when the result came, then stop
                for tp in md:
                    high = consumer.highwater(tp)
                    if high is not None:
                        answered.setdefault(tp, high)
                positions = [await consumer.position(tp) for tp in md]
                if all(pos >= answered.get(tp, 0) for tp, pos in zip(md, positions, strict=True)):
                    return [found[k] for k in sorted(found)]
        return None if answered is None else [found[k] for k in sorted(found)]
    finally:
        await consumer.stop()


async def run_bars(
    config_dir: Path | None, symbol: str, day_s: str | None, period: str, output: Output, source: Source, wait_s: float
) -> int:
    from shared.sessions import trading_day
    from shared.symbols import SymbolError, market_of, normalize

    try:
        sym = normalize(symbol)
    except SymbolError as e:
        err(str(e))
        return USAGE
    if period not in ("1m", "1d"):
        err(f"--period: {period!r} is not 1m or 1d")
        return USAGE
    try:
        day = date.fromisoformat(day_s) if day_s else trading_day(market_of(sym), utcnow())
    except ValueError:
        err(f"--date: {day_s!r} is not a date (YYYY-MM-DD)")
        return USAGE
    config = config_for(config_dir)
    use = source if source != "auto" else ("store" if config.livedata.clickhouse.url else "datamanager")
    if use == "store":
        if config.livedata.clickhouse.url is None:
            err(f"{config.directory}/livedata.yml: clickhouse.url is not set (use --from datamanager)")
            return USAGE
        bars = await from_store(config, sym, day, period)
        where = "ClickHouse"
    else:
        got = await from_datamanager(config, sym, day, period, wait_s)
        if got is None:
            err(f"no answer to bar_snapshot within {wait_s:g}s: is the datamanager running?")
            return NOT_READY
        bars, where = got, "the datamanager (bar_snapshot)"
    write(bars, output)
    if not bars:
        hint = "" if use == "store" else " (the datamanager answers for subscribed symbols only)"
        err(f"no {period} bars of {sym} on {day} in {where}{hint}")
        return NOT_READY
    if output == "table":
        print(f"({len(bars)} bars from {where})", file=sys.stderr)
    return OK


FIELDS = ("symbol", "period", "timestamp", "trading_day", "open", "high", "low", "close", "volume", "amount", "source")


def write(bars: list[Bar], output: Output) -> None:
    if output == "json":
        for b in bars:
            print(json.dumps(msgspec.to_builtins(b), separators=(",", ":")))
        return
    if output == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(FIELDS)
        for b in bars:
            doc = msgspec.to_builtins(b)
            w.writerow([doc.get(f) for f in FIELDS])
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(header_style="bold")
    for name in ("symbol", "period", "start (UTC)", "day", "open", "high", "low", "close", "volume", "amount"):
        t.add_column(name, justify="left" if name in ("symbol", "period", "start (UTC)", "day") else "right")
    for b in bars:
        t.add_row(
            b.symbol,
            b.period,
            b.timestamp.strftime("%Y-%m-%d %H:%M"),
            b.trading_day or "-",
            f"{b.open:.2f}",
            f"{b.high:.2f}",
            f"{b.low:.2f}",
            f"{b.close:.2f}",
            f"{b.volume:,.0f}",
            f"{b.amount:,.0f}",
        )
    Console(width=max(120, Console().width)).print(t)
