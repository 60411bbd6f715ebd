"""``python -m services.feeder_gateway``: run the feeder-gateway daemon."""

from __future__ import annotations

import sys

from services.feeder_gateway.feeders.catalog import validate_sources
from services.feeder_gateway.service import FeederGateway
from shared.runtime import run_daemon


def main() -> int:
    return run_daemon(
        "feeder-gateway",
        "Connects to market-data providers and publishes normalized ticks to Kafka.",
        FeederGateway,
        checks=[validate_sources],  # data_sources.yml: the gateway's verdict, in every daemon
    )


if __name__ == "__main__":
    sys.exit(main())
