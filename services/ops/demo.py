"""``livedata demo``: embedded broker + the three daemons + a live view through the SDK.

The live view is ``livedata watch``'s Rich table (services/ops/watch.py); when stdout is
not a terminal it prints a plain line every 5 s instead. A stdout whose reader goes away
(``| head -1``, a ``tee`` killed by Ctrl-C) stops the demo in order, like a signal.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live

from services.ops.stack import LocalStack, say
from services.ops.watch import QuoteBoard
from shared.client import LiveDataClient
from shared.config import AppConfig
from shared.topics import Topics

DEFAULT_SYMBOLS = ("600000.SH", "000001.SZ", "430047.BJ", "00700.HK", "09988.HK", "AAPL", "MSFT", "NVDA")


async def run_demo(
    config: AppConfig, symbols: list[str], duration_s: float | None, log_dir: Path, broker_kind: str = "tansu"
) -> int:
    tty = sys.stdout.isatty()
    stack = LocalStack(config, broker_kind, log_dir, kind="demo")
    board = QuoteBoard(symbols, title="ginkgo-livedata demo")
    healthy = True
    async with stack.session() as stop:
        say(f"subscribing {len(symbols)} symbols")
        say(f"in another terminal: livedata status | livedata watch {symbols[0]} | livedata bars {symbols[0]}")
        client = LiveDataClient(
            stack.bootstrap_servers,
            portfolio_id="demo",
            node_id=f"demo-{os.getpid()}",
            topics=Topics(stack.config.livedata.topics.prefix),
            lease_s=30.0,
            kafka=stack.config.livedata.kafka,
        )
        async with client:
            await client.replace(symbols)

            async def consume() -> None:
                while True:
                    for item in await client.next_batch():
                        board.update(item)

            async def draw() -> None:
                footer = f"Ctrl-C stops everything; logs in {log_dir}"
                if tty:
                    console = Console()
                    with Live(board.renderable(footer), console=console, refresh_per_second=2) as live:
                        while True:
                            await asyncio.sleep(0.5)  # screen refresh period
                            live.update(board.renderable(footer))
                while True:
                    if not say(board.plain()):
                        stop.set()  # nobody reads us any more: stop in order
                        return
                    await asyncio.sleep(5.0)  # a line every 5 s for a log or a pipe

            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(consume(), name="demo.consume"), tg.create_task(draw(), name="demo.draw")]
                try:
                    healthy = await stack.serve(stop, duration_s)
                finally:
                    for t in tasks:
                        t.cancel()
            await client.clear()
    if board.first_tick_s is None:
        say("no price arrived: see the daemon logs in " + str(log_dir), file="stderr")
        return 1
    ticks = sum(r.ticks for r in board.rows.values())
    say(f"first tick after {board.first_tick_s:.1f}s; {ticks} ticks, {board.snapshots} snapshots")
    return 0 if healthy and not any(stack.exit_codes) else 1
