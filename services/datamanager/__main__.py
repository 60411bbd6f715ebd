"""``python -m services.datamanager``: run the datamanager daemon."""

from __future__ import annotations

import sys

from services.datamanager.service import DataManager
from services.feeder_gateway.feeders.catalog import validate_sources
from shared.runtime import run_daemon


def main() -> int:
    return run_daemon(
        "datamanager",
        "Tracks interest per subscriber, publishes subscriptions, builds bars, answers bar_snapshot.",
        DataManager,
        checks=[validate_sources],  # data_sources.yml: the gateway's verdict, in every daemon
    )


if __name__ == "__main__":
    sys.exit(main())
