"""The tasktimer daemon on a scaled schedule clock, for fault tests that need many cron
instants in a few seconds.

``python -m tests.reliability.scaled_tasktimer --config-dir DIR START REAL_START SPEED``:
schedule time is START + SPEED x (now - REAL_START) (epoch seconds), so a restarted process
given the same arguments continues the same schedule. Otherwise it is the real daemon:
same config, logging, HTTP endpoints, signals and exit codes.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from services.tasktimer.clock import ScaledClock
from services.tasktimer.service import TaskTimer
from shared.config import load_config
from shared.logs import setup_logging
from shared.runtime import base_parser, run_async, serve


def main(argv: list[str]) -> int:
    parser = base_parser("tasktimer", "tasktimer on a scaled clock (tests)")
    parser.add_argument("start", type=float)
    parser.add_argument("real_start", type=float)
    parser.add_argument("speed", type=float)
    args = parser.parse_args(argv)
    config = load_config(args.config_dir)
    setup_logging("tasktimer", args.log_level or config.livedata.logging.level)
    clock = ScaledClock(datetime.fromtimestamp(args.start, UTC), args.speed, real_start=args.real_start)

    async def run() -> int:
        return await serve(TaskTimer(config, clock=clock))

    return run_async(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
