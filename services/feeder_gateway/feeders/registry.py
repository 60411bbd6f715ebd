"""data_sources.yml ``type`` → feeder class."""

from __future__ import annotations

from typing import Any

from services.feeder_gateway.feeders.base import Feeder
from services.feeder_gateway.feeders.sim.feeder import SimFeeder

FEEDER_TYPES: dict[str, type[Feeder[Any]]] = {
    SimFeeder.type_name: SimFeeder,
}
