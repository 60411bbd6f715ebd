"""data_sources.yml ``type`` → feeder class."""

from __future__ import annotations

from typing import Any

from services.feeder_gateway.feeders.alpaca.feeder import AlpacaFeeder
from services.feeder_gateway.feeders.base import Feeder
from services.feeder_gateway.feeders.eastmoney.feeder import EastMoneyFeeder, EastMoneyPollFeeder
from services.feeder_gateway.feeders.fushu.feeder import FushuFeeder
from services.feeder_gateway.feeders.sim.feeder import SimFeeder
from services.feeder_gateway.feeders.tencent.feeder import TencentFeeder

FEEDER_TYPES: dict[str, type[Feeder[Any]]] = {
    SimFeeder.type_name: SimFeeder,
    EastMoneyFeeder.type_name: EastMoneyFeeder,
    EastMoneyPollFeeder.type_name: EastMoneyPollFeeder,
    AlpacaFeeder.type_name: AlpacaFeeder,
    FushuFeeder.type_name: FushuFeeder,
    TencentFeeder.type_name: TencentFeeder,
}
