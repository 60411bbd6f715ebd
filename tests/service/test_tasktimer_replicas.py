"""Two tasktimer replicas as processes on one scaled clock, real Redis and broker: each of
100+ instants is published exactly once, and SIGKILL of one replica mid-run changes nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import redis.asyncio as aioredis

from shared.config import AppConfig
from shared.dto import ControlCommand, utcnow
from shared.topics import Topics
from tests.helpers import TopicReader, eventually

ROOT = Path(__file__).resolve().parents[2]
SPEED = 200.0  # one schedule minute = 0.3 s
INSTANTS = 100


@contextmanager
def replica(config_dir: Path, start: float, real_start: float, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.service.tasktimer_replica",
                str(config_dir),
                str(start),
                str(real_start),
                str(SPEED),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_two_replicas_fire_each_instant_once_through_a_sigkill(
    kafka_bootstrap: str,
    topics: Topics,
    make_config: Callable[..., AppConfig],
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    live = {
        "redis": {"url": redis_url},
        # grace in schedule seconds (3600 = 18 s real); a dead claimant's lock lapses after 1 s real
        "tasktimer": {
            "redis_prefix": redis_prefix,
            "misfire_grace_s": 3600,
            "lock_ttl_s": 1.0,
            "http": {"enabled": False},
        },
    }
    jobs = {"jobs": [{"name": "tick", "cron": "* * * * *", "timezone": "UTC", "command": "status"}]}
    config = make_config(topics, livedata=live, task_timer=jobs)
    first = (utcnow() + timedelta(minutes=1)).replace(second=0, microsecond=0)
    real_start = time.time() + 4.0  # both processes are up by then; earlier instants fire too
    start = first.timestamp() - 0.5 * 60
    last = first + timedelta(minutes=INSTANTS - 1)

    def fired(cmds: list[ControlCommand]) -> set[object]:
        return {c.scheduled_for for c in cmds}

    async with TopicReader(kafka_bootstrap, topics.control_commands) as commands:
        with (
            replica(config.directory, start, real_start, tmp_path / "a.log") as a,
            replica(config.directory, start, real_start, tmp_path / "b.log") as b,
        ):
            half = first + timedelta(minutes=INSTANTS // 2)
            await eventually(
                lambda: half in fired(commands.of_type(ControlCommand)), timeout_s=60, what="half of the instants"
            )
            b.send_signal(signal.SIGKILL)
            await asyncio.to_thread(b.wait)
            await eventually(
                lambda: last in fired(commands.of_type(ControlCommand)),
                timeout_s=INSTANTS * 60 / SPEED + 30,
                what=f"instant {INSTANTS}",
            )
            assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            a.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(a.wait, 15) == 0, (tmp_path / "a.log").read_text()[-3000:]
    cmds = commands.of_type(ControlCommand)
    counts = Counter(c.correlation_id for c in cmds)
    assert [cid for cid, n in counts.items() if n > 1] == []  # nothing twice
    instants = sorted({c.scheduled_for for c in cmds if c.scheduled_for is not None})
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(instants)), "a gap"
    window = [i for i in instants if first <= i <= last]
    assert len(window) == INSTANTS
    # each fire recorded once in Redis, by one of the two replicas
    records = [
        json.loads(v) if v else None
        for v in await redis_client.mget([f"{redis_prefix}:fire:tick@{i:%Y-%m-%dT%H:%M:%SZ}" for i in window])
    ]
    assert all(r is not None and r["outcome"] == "published" for r in records)
    done = [r for r in records if r is not None]
    replicas = Counter(r["replica"] for r in done)
    late = sorted(r["lateness_s"] / SPEED for r in done)  # schedule seconds back to real ones
    print(
        f"\n{len(instants)} instants, {len(cmds)} commands; fires per replica {dict(replicas)}; "
        f"real lateness p50 {late[len(late) // 2] * 1000:.1f} ms, p99 {late[int(len(late) * 0.99) - 1] * 1000:.1f} ms, "
        f"max {late[-1] * 1000:.1f} ms"
    )
