"""A strategy node reading a few symbols, in its own process, measuring what that costs it:
bytes read from its sockets and CPU seconds over a window.

``python -m tests.bench.client_probe --bootstrap H:P --prefix P --mode aware|all
--symbols A,B,C --seconds 20 [--warmup-s 3] [--kafka '{json}']``

``aware``: the client SDK (``LiveDataClient``), which reads only the partitions of its
symbols. ``all``: what a node did before it knew the partitioner: a plain consumer assigned
every market-data partition, keeping the records of its symbols (decoded) and skipping the
rest, with the SDK's fetch settings. Bytes are the growth of ``rchar`` in /proc/self/io
(what read() returned, sockets included: Kafka's fetch responses as they came off the wire,
compressed) and CPU is user + system time of this process, both over the window only. One
JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from shared.client import LiveDataClient
from shared.config import KafkaSettings
from shared.dto import Bar, DecodeError, PriceUpdate, decode
from shared.kafka import assign_all, consumer_options
from shared.topics import Topics


def read_bytes() -> int:
    """Bytes this process has read through read() so far (``rchar``)."""
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Window:
    """Bytes, CPU and updates counted between ``open()`` and ``close()``."""

    def __init__(self) -> None:
        self.updates = 0
        self._start: tuple[float, float, int] | None = None
        self.result: dict[str, Any] = {}

    def open(self) -> None:
        self.updates = 0
        self._start = (time.monotonic(), cpu_s(), read_bytes())

    def close(self) -> dict[str, Any]:
        assert self._start is not None
        t0, c0, b0 = self._start
        wall, cpu, read = time.monotonic() - t0, cpu_s() - c0, read_bytes() - b0
        self.result = {
            "seconds": round(wall, 3),
            "bytes_read": read,
            "bytes_per_s": round(read / wall),
            "cpu_s": round(cpu, 3),
            "cpu_share": round(cpu / wall, 3),
            "updates": self.updates,
        }
        return self.result


async def _aware(args: argparse.Namespace, kafka: KafkaSettings, symbols: list[str], window: _Window) -> dict[str, Any]:
    async with LiveDataClient("", "bench", f"probe-{args.mode}", topics=Topics(args.prefix), kafka=kafka) as client:
        await client.subscribe(symbols)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.warmup_s
        while loop.time() < deadline:
            with_timeout = deadline - loop.time()
            try:
                await asyncio.wait_for(client.next_batch(), max(with_timeout, 0.01))
            except TimeoutError:
                break
        window.open()
        end = loop.time() + args.seconds
        while (left := end - loop.time()) > 0:
            try:
                batch = await asyncio.wait_for(client.next_batch(), left)
            except TimeoutError:
                break
            window.updates += sum(isinstance(u, PriceUpdate | Bar) for u in batch)
        out = window.close()
        out["partitions"] = sorted(client.partitions)
        out["partition_count"] = client.partition_count
        return out


async def _all(args: argparse.Namespace, kafka: KafkaSettings, symbols: list[str], window: _Window) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(**consumer_options(kafka, f"bench-probe-{args.mode}"))
    await consumer.start()
    try:
        tps = await assign_all(consumer, Topics(args.prefix).market_data)
        await consumer.seek_to_end(*tps)
        wanted = {s.encode() for s in symbols}
        loop = asyncio.get_running_loop()
        phase_end = loop.time() + args.warmup_s
        opened = False
        while True:
            if loop.time() >= phase_end:
                if opened:
                    break
                window.open()
                opened = True
                phase_end = loop.time() + args.seconds
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for r in records:
                    if r.key not in wanted:
                        continue
                    try:
                        msg = decode(r.value or b"")
                    except DecodeError:
                        continue
                    if opened and isinstance(msg, PriceUpdate | Bar):
                        window.updates += 1
        out = window.close()
        out["partitions"] = sorted(tp.partition for tp in tps)
        out["partition_count"] = len(tps)
        return out
    finally:
        await consumer.stop()


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    kafka = KafkaSettings.model_validate({**json.loads(args.kafka), "bootstrap_servers": args.bootstrap})
    symbols = [s for s in args.symbols.split(",") if s]
    window = _Window()
    run = _aware if args.mode == "aware" else _all
    out = await run(args, kafka, symbols, window)
    return {"mode": args.mode, "symbols": len(symbols), **out}


def main(argv: list[str] | None = None) -> int:
    from tests.bench.harness import run_in_loop

    p = argparse.ArgumentParser(prog="python -m tests.bench.client_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True, help="the topic prefix")
    p.add_argument("--mode", choices=["aware", "all"], required=True)
    p.add_argument("--symbols", required=True, help="comma-separated canonical symbols")
    p.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    p.add_argument("--warmup-s", type=float, default=3.0, help="read this long before the window opens")
    p.add_argument("--kafka", default="{}", help="KafkaSettings fields as JSON")
    result = run_in_loop(probe(p.parse_args(argv)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
