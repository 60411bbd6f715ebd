"""What every feeder is: an async generator of tick batches driven by a desired symbol set."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from shared.config import ConfigError, Strict, format_validation_error
from shared.dto import PriceUpdate
from shared.metrics import ServiceMetrics
from shared.symbols import Market

SettingsT = TypeVar("SettingsT", bound=Strict)


class FeederConfigError(Exception):
    """The provider rejected our configuration (bad key, plan, feed): retrying won't help.

    The message names the setting to fix.
    """


class ProviderError(Exception):
    """A provider-side failure worth a reconnect (with backoff)."""


StatusCallback = Callable[[str, dict[str, Any]], None]


class FeederMetrics:
    """Counters every feeder shares, labelled by source name."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.malformed = metrics.counter(
            "livedata_feeder_malformed", "Malformed frames or fields skipped", ["source", "reason"]
        )
        self.reconnects = metrics.counter(
            "livedata_feeder_reconnects", "Reconnects after a drop or a stale feed", ["source"]
        )
        self.frames = metrics.counter("livedata_feeder_frames", "Frames received", ["source"])
        self.ticks = metrics.counter("livedata_feeder_ticks", "Ticks produced", ["source"])


@dataclass
class FeederContext:
    """What the gateway hands each feeder: identity, status sink, metrics."""

    name: str
    market: Market
    emit_status: StatusCallback
    metrics: FeederMetrics
    log: logging.Logger = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"feeder.{self.name}.{self.market.value}")

    def malformed(self, reason: str, snippet: bytes | str) -> None:
        """Count and log a bad frame or field; the feeder then skips it."""
        self.metrics.malformed.labels(self.name, reason).inc()
        text = snippet if isinstance(snippet, str) else snippet.decode("utf-8", "replace")
        self.log.warning("malformed input skipped: %s: %.160r", reason, text)


class Feeder(abc.ABC, Generic[SettingsT]):
    """A provider connection.

    The gateway sets the desired symbols with ``set_symbols`` (canonical symbols of this
    feeder's market) at any time, and consumes ``ticks()``: an async generator that
    connects, subscribes, yields batches of PriceUpdate, and reconnects with backoff
    on its own. The gateway closes the generator (``aclose``) to stop the feeder or to
    force a reconnect when the feed went stale.
    """

    type_name: ClassVar[str]
    settings_model: ClassVar[type[Strict]]
    follows_sessions: ClassVar[bool] = True
    """The stale watchdog only runs while the market is in session (sim: always)."""

    def __init__(self, settings: SettingsT, ctx: FeederContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.symbols: frozenset[str] = frozenset()
        self.symbols_changed = asyncio.Event()
        self.connected = False

    def set_symbols(self, symbols: frozenset[str]) -> None:
        """Replace the desired set; the running generator applies the difference."""
        if symbols != self.symbols:
            self.symbols = symbols
            self.symbols_changed.set()

    @property
    def stale_after_s(self) -> float | None:
        """No data this long while in session means the feed is stale (None: no watchdog)."""
        return None

    @abc.abstractmethod
    def ticks(self) -> AsyncIterator[list[PriceUpdate]]:
        """Yield tick batches for the desired symbols until closed."""

    @classmethod
    def from_settings(cls, raw: dict[str, Any], ctx: FeederContext, file: str, key: str) -> Feeder[Any]:
        """Validate this feeder's settings; errors name the file and the key path."""
        try:
            settings = cls.settings_model.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(format_validation_error(file, e, key)) from None
        return cls(settings, ctx)  # type: ignore[arg-type]
