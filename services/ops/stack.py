"""A local stack: a broker launcher plus the three daemons as processes, logs in one folder.

Used by ``livedata up`` (the stack in the foreground) and ``livedata demo`` (the stack plus a
live view). With ``stores`` a local Redis and ClickHouse start too. Daemons get
``KAFKA_BOOTSTRAP_SERVERS`` (and ``REDIS_URL``/``CLICKHOUSE_URL`` for the stores) and stop
in reverse order on SIGTERM, then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from services.ops.servers import ClickHouseServer, LocalServer, RedisServer, make_broker
from shared.config import AppConfig
from shared.kafka import ensure_system_topics
from shared.topics import Topics

DAEMONS = ("services.feeder_gateway", "services.datamanager", "services.tasktimer")


class DaemonDied(Exception):
    """A daemon exited while the stack ran."""


class LocalStack:
    """Broker (``kafka`` or ``tansu``), optional Redis, and the three daemons."""

    def __init__(self, config: AppConfig, broker_kind: str, log_dir: Path, stores: bool = False) -> None:
        self.config = config
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = make_broker(broker_kind, log_path=log_dir / "broker.log")
        self.redis: RedisServer | None = RedisServer(log_path=log_dir / "redis.log") if stores else None
        self.clickhouse: ClickHouseServer | None = (
            ClickHouseServer(log_path=log_dir / "clickhouse.log") if stores else None
        )
        self.procs: list[asyncio.subprocess.Process] = []
        self.exit_codes: list[int] = []

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.address

    @property
    def servers(self) -> list[LocalServer]:
        return [s for s in (self.broker, self.redis, self.clickhouse) if s is not None]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=self.bootstrap_servers, PYTHONUNBUFFERED="1")
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        if self.clickhouse is not None:
            env["CLICKHOUSE_URL"] = self.clickhouse.url
        return env

    async def start(self) -> None:
        for server in self.servers:
            # the launcher polls the server's port until it answers (up to ~20 s for a JVM)
            await asyncio.to_thread(server.start)
            print(f"{server.describe()}", flush=True)
        kafka = self.config.livedata.kafka.model_copy(update={"bootstrap_servers": self.bootstrap_servers})
        await ensure_system_topics(kafka, Topics(self.config.livedata.topics.prefix))
        env = self.environment()
        for module in DAEMONS:
            self.procs.append(await self._start_daemon(module, env))
        print(f"started {', '.join(DAEMONS)}; logs in {self.log_dir}", flush=True)

    async def _start_daemon(self, module: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        log_path = self.log_dir / f"{module.rsplit('.', maxsplit=1)[-1]}.log"
        # a local append-only log file handed to the child: no wait worth a thread
        with open(log_path, "ab") as out:  # noqa: ASYNC230
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                "--config-dir",
                str(self.config.directory),
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the launcher, which stops them in order
            )

    async def watch(self) -> None:
        """Return never; raise DaemonDied when a daemon exits."""
        waits = [asyncio.create_task(p.wait(), name=f"wait.{DAEMONS[i]}") for i, p in enumerate(self.procs)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        dead = [DAEMONS[i] for i, p in enumerate(self.procs) if p.returncode is not None]
        print(f"\ndaemon exited unexpectedly: {', '.join(dead)}; see {self.log_dir}", file=sys.stderr)
        raise DaemonDied(", ".join(dead))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[asyncio.Event]:
        """Start everything; yield the stop event (set by SIGINT/SIGTERM); stop everything.
        The daemons' exit codes are in ``exit_codes`` afterwards."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            yield stop
        finally:
            print("stopping ...", flush=True)
            self.exit_codes = await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            print(f"stopped (daemon exit codes {self.exit_codes})", flush=True)

    async def serve(self, stop: asyncio.Event, duration_s: float | None) -> bool:
        """Until ``stop``, ``duration_s`` or a daemon's death; False if a daemon died."""
        watcher = asyncio.create_task(self.watch(), name="stack.watch")
        stop_wait = asyncio.create_task(stop.wait(), name="stack.stop")
        try:
            await asyncio.wait({watcher, stop_wait}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watcher, stop_wait):
                t.cancel()
        return not (watcher.done() and not watcher.cancelled() and watcher.exception() is not None)

    async def stop(self) -> list[int]:
        """Stop the daemons (reverse order), then the servers; the daemons' exit codes."""
        codes = [await _stop_process(p) for p in reversed(self.procs)]
        for server in reversed(self.servers):
            await asyncio.to_thread(server.close)
        return codes


async def _stop_process(proc: asyncio.subprocess.Process, timeout_s: float = 10.0) -> int:
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


async def run_stack(
    config: AppConfig, broker_kind: str, log_dir: Path, stores: bool, duration_s: float | None
) -> int:
    """``livedata up``: run the stack until Ctrl-C/SIGTERM (or ``duration_s``)."""
    stack = LocalStack(config, broker_kind, log_dir, stores)
    async with stack.session() as stop:
        env = stack.environment()
        names = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL")
        shown = " ".join(f"{k}={env[k]}" for k in names if k in env)
        print(f"{shown}  (Ctrl-C stops everything)", flush=True)
        healthy = await stack.serve(stop, duration_s)
    return 0 if healthy and not any(stack.exit_codes) else 1
