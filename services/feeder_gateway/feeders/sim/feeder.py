"""The sim feeder: seeded random walk per symbol, bid/ask around last, cumulative volume."""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from services.feeder_gateway.feeders.base import Feeder, FeederContext
from services.feeder_gateway.feeders.history import MinuteHistory
from services.feeder_gateway.feeders.sim.history import Row, SimMinutes
from services.feeder_gateway.feeders.sim.settings import SimSettings
from shared.dto import PriceUpdate, utcnow
from shared.sessions import trading_day
from shared.symbols import MARKET_TIMEZONES, Market
from shared.tasks import sleep_or_stop

_PRICE_RANGE = {Market.CN: (3.0, 80.0), Market.HK: (5.0, 400.0), Market.US: (10.0, 500.0)}
_LOT = {Market.CN: 100, Market.HK: 100, Market.US: 1}


@dataclass(slots=True)
class _Walk:
    cents: int  # last price in cents
    open: int
    high: int
    low: int
    volume: int  # day cumulative, shares
    amount_cents: int  # day cumulative turnover, cents
    credit: float  # ticks owed
    day: object
    # the open minute (for the history): start (epoch s, -1: none), o/h/l in cents (0: no
    # tick yet), the cumulative volume and amount when it opened
    m_start: float = -1.0
    m_open: int = 0
    m_high: int = 0
    m_low: int = 0
    m_vol0: int = 0
    m_amt0: int = 0

    def minute_row(self) -> Row:
        return (
            self.m_start,
            self.m_open / 100,
            self.m_high / 100,
            self.m_low / 100,
            self.cents / 100,
            float(self.volume - self.m_vol0),
            (self.amount_cents - self.m_amt0) / 100,
        )


NOMINAL_TRADES_PER_S = 2.0  # the rate behind the day's starting volume, whatever the tick rate


def traded_so_far(now: datetime, market: Market, lot: int) -> int:
    """The shares a symbol has traded by ``now`` today at a nominal rate (trade sizes
    average 10.5 lots): a pure function of the clock, so a restart does not reset the day.
    Nominal, not the configured tick rate: a benchmark's 100,000 ticks/s would otherwise
    start the day at volumes no exchange reports."""
    local = now.astimezone(MARKET_TIMEZONES[market])
    elapsed_s = local.hour * 3600 + local.minute * 60 + local.second
    return int(elapsed_s * NOMINAL_TRADES_PER_S * 10.5) * lot


