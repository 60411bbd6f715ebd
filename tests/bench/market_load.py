"""A full-market tick load from a plain aiokafka producer, run as its own process: the raw
baseline of the full-market benchmark, and the part of its burst the sim feeder cannot make.

``python -m tests.bench.market_load --bootstrap H:P --topic T --rate CN=1823 --rate US=20000
[--burst-rate US=100000 --burst-at-s 20 --burst-s 10] --duration-s 40 [--slice 0/2]
[--drain] [--kafka '{json}']``

Symbols are the full-market lists (tests/bench/universe.py); each market's rate is spread
over its symbols round-robin, so each symbol ticks at ``rate / symbols``. CN and HK ticks are
snapshots (the day's cumulative volume grows), US ticks are trades (``last_size`` only), as
their real sources report. Each tick is stamped with the current time when it is handed to
the producer (as the sim does), keyed by symbol. ``--slice i/k`` takes every k-th symbol from
the i-th and 1/k of each rate: k processes together make the whole load (one Python producer
tops out near 80,000 msgs/s). ``--canary N --canary-rate R`` adds N symbols of its own
(``CANARY000``...) trading R/s in all, every trade of size 100, so what a datamanager stored of
them can be checked exactly against the topic. One JSON line says when sending began (epoch seconds), one at the
end what was sent in each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaProducer
from msgspec.structs import replace

from shared.config import KafkaSettings
from shared.dto import PriceUpdate, encode, utcnow
from shared.kafka import producer_options
from shared.symbols import Market
from tests.bench.paced_producer import _drain
from tests.bench.universe import full_market

SOURCE = "load"
CANARY_SIZE = 100.0  # every canary trade's size: a symbol's volume is 100 x its trades on the topic


def canary_symbols(n: int) -> list[str]:
    """``n`` US-form symbols outside the full-market lists, traded only by ``--canary``."""
    return [f"CANARY{i:03d}" for i in range(n)]


STEP_S = 0.01
MAX_CREDIT_S = 0.05  # a late step owes at most this much: behind, the load falls short (reported)
IN_FLIGHT = 20_000  # delivery futures held: pipelined, memory flat


def _rates(pairs: list[str], flag: str) -> dict[Market, float]:
    out: dict[Market, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[Market(name.strip().upper())] = float(value)
        except ValueError:
            raise SystemExit(f"{flag} expects MARKET=ticks_per_s (CN, HK or US), got {pair!r}") from None
        if not sep:
            raise SystemExit(f"{flag} expects MARKET=ticks_per_s, got {pair!r}")
    return out


def _templates(market: Market, symbols: list[str]) -> list[PriceUpdate]:
    """One starting tick per symbol: a price between 5 and 105, snapshots with a day's volume."""
    now = utcnow()
    out = []
    for i, s in enumerate(symbols):
        price = 5.0 + (i * 37 % 10_000) / 100
        if market is Market.US:
            out.append(PriceUpdate(symbol=s, price=price, timestamp=now, source=SOURCE, last_size=CANARY_SIZE))
        else:
            volume = 1_000_000.0 + i
            out.append(
                PriceUpdate(symbol=s, price=price, timestamp=now, source=SOURCE, volume=volume, amount=volume * price)
            )
    return out


