"""One request pacer per provider host: live requests and history requests share its budget.

Providers ban or throttle clients that ask too fast (EastMoney bans IPs, Alpaca answers 429
beyond its plan's requests a minute). Every request of every source to one host waits its
turn at that host's one ``RequestPacer`` (``host_pacer``), so two sources, or a live poll and
a history fetch, together never go faster than the pacer; a ban seen by one holds all.

History (gap repair) asks as ``background``: it takes a slot only when no live request is
waiting, and at most ``background_share`` of the host's slots, so a repair can never starve
the live feed.
"""

from __future__ import annotations

import asyncio
import random
import weakref

from yarl import URL


class RequestPacer:
    """Spaces requests ``min_interval_s`` plus a random jitter apart; ``hold`` pushes the
    next slot out (a ban)."""

    def __init__(self, min_interval_s: float, jitter_s: float, background_share: float = 0.5) -> None:
        self.min_interval_s = min_interval_s
        self.jitter_s = jitter_s
        self.background_share = background_share
        self._rng = random.Random()
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._next_background = 0.0
        self._live_waiting = 0
        self._live_done = asyncio.Event()
        self._live_done.set()

    def tighten(self, min_interval_s: float, jitter_s: float) -> None:
        """Another source of the host: the slower of the two settings applies."""
        self.min_interval_s = max(self.min_interval_s, min_interval_s)
        self.jitter_s = max(self.jitter_s, jitter_s)

    async def wait(self, background: bool = False) -> None:
        """Wait for this request's slot (``background``: after every waiting live request,
        and no more often than ``min_interval_s / background_share``)."""
        loop = asyncio.get_running_loop()
        if not background:
            self._live_waiting += 1
            self._live_done.clear()
            try:
                await self._take(loop)
            finally:
                self._live_waiting -= 1
                if not self._live_waiting:
                    self._live_done.set()
            return
        while True:
            await self._live_done.wait()
            delay = self._next_background - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            async with self._lock:
                if self._live_waiting:  # a live request came meanwhile: it goes first
                    continue
                await self._slot(loop)
                self._next_background = loop.time() + self.min_interval_s / max(self.background_share, 0.01)
                return

    async def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        async with self._lock:
            await self._slot(loop)

    async def _slot(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self._next - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next = loop.time() + self.min_interval_s + self._rng.uniform(0, self.jitter_s)

    def hold(self, delay_s: float) -> None:
        self._next = max(self._next, asyncio.get_running_loop().time() + delay_s)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RequestPacer]] = weakref.WeakKeyDictionary()


def host_pacer(url: str, min_interval_s: float, jitter_s: float = 0.0) -> RequestPacer:
    """The pacer of ``url``'s host (and port) in the running event loop (created on first
    use; a later caller with slower settings tightens it)."""
    host = URL(url).authority
    by_host = _pacers.setdefault(asyncio.get_running_loop(), {})
    pacer = by_host.get(host)
    if pacer is None:
        pacer = by_host[host] = RequestPacer(min_interval_s, jitter_s)
    else:
        pacer.tighten(min_interval_s, jitter_s)
    return pacer
