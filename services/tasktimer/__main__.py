"""``python -m services.tasktimer``: run the tasktimer daemon."""

from __future__ import annotations

import sys

from services.feeder_gateway.feeders.catalog import validate_sources
from services.tasktimer.service import TaskTimer
from shared.runtime import run_daemon


def main() -> int:
    return run_daemon(
        "tasktimer",
        "Publishes control commands on cron schedules from task_timer.yml, each instant once.",
        TaskTimer,
        checks=[validate_sources],  # data_sources.yml: the gateway's verdict, in every daemon
    )


if __name__ == "__main__":
    sys.exit(main())
