"""Running a daemon: config, logging, uvloop, signals, health endpoints, ordered shutdown.

The first SIGTERM/SIGINT sets the stop event; the service then closes intake, drains,
flushes and commits on its own. If it has not finished ``shutdown_timeout_s`` later, or a
second signal arrives, what is left is cancelled and the process exits 1.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from shared.alarms import LoopHeartbeats, RateAlarm
from shared.broker_watch import BrokerWatch
from shared.config import AppConfig, ConfigError, HttpSettings, ServiceSettings, load_config
from shared.events import SystemEvents
from shared.kafka import KafkaPublisher
from shared.logs import kv, setup_logging
from shared.metrics import ServiceMetrics, counter_total
from shared.tasks import cancel_and_wait, retry_until_stopped, sleep_or_stop
from shared.topics import Topics
from shared.transport import plaintext_transports

log = logging.getLogger("runtime")


class Service(abc.ABC):
    """A daemon: ``run(stop)`` serves until ``stop`` is set, then drains and returns.

    Every service has a producer (``publisher``), a system-events emitter and its
    topics; ``start_kafka``/``stop_kafka`` bracket ``run``.
    """

    name: str

    def __init__(self, config: AppConfig, settings: ServiceSettings) -> None:
        live = config.livedata
        self.config = config
        if config.file_mode_warning:  # security.strict_file_modes refuses instead (load_config)
            log.warning("secure.yml is readable by group or others", extra=kv(problem=config.file_mode_warning))
        self.settings = settings
        self.kafka = live.kafka
        self.topics = Topics(live.topics.prefix)
        self.metrics = ServiceMetrics(self.name)
        self.publisher = KafkaPublisher(live.kafka, f"{live.kafka.client_id}-{self.name}", self.metrics)
        self.events = SystemEvents(self.name, self.topics.system_events)
        self.broker = BrokerWatch(live.kafka, self.topics, self.events, f"{live.kafka.client_id}-{self.name}")
        self._producing = False
        self._watch_stop = asyncio.Event()
        self._watch_tasks: list[asyncio.Task[None]] = []
        self.loops = LoopHeartbeats(settings.loop_stuck_after_s)
        self.alarms: list[RateAlarm] = []
        self.alarm(
            "dead_letters",
            "messages dead-lettered",
            lambda: counter_total(self.metrics.dead_lettered),
            settings.deadletter_alert_per_s,
        )

    def alarm(self, code: str, what: str, read: Callable[[], float], threshold_per_s: float) -> RateAlarm:
        """Alert (at most once per ``alert_interval_s``) while ``read()`` grows faster than the threshold."""
        a = RateAlarm(self.events, code, what, read, threshold_per_s, self.settings.alert_interval_s)
        self.alarms.append(a)
        return a

    async def _watch_alarms(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, 1.0):
            now = time.monotonic()
            for a in self.alarms:
                a.check(now)

    @property
    def broker_ok(self) -> bool:
        """The broker answers and our producer is started (what readiness reports)."""
        return self._producing and self.broker.up

    async def start_kafka(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the broker (backoff; not ready meanwhile), create missing topics (if
        configured), start the producer and the broker watch. False if ``stop`` was set
        before the broker answered."""
        stop = stop or asyncio.Event()
        if not await self.broker.connect(stop):
            return False

        async def start_producer() -> bool:
            await self.publisher.start()
            return True

        if not await retry_until_stopped(start_producer, stop, "producer start failed", log, retry_on=(KafkaError,)):
            return False
        self._producing = True
        self._watch_tasks = [
            asyncio.create_task(self.broker.run(self._watch_stop), name=f"{self.name}.broker-watch"),
            asyncio.create_task(self._watch_alarms(self._watch_stop), name=f"{self.name}.alarms"),
        ]
        return True

    async def stop_kafka(self) -> None:
        """Flush and close the producer; never raises (shutdown goes on)."""
        self._producing = False
        self._watch_stop.set()
        await cancel_and_wait(self._watch_tasks)
        try:
            await self.publisher.stop()
        except Exception as e:
            log.error("producer close failed", extra=kv(error=repr(e)))

    @abc.abstractmethod
    async def run(self, stop: asyncio.Event) -> None: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can do its job now, with the reasons."""
        return True, {}

    def health(self) -> dict[str, Any]:
        """Liveness details (the process answers, so it is alive)."""
        return {"service": self.name}

    @property
    def http_settings(self) -> HttpSettings:
        return self.settings.http

    @property
    def shutdown_timeout_s(self) -> float:
        return self.settings.shutdown_timeout_s


class HealthServer:
    """aiohttp app serving /healthz, /readyz and /metrics for one service."""

    def __init__(self, service: Service, settings: HttpSettings) -> None:
        self._service = service
        self._settings = settings
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **self._service.health()})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, detail = self._service.readiness()
        stuck = self._service.loops.stuck()
        if stuck:
            ready = False
            detail = {**detail, "stuck_loops": stuck}
        if not self._service.broker.up:
            ready = False
            detail = {**detail, "broker": False, "broker_error": self._service.broker.last_error}
        return web.json_response({"ready": ready, **detail}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._service.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        await site.start()
        addresses = self._runner.addresses  # public: (host, port, ...) of each bound socket
        self.port = int(addresses[0][1]) if addresses else self._settings.port
        log.info("http endpoints up", extra=kv(url=f"http://{self._settings.host}:{self.port}"))

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def serve(service: Service, stop: asyncio.Event | None = None) -> int:
    """Run a service until signalled; return the exit code (0: clean shutdown)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0
    run_task: asyncio.Task[None] | None = None

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping", extra=kv(signal=sig.name))
            stop.set()
        else:
            log.warning("second signal: forcing shutdown", extra=kv(signal=sig.name))
            if run_task is not None:
                run_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    http = HealthServer(service, service.http_settings)
    try:
        if service.http_settings.enabled:
            await http.start()
        run_task = asyncio.create_task(service.run(stop), name=f"{service.name}.run")
        stop_wait = asyncio.create_task(stop.wait(), name="stop-wait")
        try:
            await asyncio.wait({run_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not run_task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(run_task), service.shutdown_timeout_s)
                except TimeoutError:
                    log.error("shutdown deadline passed, cancelling", extra=kv(timeout_s=service.shutdown_timeout_s))
                    await cancel_and_wait([run_task])
                    return 1
        finally:
            stop_wait.cancel()
        if run_task.cancelled():
            return 1
        exc = run_task.exception()
        if exc is not None:
            log.error("service failed", exc_info=exc)
            return 1
        log.info("stopped cleanly")
        return 0
    except asyncio.CancelledError:
        return 1
    finally:
        await http.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="configuration directory (default: $GINKGO_DIR, else ~/.ginkgo)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    return p


ConfigCheck = Callable[[AppConfig], object]
"""A check of a loaded config beyond its own models; raises ConfigError naming file and key."""


def run_daemon(
    prog: str,
    description: str,
    build: Callable[[AppConfig], Service],
    argv: Sequence[str] | None = None,
    checks: Sequence[ConfigCheck] = (),
) -> int:
    """Entry point of ``python -m services.<name>``: parse args, load config, run
    ``checks`` on it (each daemon passes the feeders' ``validate_sources``, so every daemon
    refuses a directory the gateway refuses: one directory, one verdict), serve."""
    args = base_parser(prog, description).parse_args(argv)
    try:
        config = load_config(args.config_dir)
        checked = [check(config) for check in checks]
    except ConfigError as e:
        print(f"{prog}: configuration error:\n{e}", file=sys.stderr)
        return 2
    logging_settings = config.livedata.logging
    setup_logging(prog, args.log_level or logging_settings.level, logging_settings.format)
    for setting in plaintext_transports(config, checked):
        log.warning("plain-text transport to a non-loopback host", extra=kv(setting=setting))

    async def main() -> int:
        try:
            service = build(config)  # inside the loop: clients bind to it
        except ConfigError as e:
            print(f"{prog}: configuration error:\n{e}", file=sys.stderr)
            return 2
        log.info("starting", extra=kv(config_dir=str(config.directory)))
        return await serve(service)

    return run_async(main())


def run_async(main: Any) -> int:
    """Run a coroutine under uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return int(asyncio.run(main))
    return int(uvloop.run(main))
