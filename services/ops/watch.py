"""``livedata watch SYMBOL...``: a live Rich table of symbols through the client SDK (the
same table as the demo's live view), or one JSON object per update with ``--json``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.datamanager.quality import LIMIT_SLACK, board_limit
from services.ops.common import OK, Unreachable, config_for, describe_broker_error, ensure_reachable
from shared.client import MarketUpdate
from shared.dto import Bar, PriceUpdate, utcnow
from shared.symbols import Market, market_of, normalize


@dataclass
class Row:
    symbol: str
    last: float | None = None
    bid: float | None = None
    ask: float | None = None
    open: float | None = None
    prev_close: float | None = None
    volume: float | None = None
    latency_ms: float | None = None
    ticks: int = 0
    source: str = ""
    delayed: bool = False
    snapshot: bool = False
    bar: Bar | None = None
    updated: float = 0.0

    @property
    def reference(self) -> float | None:
        """What the change is against: the previous close, else the day's open."""
        return self.prev_close or self.open

    @property
    def change(self) -> float | None:
        ref = self.reference
        return self.last - ref if ref and self.last is not None else None

    @property
    def change_pct(self) -> float | None:
        ref, chg = self.reference, self.change
        return chg / ref * 100 if ref and chg is not None else None

    @property
    def flags(self) -> list[str]:
        out = []
        if self.delayed:
            out.append("delayed")
        if self.snapshot:
            out.append("snapshot")
        if self.prev_close and self.last is not None and market_of(self.symbol) is Market.CN:
            limit = board_limit(self.symbol)
            if limit is not None:
                move = self.last / self.prev_close - 1
                if move >= limit - LIMIT_SLACK:
                    out.append("limit-up")
                elif move <= -limit + LIMIT_SLACK:
                    out.append("limit-down")
        if self.updated and time.monotonic() - self.updated > 10:
            out.append("stale")
        return out


@dataclass
class QuoteBoard:
    """The latest state per symbol, rendered as one Rich table (``watch`` and the demo)."""

    symbols: list[str]
    title: str = "livedata watch"
    rows: dict[str, Row] = field(init=False)
    started: float = field(default_factory=time.monotonic)
    first_tick_s: float | None = None
    snapshots: int = 0
    last_snapshot: str | None = None

    def __post_init__(self) -> None:
        self.rows = {s: Row(s) for s in self.symbols}

    def update(self, item: MarketUpdate) -> Row | None:
        row = self.rows.get(item.symbol)
        if row is None:
            return None
        if isinstance(item, PriceUpdate):
            if self.first_tick_s is None:
                self.first_tick_s = time.monotonic() - self.started
            row.last = item.price
            row.bid = item.bid_price if item.bid_price is not None else row.bid
            row.ask = item.ask_price if item.ask_price is not None else row.ask
            row.open = item.open_price if item.open_price is not None else row.open
            row.prev_close = item.prev_close if item.prev_close is not None else row.prev_close
            row.volume = item.volume if item.volume is not None else row.volume
            row.latency_ms = (utcnow() - item.timestamp).total_seconds() * 1000.0
            row.ticks += 1
            row.source = item.source
            row.delayed = item.delayed
            row.snapshot = item.snapshot
            row.updated = time.monotonic()
        elif isinstance(item, Bar) and item.period == "1d":
            row.bar = item
            stamp = utcnow().strftime("%H:%M:%S")
            if stamp != self.last_snapshot:
                self.snapshots += 1
                self.last_snapshot = stamp
        return row

    def table(self) -> Table:
        up = time.monotonic() - self.started
        t = Table(title=f"{self.title}  up {up:.0f}s", title_justify="left", expand=False, header_style="bold")
        for name, justify in (
            ("symbol", "left"),
            ("mkt", "left"),
            ("last", "right"),
            ("bid", "right"),
            ("ask", "right"),
            ("chg", "right"),
            ("chg%", "right"),
            ("volume", "right"),
            ("lat ms", "right"),
            ("ticks", "right"),
            ("source", "left"),
            ("flags", "left"),
        ):
            t.add_column(name, justify=justify)  # type: ignore[arg-type]
        for r in self.rows.values():
            chg, pct = r.change, r.change_pct
            style = "green" if (chg or 0) > 0 else "red" if (chg or 0) < 0 else ""
            t.add_row(
                r.symbol,
                market_of(r.symbol).value,
                _num(r.last),
                _num(r.bid),
                _num(r.ask),
                Text(f"{chg:+.2f}" if chg is not None else "-", style=style),
                Text(f"{pct:+.2f}%" if pct is not None else "-", style=style),
                f"{r.volume:,.0f}" if r.volume is not None else "-",
                f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-",
                str(r.ticks),
                r.source or "-",
                Text(" ".join(r.flags), style="yellow"),
            )
        return t

    def bars_table(self) -> Table | None:
        bars = [r.bar for r in self.rows.values() if r.bar is not None]
        if not bars:
            return None
        t = Table(
            title=f"daily bars (bar_snapshot): {self.snapshots} received, last at {self.last_snapshot or '-'} UTC",
            title_justify="left",
            header_style="bold",
        )
        for name in ("symbol", "day", "open", "high", "low", "close", "volume"):
            t.add_column(name, justify="left" if name in ("symbol", "day") else "right")
        for b in bars:
            t.add_row(
                b.symbol,
                b.trading_day or "-",
                _num(b.open),
                _num(b.high),
                _num(b.low),
                _num(b.close),
                f"{b.volume:,.0f}",
            )
        return t

    def renderable(self, footer: str = "") -> Group:
        parts: list[Any] = [self.table()]
        bars = self.bars_table()
        if bars is not None:
            parts.append(bars)
        if footer:
            parts.append(Text(footer, style="dim"))
        return Group(*parts)

    def plain(self) -> str:
        parts = [f"{r.symbol}={_num(r.last)}({r.ticks})" for r in self.rows.values()]
        return f"[{time.monotonic() - self.started:5.0f}s] " + " ".join(parts) + f" | snapshots={self.snapshots}"


