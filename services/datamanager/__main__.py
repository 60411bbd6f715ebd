"""``python -m services.datamanager``: run the datamanager daemon."""

from __future__ import annotations

import sys

from services.datamanager.service import DataManager
from shared.runtime import run_daemon


def main() -> int:
    return run_daemon(
        "datamanager",
        "Tracks interest per subscriber, publishes subscriptions, builds bars, answers bar_snapshot.",
        DataManager,
    )


if __name__ == "__main__":
    sys.exit(main())
