"""A tasktimer replica as a process, on a scaled clock that every replica shares.

``python -m tests.service.tasktimer_replica CONFIG_DIR START_EPOCH REAL_START_EPOCH SPEED``:
schedule time is START + SPEED x (now - REAL_START), so replicas started with the same
arguments agree on the schedule whenever each of them starts.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from services.tasktimer.clock import ScaledClock
from services.tasktimer.service import TaskTimer
from shared.config import load_config
from shared.logs import setup_logging
from shared.runtime import run_async, serve


def main(argv: list[str]) -> int:
    config_dir, start, real_start, speed = argv
    config = load_config(config_dir)
    setup_logging("tasktimer", "WARNING")
    clock = ScaledClock(datetime.fromtimestamp(float(start), UTC), float(speed), real_start=float(real_start))

    async def run() -> int:
        return await serve(TaskTimer(config, clock=clock))

    return run_async(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
