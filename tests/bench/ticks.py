"""Pre-generated ticks: the sim feeder's own random walks, driven outside a gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import cast

from msgspec.structs import force_setattr

from services.feeder_gateway.feeders.base import FeederContext, FeederMetrics
from services.feeder_gateway.feeders.sim.feeder import SimFeeder
from services.feeder_gateway.feeders.sim.settings import SimSettings
from shared.dto import PriceUpdate, encode
from shared.metrics import ServiceMetrics
from shared.symbols import Market

# One tick per symbol per generation step, steps back to back: as fast as Python goes.
FULL_SPEED = {"ticks_per_s_per_symbol": 100_000.0, "interval_ms": 0.01}


def sim_feeder(market: Market, seed: int = 7, **settings: float) -> SimFeeder:
    """A SimFeeder with a do-nothing status sink and its own metrics registry."""
    metrics = FeederMetrics(ServiceMetrics("bench"))
    ctx = FeederContext(name="sim", market=market, emit_status=lambda state, detail: None, metrics=metrics)
    return SimFeeder(SimSettings(seed=seed, stale_after_s=None, **settings), ctx)


async def sim_ticks(symbols: dict[Market, list[str]], count: int) -> list[PriceUpdate]:
    """``count`` ticks from sim random walks over ``symbols``, markets in proportion to
    their symbol counts, each stamped with its per-symbol sequence like the gateway does."""
    total_symbols = sum(len(s) for s in symbols.values())
    out: list[PriceUpdate] = []
    for i, (market, syms) in enumerate(symbols.items()):
        want = count - len(out) if i == len(symbols) - 1 else count * len(syms) // total_symbols
        feeder = sim_feeder(market, seed=7 + i, **FULL_SPEED)
        feeder.set_symbols(frozenset(syms))
        got: list[PriceUpdate] = []
        gen = cast(AsyncGenerator[list[PriceUpdate], None], feeder.ticks())
        async with contextlib.aclosing(gen):
            async for batch in gen:
                got.extend(batch[: want - len(got)])
                if len(got) >= want:
                    break
        out.extend(got)
    sequence: dict[str, int] = {}
    for t in out:
        n = sequence[t.symbol] = sequence.get(t.symbol, 0) + 1
        force_setattr(t, "sequence", n)  # our own fresh objects, as in ConflatingTickQueue
    return out


def encoded(ticks: list[PriceUpdate]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs exactly as TickPublisher builds them."""
    return [(t.symbol.encode(), encode(t)) for t in ticks]
