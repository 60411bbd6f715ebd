"""What every feeder is: an async generator of tick batches driven by its market's wanted symbols."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from services.feeder_gateway.feeders.history import MinuteHistory
from services.feeder_gateway.feeders.wanted import WantedSymbols, WantedView
from shared.config import Strict
from shared.dto import PriceUpdate, TradeCorrection
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
AlertCallback = Callable[[str, str, dict[str, Any]], None]  # (code, message, detail)
CorrectionCallback = Callable[[TradeCorrection], None]


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
    """What the gateway hands each feeder: identity, status sink, metrics, wanted symbols.

    ``wanted`` is the market's registry (read-only); None gives the feeder a registry of
    its own, set with ``Feeder.set_symbols`` (a feeder used on its own: tests, tools).
    """

    name: str
    market: Market
    emit_status: StatusCallback
    metrics: FeederMetrics
    wanted: WantedView | None = None
    emit_alert: AlertCallback | None = None
    emit_correction: CorrectionCallback | None = None
    """Where corrections of published trades go (the gateway publishes them on market data)."""
    on_gap: Callable[[], None] | None = None
    """Called when a connection comes back after a drop (the market's feed then reports
    the hole between its last tick and the next one for repair)."""
    log: logging.Logger = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"feeder.{self.name}.{self.market.value}")

    def alert(self, code: str, message: str, detail: dict[str, Any]) -> None:
        """Raise an operator alert (logged only when the feeder runs outside a gateway)."""
        if self.emit_alert is None:
            self.log.error("alert %s: %s", code, message)
        else:
            self.emit_alert(code, message, detail)

    def correction(self, fix: TradeCorrection) -> None:
        """Hand on a correction or cancel of a published trade (a status event when the
        feeder runs outside a gateway)."""
        if self.emit_correction is None:
            self.emit_status("trade_correction", msgspec.structs.asdict(fix))
        else:
            self.emit_correction(fix)

    def malformed(self, reason: str, snippet: bytes | str) -> None:
        """Count and log a bad frame or field; the feeder then skips it."""
        self.metrics.malformed.labels(self.name, reason).inc()
        text = snippet if isinstance(snippet, str) else snippet.decode("utf-8", "replace")
        self.log.warning("malformed input skipped: %s: %.160r", reason, text)


class Feeder(abc.ABC, Generic[SettingsT]):
    """A provider connection.

    The feeder reads the wanted symbols (canonical symbols of its market) through
    ``self.wanted`` and the gateway consumes ``ticks()``: an async generator that
    connects, subscribes, yields batches of PriceUpdate, and reconnects on its own. The
    gateway closes the generator (``aclose``) to stop the feeder or to restart it when
    its market's watchdog finds the feed stale or frozen.
    """

    type_name: ClassVar[str]
    settings_model: ClassVar[type[Strict]]
    follows_sessions: ClassVar[bool] = True
    """The market's watchdog only runs while the market is in session (sim: always)."""

    def __init__(self, settings: SettingsT, ctx: FeederContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self._own_wanted: WantedSymbols | None = None
        if ctx.wanted is None:
            self._own_wanted = WantedSymbols()
            self.wanted: WantedView = self._own_wanted.view()
        else:
            self.wanted = ctx.wanted
        self.symbols_changed = asyncio.Event()
        """Set on every change of the wanted set; a feeder clears it when it applied it."""
        self.wanted.listen(self._on_wanted_change)
        self.connected = False

    def _on_wanted_change(self) -> None:
        self.symbols_changed.set()

    @property
    def symbols(self) -> frozenset[str]:
        """The wanted symbols now."""
        return self.wanted.symbols

    def set_symbols(self, symbols: frozenset[str]) -> None:
        """Replace the wanted set of a feeder that has its own registry (not in a gateway)."""
        if self._own_wanted is None:
            raise RuntimeError(f"{self.ctx.name}: the wanted symbols belong to the {self.ctx.market} market")
        self._own_wanted.replace(symbols)

    # ---- the market watchdog's hooks --------------------------------------------------

    @property
    def stale_after_s(self) -> float | None:
        """No batch at all this long while in session means the feed is stale (None: never)."""
        return None

    @property
    def frozen_after_s(self) -> float | None:
        """No quote CHANGED this long while in session means the feed is frozen (None:
        not judged): for pollers whose polls succeed while the quotes stop moving."""
        return None

    def news_at(self) -> float | None:
        """Monotonic time the quotes last changed, when the feeder judges it (pollers)."""
        return None

    def history(self) -> MinuteHistory | None:
        """The provider's minute history, for gap repair (None: this source has none)."""
        return None

    @abc.abstractmethod
    def ticks(self) -> AsyncIterator[list[PriceUpdate]]:
        """Yield tick batches for the desired symbols until closed."""
