"""Benchmarks (`make bench`): throughput and latency figures, each beside a baseline from the same run.

One module per benchmark; each exposes ``NAME``, ``TITLE``, ``NEEDS_BROKER`` and
``async def run(ctx) -> list[Figure]``. ``python -m tests.bench`` runs them, prints a
table and writes ``bench/results.json``. Benchmarks print figures; they never fail CI.
"""
