"""The daemons as real processes (``python -m services.<name> --config-dir DIR``) for the
end-to-end and reliability tests and the benchmarks: start, readiness, RSS and CPU from
/proc, Prometheus samples, SIGTERM, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import env_without_overrides, eventually

MODULES = {
    "gateway": "services.feeder_gateway",
    "datamanager": "services.datamanager",
    "tasktimer": "services.tasktimer",
}
ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in MB (2**20 bytes)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Busy fraction of one core per named process between construction and ``shares()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid}
        self._start = time.perf_counter(), {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self._start[0]
        out = {}
        for name, pid in self._pids.items():
            with contextlib.suppress(OSError):
                out[name] = round((cpu_seconds(pid) - self._start[1][name]) / wall, 2)
        return out


class Daemon:
    """One daemon process with its log file and HTTP port."""

    def __init__(
        self, name: str, config_dir: Path, port: int, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.module = MODULES[name]
        self.config_dir = config_dir
        self.port = port
        self.log = log
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        with open(self.log, "wb") as out:  # noqa: ASYNC230 - the child's log file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                "--config-dir",
                str(self.config_dir),
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=self.env if self.env is not None else env_without_overrides(),
                cwd=ROOT,
            )

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    async def _get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.get(f"http://127.0.0.1:{self.port}{path}") as r,
        ):
            return r.status, await r.text()

    async def ready(self) -> bool:
        self._check_alive()
        try:
            status, _ = await self._get("/readyz")
        except (aiohttp.ClientError, TimeoutError):
            return False
        return status == 200

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        await eventually(self.ready, timeout_s=timeout_s, interval_s=0.05, what=f"{self.name} ready")

    async def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics (``name`` → value)."""
        self._check_alive()
        _, text = await self._get("/metrics")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def rss_mb(self) -> float:
        self._check_alive()
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def get(self, path: str) -> str:
        status, text = await self._get(path)
        assert status == 200, f"{self.name} {path}: HTTP {status}"
        return text

    async def readiness(self) -> dict[str, Any]:
        """The /readyz document (any status)."""
        self._check_alive()
        _, text = await self._get("/readyz")
        doc: dict[str, Any] = json.loads(text)
        return doc

    async def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self, timeout_s: float = 15.0) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), timeout_s)
        return rc, time.monotonic() - started

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait for a clean exit, SIGKILL past the deadline; returns the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()




class System:
    """The three daemons on one config directory (sim feeders by default), as processes."""

    def __init__(
        self,
        workdir: Path,
        bootstrap: str,
        *,
        prefix: str | None = None,
        sim: dict[str, Any] | None = None,
        data_sources: dict[str, Any] | None = None,
        task_timer: dict[str, Any] | None = None,
        livedata: dict[str, Any] | None = None,
        names: tuple[str, ...] = tuple(MODULES),
    ) -> None:
        import uuid

        import yaml

        from services.ops.servers import free_port
        from shared.topics import Topics

        self.topics = Topics(prefix or f"sys.{uuid.uuid4().hex[:8]}")
        self.config_dir = workdir / f"system-{self.topics.prefix}"
        self.config_dir.mkdir(parents=True)
        ports = {name: free_port() for name in MODULES}
        live: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "linger_ms": 0,
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 300,
            },
            "topics": {"prefix": self.topics.prefix},
            "gateway": {"http": {"port": ports["gateway"]}},
            "datamanager": {"http": {"port": ports["datamanager"]}},
            "tasktimer": {"http": {"port": ports["tasktimer"]}},
        }
        for section, values in (livedata or {}).items():
            live[section] = {**live.get(section, {}), **values}
        sim = sim or {"type": "sim", "ticks_per_s_per_symbol": 50, "interval_ms": 20}
        if data_sources is None:
            data_sources = {"markets": {m: {"sources": [sim]} for m in ("CN", "HK", "US")}}
        if task_timer is None:
            task_timer = {"jobs": [{"name": "snap", "cron": "* * * * *", "command": "bar_snapshot"}]}
        (self.config_dir / "livedata.yml").write_text(yaml.safe_dump(live))
        (self.config_dir / "data_sources.yml").write_text(yaml.safe_dump(data_sources))
        (self.config_dir / "task_timer.yml").write_text(yaml.safe_dump(task_timer))
        env = env_without_overrides()
        self.daemons = {
            name: Daemon(name, self.config_dir, ports[name], self.config_dir / f"{name}.log", env) for name in names
        }

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    async def start(self, timeout_s: float = 30.0) -> System:
        for daemon in self.daemons.values():
            await daemon.start()
        for daemon in self.daemons.values():
            await daemon.wait_ready(timeout_s)
        return self

    async def kill(self) -> None:
        for daemon in self.daemons.values():
            await daemon.kill()

    async def __aenter__(self) -> System:
        try:
            return await self.start()
        except BaseException:
            await self.kill()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
