"""The wanted symbols of one market: one registry written by the gateway, read-only views for feeders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class WantedSymbols:
    """The single truth of which canonical symbols a market wants.

    The gateway replaces the set; every feeder of the market reads it through a
    ``WantedView`` and replays it on every (re)connect and failover. Each change bumps
    ``version`` and wakes every waiter.
    """

    def __init__(self) -> None:
        self._symbols: frozenset[str] = frozenset()
        self._version = 0
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    @property
    def symbols(self) -> frozenset[str]:
        return self._symbols

    @property
    def version(self) -> int:
        return self._version

    def replace(self, symbols: frozenset[str]) -> bool:
        """Replace the wanted set; True if it changed."""
        if symbols == self._symbols:
            return False
        self._symbols = symbols
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in self._listeners:
            listener()
        return True

    async def wait_change(self, seen_version: int) -> None:
        """Return once ``version`` differs from ``seen_version``."""
        while self._version == seen_version:
            await self._changed.wait()

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change (for feeders that wait on their own event)."""
        self._listeners.append(callback)

    def view(self) -> WantedView:
        return WantedView(self)


class WantedView:
    """Read-only access to a market's ``WantedSymbols``."""

    __slots__ = ("_registry",)

    def __init__(self, registry: WantedSymbols) -> None:
        self._registry = registry

    @property
    def symbols(self) -> frozenset[str]:
        return self._registry.symbols

    @property
    def version(self) -> int:
        return self._registry.version

    async def wait_change(self, seen_version: int) -> None:
        await self._registry.wait_change(seen_version)

    def listen(self, callback: Callable[[], None]) -> None:
        self._registry.listen(callback)
