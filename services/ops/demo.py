"""``livedata demo``: embedded broker + the three daemons + a live view through the SDK."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.ops.stack import LocalStack
from shared.client import LiveDataClient
from shared.config import AppConfig
from shared.dto import Bar, PriceUpdate, utcnow
from shared.symbols import market_of
from shared.topics import Topics

DEFAULT_SYMBOLS = ("600000.SH", "000001.SZ", "430047.BJ", "00700.HK", "09988.HK", "AAPL", "MSFT", "NVDA")


@dataclass
class _Row:
    symbol: str
    last: float = 0.0
    open: float | None = None
    volume: float | None = None
    latency_ms: float = 0.0
    ticks: int = 0
    source: str = ""
    bar: Bar | None = None


class LiveView:
    """Keeps the latest state per symbol and renders it as a table or plain lines."""

    def __init__(self, symbols: list[str], tty: bool) -> None:
        self.rows = {s: _Row(s) for s in symbols}
        self.tty = tty
        self.started = time.monotonic()
        self.snapshots = 0
        self.last_snapshot: str | None = None
        self.first_tick_s: float | None = None

    def update(self, item: PriceUpdate | Bar) -> None:
        row = self.rows.get(item.symbol)
        if row is None:
            return
        if isinstance(item, PriceUpdate):
            if self.first_tick_s is None:
                self.first_tick_s = time.monotonic() - self.started
            row.last = item.price
            row.open = item.open_price
            row.volume = item.volume
            row.latency_ms = (utcnow() - item.timestamp).total_seconds() * 1000.0
            row.ticks += 1
            row.source = item.source
        elif item.period == "1d":
            row.bar = item
            stamp = utcnow().strftime("%H:%M:%S")
            if stamp != self.last_snapshot:
                self.snapshots += 1
                self.last_snapshot = stamp

    def render(self) -> str:
        up = time.monotonic() - self.started
        head = f"ginkgo-livedata demo  up {up:5.0f}s  (Ctrl-C stops everything)"
        lines = [
            head,
            "",
            f"{'symbol':<11}{'mkt':<4}{'last':>10}{'chg':>9}{'chg%':>8}{'volume':>14}{'lat ms':>8}{'ticks':>7}  src",
        ]
        for r in self.rows.values():
            chg = r.last - r.open if r.open else 0.0
            pct = chg / r.open * 100 if r.open else 0.0
            vol = f"{r.volume:,.0f}" if r.volume is not None else "-"
            lines.append(
                f"{r.symbol:<11}{market_of(r.symbol).value:<4}{r.last:>10.2f}{chg:>+9.2f}{pct:>+7.2f}%"
                f"{vol:>14}{r.latency_ms:>8.1f}{r.ticks:>7}  {r.source}"
            )
        lines += [
            "",
            f"daily bars (bar_snapshot, every minute): {self.snapshots} received,"
            f" last at {self.last_snapshot or '-'} UTC",
        ]
        for r in self.rows.values():
            b = r.bar
            if b is not None:
                lines.append(
                    f"  {b.symbol:<11}{b.trading_day or '':<11} O {b.open:>9.2f} H {b.high:>9.2f}"
                    f" L {b.low:>9.2f} C {b.close:>9.2f} V {b.volume:>14,.0f}"
                )
        return "\n".join(lines)

    def plain(self) -> str:
        parts = [f"{r.symbol}={r.last:.2f}({r.ticks})" for r in self.rows.values()]
        return f"[{time.monotonic() - self.started:5.0f}s] " + " ".join(parts) + f" | snapshots={self.snapshots}"


async def run_demo(
    config: AppConfig, symbols: list[str], duration_s: float | None, log_dir: Path, broker_kind: str = "tansu"
) -> int:
    tty = sys.stdout.isatty()
    out = sys.stdout
    stack = LocalStack(config, broker_kind, log_dir)
    view = LiveView(symbols, tty)
    async with stack.session() as stop:
        print(f"subscribing {len(symbols)} symbols", flush=True)
        client = LiveDataClient(
            stack.bootstrap_servers,
            portfolio_id="demo",
            node_id=f"demo-{os.getpid()}",
            topics=Topics(config.livedata.topics.prefix),
            lease_s=30.0,
        )
        async with client:
            await client.replace(symbols)

            async def consume() -> None:
                while True:
                    for item in await client.next_batch():
                        view.update(item)

            async def draw() -> None:
                period = 0.5 if tty else 5.0
                while True:
                    if tty:
                        out.write("\x1b[H\x1b[2J" + view.render() + "\n")
                    else:
                        out.write(view.plain() + "\n")
                    out.flush()
                    await asyncio.sleep(period)  # screen refresh period

            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(consume(), name="demo.consume"), tg.create_task(draw(), name="demo.draw")]
                healthy = await stack.serve(stop, duration_s)
                for t in tasks:
                    t.cancel()
            await client.clear()
    if view.first_tick_s is None:
        print("no price arrived: see the daemon logs in " + str(log_dir), file=sys.stderr)
        return 1
    ticks = sum(r.ticks for r in view.rows.values())
    print(f"first tick after {view.first_tick_s:.1f}s; {ticks} ticks, {view.snapshots} snapshots")
    return 0 if healthy and not any(stack.exit_codes) else 1
