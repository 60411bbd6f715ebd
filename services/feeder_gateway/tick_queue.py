"""The bounded buffer between feeders and the publisher; conflates per symbol when full.

Policy: while fewer than ``maxsize`` ticks wait, every tick is kept in arrival order.
Once the buffer is full, ticks go to an overflow map keyed by symbol where the newest
replaces an older one (each replacement counted as conflated) until the publisher has
drained everything. Per-symbol order is kept: overflow entries are always newer than
the FIFO's and are taken after it. Memory is bounded by ``maxsize`` plus one tick per
subscribed symbol. Putting never blocks, so a slow broker never stalls a provider socket.
"""

from __future__ import annotations

import asyncio
from collections import deque

from msgspec.structs import force_setattr

from shared.dto import PriceUpdate


class ConflatingTickQueue:
    """A bounded tick buffer: FIFO while there is room, latest-per-symbol beyond it."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._fifo: deque[PriceUpdate] = deque()
        self._overflow: dict[str, PriceUpdate] = {}
        self._ready = asyncio.Event()
        self._closed = False
        self._sequence: dict[str, int] = {}
        self.accepted = 0
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._fifo) + len(self._overflow)

    def put_batch(self, ticks: list[PriceUpdate]) -> None:
        """Accept ticks without waiting; stamps each with its per-symbol sequence."""
        if self._closed:
            return
        seq = self._sequence
        for t in ticks:
            n = seq.get(t.symbol, 0) + 1
            seq[t.symbol] = n
            force_setattr(t, "sequence", n)  # our own fresh object, not yet shared
        self.accepted += len(ticks)
        fifo, overflow = self._fifo, self._overflow
        if not overflow and len(fifo) + len(ticks) <= self.maxsize:
            fifo.extend(ticks)
        else:
            for t in ticks:
                if not overflow and len(fifo) < self.maxsize:
                    fifo.append(t)
                else:
                    if t.symbol in overflow:
                        self.conflated += 1
                    overflow[t.symbol] = t
        self._ready.set()

    async def get_batch(self, max_items: int) -> list[PriceUpdate]:
        """Wait for ticks and take up to ``max_items``; [] once closed and empty."""
        while not self._fifo and not self._overflow:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        out: list[PriceUpdate] = []
        fifo = self._fifo
        n = min(max_items, len(fifo))
        if n == len(fifo):
            out.extend(fifo)
            fifo.clear()
        else:
            pop = fifo.popleft
            out.extend(pop() for _ in range(n))
        room = max_items - len(out)
        if room > 0 and self._overflow:
            overflow = self._overflow
            if room >= len(overflow):
                out.extend(overflow.values())
                overflow.clear()
            else:
                for sym in list(overflow)[:room]:
                    out.append(overflow.pop(sym))
        return out

    def close(self) -> None:
        """No more puts; ``get_batch`` drains what is left, then returns []."""
        self._closed = True
        self._ready.set()