class SimFeeder(Feeder[SimSettings]):
    """Random walks; every symbol's start price is a pure function of (seed, symbol)."""

    type_name = "sim"
    settings_model = SimSettings
    follows_sessions = False  # the synthetic market never closes

    def __init__(self, settings: SimSettings, ctx: FeederContext) -> None:
        super().__init__(settings, ctx)
        self._walks: dict[str, _Walk] = {}
        self._minutes = SimMinutes(ctx.name, settings.history_minutes, self._open_minute)

    @property
    def stale_after_s(self) -> float | None:
        return self.settings.stale_after_s

    def history(self) -> MinuteHistory:
        """The minutes of the ticks this feeder generated (``history.py``)."""
        return self._minutes

    def _open_minute(self, symbol: str) -> Row | None:
        w = self._walks.get(symbol)
        return w.minute_row() if w is not None and w.m_open else None

    def _start_cents(self, symbol: str) -> int:
        lo, hi = _PRICE_RANGE[self.ctx.market]
        r = random.Random(zlib.crc32(symbol.encode()) ^ self.settings.seed)
        return round(r.uniform(lo, hi) * 100)

    async def ticks(self) -> AsyncIterator[list[PriceUpdate]]:
        s = self.settings
        rng = random.Random(s.seed)
        walks: dict[str, _Walk] = {}
        self._walks = walks
        minutes = self._minutes
        self.symbols_changed.set()  # a restarted generator starts walks for the wanted set
        interval = s.interval_ms / 1000.0
        per_step = s.ticks_per_s_per_symbol * interval
        vol = s.volatility_bps / 10_000.0
        lot = _LOT[self.ctx.market]
        max_batch = s.max_batch
        market = self.ctx.market
        name = self.ctx.name
        loop = asyncio.get_running_loop()
        self.connected = True
        self.ctx.emit_status("connected", {"symbols": len(self.symbols)})
        try:
            next_step = loop.time()
            while True:
                if self.symbols_changed.is_set():
                    self.symbols_changed.clear()
                    wanted = self.symbols
                    for sym in list(walks):
                        if sym not in wanted:
                            del walks[sym]
                    minutes.keep_only(wanted)
                    for sym in wanted:
                        if sym not in walks:
                            c = self._start_cents(sym)
                            # a new symbol ticks at the next step (interest → first tick is
                            # fast), then at a random phase so symbols do not tick in lockstep
                            walks[sym] = _Walk(
                                c, c, c, c, 0, 0, 1.0 - per_step + rng.random() * min(per_step, 1.0), None
                            )
                if not walks:
                    await self.symbols_changed.wait()
                    next_step = loop.time()
                    continue
                now = utcnow()
                day = trading_day(market, now)
                now_s = now.timestamp()
                minute = now_s - now_s % 60.0
                batch: list[PriceUpdate] = []
                append = batch.append
                gauss = rng.gauss
                rand = rng.random
                for sym, w in walks.items():
                    w.credit += per_step
                    if w.credit < 1.0:
                        continue
                    if w.day != day:  # a new trading day (or a new symbol): the day's figures start
                        w.day, w.open, w.high, w.low = day, w.cents, w.cents, w.cents
                        # as if it had traded since midnight: a restarted gateway reports the
                        # day's cumulative volume going on, not from zero, as a real source would
                        w.volume = traded_so_far(now, market, lot)
                        w.amount_cents = w.volume * w.cents
                    if w.m_start != minute:  # a new minute: the finished one goes to the history
                        if w.m_open:
                            minutes.add(sym, w.minute_row())
                        w.m_start, w.m_open, w.m_vol0, w.m_amt0 = minute, 0, w.volume, w.amount_cents
                    # integer cents: exact prices and cheap arithmetic on the hot path
                    while w.credit >= 1.0:
                        w.credit -= 1.0
                        cents = max(1, w.cents + round(w.cents * gauss(0.0, vol)))
                        size = (1 + int(rand() * 20)) * lot
                        w.cents = cents
                        if cents > w.high:
                            w.high = cents
                        elif cents < w.low:
                            w.low = cents
                        w.volume += size
                        w.amount_cents += size * cents
                        if w.m_open:
                            if cents > w.m_high:
                                w.m_high = cents
                            elif cents < w.m_low:
                                w.m_low = cents
                        else:
                            w.m_open = w.m_high = w.m_low = cents
                        append(
                            PriceUpdate(
                                symbol=sym,
                                price=cents / 100,
                                timestamp=now,
                                source=name,
                                volume=float(w.volume),
                                amount=w.amount_cents / 100,
                                bid_price=(cents - 1) / 100,
                                ask_price=(cents + 1) / 100,
                                bid_volume=float((1 + int(rand() * 50)) * lot),
                                ask_volume=float((1 + int(rand() * 50)) * lot),
                                open_price=w.open / 100,
                                high_price=w.high / 100,
                                low_price=w.low / 100,
                                receive_time=now,
                                last_size=float(size),
                            )
                        )
                        if len(batch) >= max_batch:
                            yield batch
                            batch = []
                            append = batch.append
                if batch:
                    yield batch
                next_step += interval
                delay = next_step - loop.time()
                if delay < -1.0:  # fell far behind (paused, overloaded): do not burst to catch up
                    next_step = loop.time()
                    delay = 0.0
                if delay > 0:
                    await sleep_or_stop(self.symbols_changed, delay)  # a change of symbols wakes it
                else:
                    await asyncio.sleep(0)  # let the publisher run between batches
        finally:
            self.connected = False
            for sym, w in walks.items():  # a restart starts new walks: keep what was traded
                if w.m_open:
                    minutes.add(sym, w.minute_row())
                    w.m_open = 0
