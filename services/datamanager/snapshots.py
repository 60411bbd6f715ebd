"""Snapshots: the ``bar_snapshot`` command and snapshot-on-subscribe.

``bar_snapshot`` publishes the bars of every subscribed symbol of the asked markets and
day, merged from ClickHouse and this process's memory (memory is at least as new: it
holds what is not flushed yet); a store that fails is named in the result and memory
answers alone. Snapshot-on-subscribe publishes the latest known price of symbols a
subscriber just added, marked ``snapshot`` (the aggregator's first, then the state store's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import Any

import msgspec

from services.datamanager.bars import BarAggregator, row_bar
from services.datamanager.barstore import ClickHouseBars
from services.datamanager.interest import SubscribedSymbols
from services.datamanager.ownership import Ownership
from services.datamanager.state import DatamanagerState
from shared.commands import BarSnapshotParams, ParamError
from shared.dto import Bar, ControlCommand, utcnow
from shared.kafka import KafkaPublisher
from shared.logs import kv
from shared.sessions import trading_day
from shared.topics import Topics

log = logging.getLogger("datamanager.snapshots")


class Snapshots:
    """Publishes bars and latest prices on market data from the store plus memory.

    ``bars()`` reads the live aggregator each time (a takeover replaces it).
    """

    def __init__(
        self,
        topics: Topics,
        publisher: KafkaPublisher,
        registry: SubscribedSymbols,
        bars: Callable[[], BarAggregator],
        store: ClickHouseBars | None,
        state: DatamanagerState,
        ownership: Ownership,
    ) -> None:
        self._topics = topics
        self._publisher = publisher
        self._registry = registry
        self._bars = bars
        self._store = store
        self._state = state
        self._own = ownership

    async def bar_snapshot(self, cmd: ControlCommand, partitions: frozenset[int]) -> dict[str, Any]:
        """The ``bar_snapshot`` handler (params: market, date, period), for the subscribed
        symbols of ``partitions`` of market data."""
        try:
            p = BarSnapshotParams.parse(cmd.params)
        except ParamError as e:
            raise ValueError(f"bar_snapshot: {e}") from None
        now = utcnow()
        bars = self._bars()
        own = self._own
        items: list[tuple[str, Bar]] = []
        missing = 0
        per_market: dict[str, int] = {}
        from_store = 0
        store_error: str | None = None
        for market in p.markets:
            day = p.day or trading_day(market, now)
            symbols = sorted(s for s in self._registry.market_symbols(market) if own.partition(s) in partitions)
            stored: dict[str, dict[int, Bar]] = {}
            if self._store is not None and symbols:
                try:
                    for r in await self._store.read(day, p.period, symbols):
                        stored.setdefault(r.symbol, {})[r.start_ms] = row_bar(r)
                        from_store += 1
                except Exception as e:  # answer from memory, and say so
                    store_error = repr(e)[:200]
            for symbol in symbols:
                found = stored.get(symbol, {})
                for b in _in_memory(bars, symbol, day, p.period):
                    found[round(b.timestamp.timestamp() * 1000)] = b
                if not found:
                    missing += 1
                    continue
                items.extend((symbol, found[k]) for k in sorted(found))
                per_market[market.value] = per_market.get(market.value, 0) + len(found)
        await self._publisher.publish_many(self._topics.market_data, items)
        out: dict[str, Any] = {"bars": len(items), "missing": missing, "period": p.period, "markets": per_market}
        if self._store is not None:
            out["from_store"] = from_store
            if store_error:
                out["store_error"] = store_error
        return out

    async def latest_prices(self, symbols: set[str]) -> None:
        """Snapshot-on-subscribe: the latest known price of newly added symbols, marked."""
        found = {t.symbol: t for t in self._bars().latest_ticks(symbols)}
        missing = symbols - found.keys()
        if missing:
            try:
                found.update(await self._state.load_latest(missing))
            except Exception as e:
                log.warning("latest prices unavailable", extra=kv(error=repr(e)))
        if not found:
            return
        items = [(s, msgspec.structs.replace(t, snapshot=True)) for s, t in found.items()]
        await self._publisher.publish_many(self._topics.market_data, items)


def _in_memory(bars: BarAggregator, symbol: str, day: date, period: str) -> list[Bar]:
    if period == "1d":
        bar = bars.daily_bar(symbol, day)
        return [bar] if bar is not None else []
    return bars.minute_bars(symbol, day)
