"""``livedata demo``: embedded broker + the three daemons + a live view through the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.ops.servers import TansuBroker
from shared.client import LiveDataClient
from shared.config import AppConfig
from shared.dto import Bar, PriceUpdate, utcnow
from shared.kafka import ensure_topics
from shared.symbols import market_of
from shared.topics import Topics

DAEMONS = ("services.feeder_gateway", "services.datamanager", "services.tasktimer")
DEFAULT_SYMBOLS = ("600000.SH", "000001.SZ", "430047.BJ", "00700.HK", "09988.HK", "AAPL", "MSFT", "NVDA")


class DaemonDied(Exception):
    """A daemon exited while the demo ran."""


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


async def _start_daemon(
    module: str, config_dir: Path, env: dict[str, str], log_dir: Path
) -> asyncio.subprocess.Process:
    log_path = log_dir / f"{module.rsplit('.', maxsplit=1)[-1]}.log"
    # a local append-only log file handed to the child: no wait worth a thread
    with open(log_path, "ab") as out:  # noqa: ASYNC230
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--config-dir",
            str(config_dir),
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )


async def _stop_daemon(proc: asyncio.subprocess.Process, timeout_s: float = 10.0) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


async def run_demo(config: AppConfig, symbols: list[str], duration_s: float | None, log_dir: Path) -> int:
    tty = sys.stdout.isatty()
    out = sys.stdout
    broker = TansuBroker(log_path=log_dir / "broker.log")
    broker.start()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, PYTHONUNBUFFERED="1")
    print(f"embedded broker on {broker.bootstrap_servers} (pid {broker.pid}); logs in {log_dir}", flush=True)
    procs: list[asyncio.subprocess.Process] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rc = 0
    try:
        kafka = config.livedata.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        await ensure_topics(kafka, Topics(config.livedata.topics.prefix).with_partitions(kafka.partitions))
        for module in DAEMONS:
            procs.append(await _start_daemon(module, config.directory, env, log_dir))
        print(f"started {', '.join(DAEMONS)}; subscribing {len(symbols)} symbols", flush=True)
        client = LiveDataClient(
            broker.bootstrap_servers,
            portfolio_id="demo",
            node_id=f"demo-{os.getpid()}",
            topics=Topics(config.livedata.topics.prefix),
            lease_s=30.0,
        )
        view = LiveView(symbols, tty)
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

            async def watch() -> None:
                waits = [asyncio.create_task(p.wait()) for p in procs]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                dead = [DAEMONS[i] for i, p in enumerate(procs) if p.returncode is not None]
                print(f"\ndaemon exited unexpectedly: {', '.join(dead)}; see {log_dir}", file=sys.stderr)
                raise DaemonDied(", ".join(dead))

            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(consume()), tg.create_task(draw()), tg.create_task(watch())]
                watcher = tasks[2]
                stop_wait = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait({stop_wait, watcher}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                for t in tasks:
                    t.cancel()
            await client.clear()
        if view.first_tick_s is None:
            print("no price arrived: see the daemon logs in " + str(log_dir), file=sys.stderr)
            rc = 1
        else:
            ticks = sum(r.ticks for r in view.rows.values())
            print(f"\nfirst tick after {view.first_tick_s:.1f}s; {ticks} ticks, {view.snapshots} snapshots")
    except* DaemonDied:
        rc = 1
    finally:
        print("stopping daemons ...", flush=True)
        codes = [await _stop_daemon(p) for p in reversed(procs)]
        broker.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print(f"stopped (exit codes {codes}); broker stopped", flush=True)
        if any(codes):
            rc = rc or 1
    return rc
