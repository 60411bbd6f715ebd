"""The benchmarks' daemons: the named ones on one config directory, ready, stopped in order
(the processes themselves: tests/daemons.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from services.ops.servers import free_port
from shared.topics import Topics
from tests.bench.harness import BenchContext
from tests.daemons import MODULES, ROOT, CpuMeter, Daemon, cpu_seconds, rss_mb

__all__ = ["ROOT", "CpuMeter", "Daemon", "cpu_seconds", "daemons", "rss_mb"]


@contextlib.asynccontextmanager
async def daemons(
    ctx: BenchContext,
    topics: Topics,
    names: Iterable[str],
    livedata: dict[str, Any] | None = None,
    data_sources: dict[str, Any] | None = None,
    task_timer: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Daemon]]:
    """Start the named daemons on one config directory, wait until each is ready, and stop
    them (in reverse order) afterwards."""
    names = list(names)
    ports = {name: free_port() for name in MODULES}
    sections = {
        "gateway": {"http": {"port": ports["gateway"]}},
        "datamanager": {"http": {"port": ports["datamanager"]}},
        "tasktimer": {"http": {"port": ports["tasktimer"]}},
    }
    for section, values in (livedata or {}).items():
        sections[section] = {**sections.get(section, {}), **values}
    config_dir = ctx.config_dir(topics, sections, data_sources, task_timer)
    procs = {
        name: Daemon(name, config_dir, ports[name], ctx.workdir / f"{topics.prefix}.{name}.log") for name in names
    }
    try:
        started = time.monotonic()
        for d in procs.values():
            await d.start()
        for d in procs.values():
            await d.wait_ready(timeout_s=max(5.0, 30.0 - (time.monotonic() - started)))
        yield procs
    finally:
        for d in reversed(list(procs.values())):
            await d.stop()
