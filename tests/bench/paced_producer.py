"""A paced raw-aiokafka tick producer, run as its own process: the latency baseline's source.

``python -m tests.bench.paced_producer --bootstrap H:P --topic T --symbols 50
--ticks-per-s-per-symbol 100 --interval-ms 10 --duration-s 40 [--drain] [--kafka '{json}']``

Every step it stamps one tick per symbol with the current time (as the sim does) and
hands them to a plain AIOKafkaProducer built from ``producer_options`` of the same
KafkaSettings the services get; no queue, no TickPublisher, no KafkaPublisher.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from msgspec.structs import replace

from shared.config import KafkaSettings
from shared.dto import PriceUpdate, encode, utcnow
from shared.kafka import assign_all, consumer_options, producer_options
from shared.symbols import Market
from tests.bench.harness import run_in_loop
from tests.bench.ticks import sim_ticks


async def _drain(kafka: KafkaSettings, topic: str) -> None:
    """Read the topic like the datamanager's tick consumer (services' fetch settings), so the
    broker serves as many fetchers as in the system run."""
    consumer = AIOKafkaConsumer(**consumer_options(kafka, "bench-paced-drain"))
    await consumer.start()
    try:
        await consumer.seek_to_beginning(*await assign_all(consumer, topic, wait_s=10))
        while True:
            await consumer.getmany(timeout_ms=200, max_records=10_000)
    finally:
        await consumer.stop()


async def produce(args: argparse.Namespace) -> int:
    kafka = KafkaSettings.model_validate({**json.loads(args.kafka), "bootstrap_servers": args.bootstrap})
    symbols = [f"P{i:05d}" for i in range(args.symbols)]
    templates: list[PriceUpdate] = await sim_ticks({Market.US: symbols}, len(symbols))
    keys = [t.symbol.encode() for t in templates]
    per_step = max(1, round(args.ticks_per_s_per_symbol * args.interval_ms / 1000.0))
    producer = AIOKafkaProducer(**producer_options(kafka, "bench-paced-producer"))
    await producer.start()
    drain = asyncio.create_task(_drain(kafka, args.topic), name="bench.drain") if args.drain else None
    sent = 0
    try:
        await producer.partitions_for(args.topic)
        loop = asyncio.get_running_loop()
        interval = args.interval_ms / 1000.0
        end = loop.time() + args.duration_s
        next_step = loop.time()
        in_flight: deque[asyncio.Future[Any]] = deque()
        sequence = 0
        while loop.time() < end:
            now = utcnow()
            sequence += 1
            for _ in range(per_step):
                for key, t in zip(keys, templates, strict=True):
                    value = encode(replace(t, timestamp=now, receive_time=now, sequence=sequence))
                    in_flight.append(await producer.send(args.topic, value, key=key))
                    sent += 1
            while in_flight and in_flight[0].done():
                in_flight.popleft().result()
            next_step += interval
            delay = next_step - loop.time()
            await asyncio.sleep(max(delay, 0.0))  # pacing of the load generator
        for f in in_flight:
            await f
    finally:
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        await producer.stop()
    print(json.dumps({"sent": sent}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.paced_producer", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--ticks-per-s-per-symbol", type=float, default=100.0)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--drain", action="store_true", help="also read the topic like the datamanager does")
    p.add_argument("--kafka", default="{}", help="KafkaSettings fields as JSON")
    return run_in_loop(produce(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