class _Market:
    """Round-robin over one market's symbols at a rate; what it owes carries over steps."""

    def __init__(self, market: Market, symbols: list[str]) -> None:
        self.market = market
        self.templates = _templates(market, symbols)
        self.keys = [s.encode() for s in symbols]
        self.ticks = [0] * len(symbols)  # ticks sent per symbol (sequence, volume growth)
        self.next = 0
        self.owed = 0.0

    def due(self, rate: float, seconds: float) -> int:
        self.owed += rate * seconds
        n = int(self.owed)
        self.owed -= n
        return n

    def tick(self, i: int, now: Any) -> bytes:
        t = self.templates[i]
        n = self.ticks[i] = self.ticks[i] + 1
        price = round(t.price * (1.0 + (n % 21 - 10) / 2000.0), 2)
        if t.volume is None:
            return encode(replace(t, price=price, timestamp=now, receive_time=now, sequence=n))
        volume = t.volume + 100.0 * n
        return encode(
            replace(t, price=price, volume=volume, amount=volume * price, timestamp=now, receive_time=now, sequence=n)
        )


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    kafka = KafkaSettings.model_validate({**json.loads(args.kafka), "bootstrap_servers": args.bootstrap})
    index, _, count = args.slice.partition("/")
    i, k = int(index), int(count or 1)
    rates = {m: r / k for m, r in _rates(args.rate, "--rate").items()}
    burst_rates = {m: r / k for m, r in _rates(args.burst_rate, "--burst-rate").items()}
    universe = full_market()
    wanted = set(rates) | set(burst_rates)
    markets = [_Market(m, universe[m][i::k]) for m in Market if m in wanted]
    canary: _Market | None = None
    if args.canary:
        canary = _Market(Market.US, canary_symbols(args.canary)[i::k])
        markets.append(canary)
    canary_rate = args.canary_rate / k
    producer = AIOKafkaProducer(**producer_options(kafka, f"bench-market-load-{i}"))
    await producer.start()
    drain = asyncio.create_task(_drain(kafka, args.topic), name="bench.drain") if args.drain else None
    phases: dict[str, dict[str, float]] = {"steady": {"sent": 0, "seconds": 0.0}, "burst": {"sent": 0, "seconds": 0.0}}
    try:
        await producer.partitions_for(args.topic)
        print(json.dumps({"started_at": time.time()}), flush=True)  # the burst's clock starts here
        send = producer.send
        topic = args.topic
        in_flight: deque[asyncio.Future[Any]] = deque()
        started = time.monotonic()
        burst_from, burst_to = args.burst_at_s, args.burst_at_s + args.burst_s
        last = started
        next_step = started
        while (now_s := time.monotonic()) - started < args.duration_s:
            elapsed = now_s - started
            phase = "burst" if burst_rates and burst_from <= elapsed < burst_to else "steady"
            step_rates = {**rates, **burst_rates} if phase == "burst" else rates
            seconds = now_s - last
            last = now_s
            phases[phase]["seconds"] += seconds
            now = utcnow()
            for mk in markets:
                rate = canary_rate if mk is canary else step_rates.get(mk.market, 0.0)
                n = mk.due(rate, min(seconds, MAX_CREDIT_S))
                size = len(mk.keys)
                for _ in range(n):
                    j = mk.next
                    mk.next = (j + 1) % size
                    in_flight.append(await send(topic, mk.tick(j, now), key=mk.keys[j]))
                    if len(in_flight) >= IN_FLIGHT:
                        await in_flight.popleft()
                phases[phase]["sent"] += n
            while in_flight and in_flight[0].done():
                in_flight.popleft().result()
            next_step += STEP_S
            await asyncio.sleep(max(next_step - time.monotonic(), 0.0))  # pacing of the load generator
        for f in in_flight:
            await f
    finally:
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        await producer.stop()
    for p in phases.values():
        p["per_s"] = round(p["sent"] / p["seconds"]) if p["seconds"] else 0.0
        p["seconds"] = round(p["seconds"], 3)
    return {"slice": args.slice, "phases": phases}


def main(argv: list[str] | None = None) -> int:
    from tests.bench.harness import run_in_loop

    p = argparse.ArgumentParser(prog="python -m tests.bench.market_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", action="append", default=[], metavar="MARKET=PER_S", help="steady ticks/s of a market")
    p.add_argument(
        "--burst-rate", action="append", default=[], metavar="MARKET=PER_S", help="a market's ticks/s in the burst"
    )
    p.add_argument("--burst-at-s", type=float, default=0.0, help="when the burst begins, from the start")
    p.add_argument("--burst-s", type=float, default=0.0, help="how long the burst lasts")
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--slice", default="0/1", help="i/k: this process's share of the symbols and rates")
    p.add_argument("--canary", type=int, default=0, help="also trade this many CANARY symbols (size 100 each)")
    p.add_argument("--canary-rate", type=float, default=0.0, help="their trades/s, in every phase")
    p.add_argument("--drain", action="store_true", help="also read the topic like the datamanager does")
    p.add_argument("--kafka", default="{}", help="KafkaSettings fields as JSON")
    result = run_in_loop(produce(p.parse_args(argv)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