def _num(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def update_json(item: MarketUpdate, row: Row | None) -> str:
    """One line of ``watch --json``: the update's fields plus change, latency and flags."""
    import msgspec

    doc: dict[str, Any] = msgspec.to_builtins(item)
    if row is not None and isinstance(item, PriceUpdate):
        doc["change"] = row.change
        doc["change_pct"] = row.change_pct
        doc["latency_ms"] = round(row.latency_ms, 3) if row.latency_ms is not None else None
        doc["flags"] = row.flags
    return json.dumps(doc, separators=(",", ":"))


async def run_watch(config_dir: Any, symbols: list[str], as_json: bool, duration_s: float | None, count: int) -> int:
    from aiokafka.errors import KafkaError

    from shared.client import LiveDataClient
    from shared.topics import Topics

    config = config_for(config_dir)
    wanted = [normalize(s) for s in symbols]
    await ensure_reachable(config)  # before the SDK client, whose failed start leaves a producer behind
    board = QuoteBoard(wanted)
    client = LiveDataClient(
        config.livedata.kafka.bootstrap_servers,
        portfolio_id="livedata-cli",
        node_id=f"watch-{os.uname().nodename}-{os.getpid()}",
        topics=Topics(config.livedata.topics.prefix),
        lease_s=30.0,
        kafka=config.livedata.kafka.model_copy(update={"create_topics": False}),
    )
    try:
        await client.start()
    except (KafkaError, OSError) as e:
        raise Unreachable(describe_broker_error(config, e)) from None
    seen = 0
    deadline = time.monotonic() + duration_s if duration_s else None
    try:
        await client.subscribe(wanted)
        tty = sys.stdout.isatty() and not as_json
        console = Console()
        live = Live(board.renderable(), console=console, refresh_per_second=4, transient=False) if tty else None

        async def consume() -> None:
            nonlocal seen
            while True:
                for item in await client.next_batch():
                    row = board.update(item)
                    if as_json:
                        sys.stdout.write(update_json(item, row) + "\n")
                    seen += 1
                    if count and seen >= count:
                        return
                if as_json:
                    sys.stdout.flush()
                if live is not None:
                    live.update(board.renderable("Ctrl-C stops"))

        async def plain_lines() -> None:
            while True:
                await asyncio.sleep(5.0)  # a line every 5 s when stdout is not a terminal
                print(board.plain(), flush=True)

        timeout = max(0.0, deadline - time.monotonic()) if deadline else None
        if live is not None:
            live.start()
        try:
            async with asyncio.timeout(timeout):
                if tty or as_json:
                    await consume()
                else:
                    async with asyncio.TaskGroup() as tg:
                        printer = tg.create_task(plain_lines(), name="watch.plain")
                        await consume()
                        printer.cancel()
        except TimeoutError:
            pass
        finally:
            if live is not None:
                live.stop()
        if as_json:
            sys.stdout.flush()
    finally:
        try:
            await client.clear()  # this watcher's interest only; other subscribers keep theirs
        except KafkaError:
            pass
        await client.stop()
    if not as_json and not (sys.stdout.isatty()):
        print(board.plain(), flush=True)
    return OK if seen else 1
