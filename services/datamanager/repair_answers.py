"""The ``repair_bars`` command's answer: what the provider's history did per symbol.

The gateway acts on the command (it reads control commands too) and publishes HistoryBars
with ``request_id`` = the command's correlation_id; the tick intake merges and stores
them and hands their outcomes to the ``RepairLedger`` (recent requests, bounded). The
handler waits, beside the command loop, until every symbol it answers for has a final
answer (repaired, partial or out_of_reach) or ``timeout_s`` passed, then says per symbol:

    {"state": repaired | partial | incomplete | out_of_reach | no_answer, "source": str,
     "replaced": n, "added": n, "incomplete": n (minutes), "reason": str | None}

and totals: {"symbols": n, "states": {state: n}, "replaced": n, "added": n, "incomplete": n}.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from services.datamanager.interest import SubscribedSymbols
from services.datamanager.ownership import Ownership
from services.datamanager.repair import RepairOutcome
from shared.commands import ParamError, RepairBarsParams
from shared.dto import ControlCommand
from shared.tasks import wait_first

MAX_REQUESTS = 1000
"""Repair requests whose outcomes are kept (the oldest are forgotten)."""
MAX_OUTCOMES = 200_000
"""Outcomes kept over all requests (a request for 10,000 symbols holds 10,000)."""
MAX_LISTED = 1000
"""Symbols listed one by one in an answer (the rest are in the totals; unrepaired ones first)."""

Window = tuple[float, float]


class RepairLedger:
    """Outcomes of recent repair requests, per request, symbol and window (the latest of each)."""

    def __init__(self, max_requests: int = MAX_REQUESTS, max_outcomes: int = MAX_OUTCOMES) -> None:
        self._max_requests = max_requests
        self._max_outcomes = max_outcomes
        self._by_request: OrderedDict[str, dict[str, dict[Window, RepairOutcome]]] = OrderedDict()
        self._count = 0
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def record(self, outcomes: Iterable[RepairOutcome]) -> None:
        """Outcomes merged and stored (called after the flush that stored them)."""
        woken: set[str] = set()
        for o in outcomes:
            rid = o.request_id
            if rid is None:
                continue
            per_symbol = self._by_request.get(rid)
            if per_symbol is None:
                per_symbol = self._by_request[rid] = {}
            windows = per_symbol.setdefault(o.symbol, {})
            if (o.start, o.end) not in windows:
                self._count += 1
            windows[(o.start, o.end)] = o
            woken.add(rid)
        while self._by_request and (len(self._by_request) > self._max_requests or self._count > self._max_outcomes):
            _, dropped = self._by_request.popitem(last=False)
            self._count -= sum(len(w) for w in dropped.values())
        for rid in woken:
            for event in self._waiters.get(rid, ()):
                event.set()

    def outcomes(self, request_id: str, symbol: str) -> list[RepairOutcome]:
        return list(self._by_request.get(request_id, {}).get(symbol, {}).values())

    def _all_final(self, request_id: str, symbols: list[str]) -> bool:
        per_symbol = self._by_request.get(request_id)
        if per_symbol is None:
            return not symbols
        for s in symbols:
            windows = per_symbol.get(s)
            if not windows or not all(o.final for o in windows.values()):
                return False
        return True

    async def wait(self, request_id: str, symbols: list[str], timeout_s: float, stopping: asyncio.Event) -> bool:
        """Until every one of ``symbols`` has only final outcomes for ``request_id``, or
        ``timeout_s`` passed, or ``stopping`` is set; True if all are final."""
        event = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(event)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                event.clear()
                if self._all_final(request_id, symbols):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stopping.is_set():
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wait_first(event, stopping), remaining)
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[request_id]


def symbol_answer(outcomes: list[RepairOutcome]) -> dict[str, Any]:
    """One symbol's part of the answer from its windows' latest outcomes."""
    if not outcomes:
        return {"state": "no_answer", "source": None, "replaced": 0, "added": 0, "incomplete": 0, "reason": None}
    states = {o.state for o in outcomes}
    if not all(o.final for o in outcomes):
        state = "incomplete"  # pending, or the provider's history failed (the gateway retries)
    elif "out_of_reach" in states:
        state = "out_of_reach"
    elif "partial" in states:
        state = "partial"
    else:
        state = "repaired"
    reasons = [o.reason for o in outcomes if o.reason]
    return {
        "state": state,
        "source": outcomes[-1].source,
        "replaced": sum(o.replaced for o in outcomes),
        "added": sum(o.added for o in outcomes),
        "incomplete": sum(o.incomplete for o in outcomes),
        "reason": reasons[-1] if reasons else None,
    }


class RepairAnswers:
    """The ``repair_bars`` handler (registered as one that waits)."""

    def __init__(
        self,
        ledger: RepairLedger,
        registry: SubscribedSymbols,
        ownership: Ownership,
        stopping: asyncio.Event,
    ) -> None:
        self._ledger = ledger
        self._registry = registry
        self._own = ownership
        self._stopping = stopping

    async def repair_bars(self, cmd: ControlCommand, partitions: frozenset[int]) -> dict[str, Any]:
        """Wait for the gateway's repair of the symbols of ``partitions`` asked for (or every
        subscribed one of the market), then say per symbol what it did."""
        try:
            p = RepairBarsParams.parse(cmd.params)
        except ParamError as e:
            raise ValueError(f"repair_bars: {e}") from None
        own = self._own
        asked = p.symbols or tuple(self._registry.market_symbols(p.market))
        symbols = sorted(s for s in asked if own.partition(s) in partitions)
        started = time.monotonic()
        done = await self._ledger.wait(cmd.correlation_id, symbols, p.timeout_s, self._stopping)
        per_symbol = {s: symbol_answer(self._ledger.outcomes(cmd.correlation_id, s)) for s in symbols}
        totals: dict[str, Any] = {"symbols": len(symbols), "states": {}, "replaced": 0, "added": 0, "incomplete": 0}
        for a in per_symbol.values():
            totals["states"][a["state"]] = totals["states"].get(a["state"], 0) + 1
            for k in ("replaced", "added", "incomplete"):
                totals[k] += a[k]
        order = sorted(per_symbol, key=lambda s: (per_symbol[s]["state"] in ("repaired", "partial"), s))
        out: dict[str, Any] = {
            "market": p.market.value,
            "from": p.start.isoformat(),
            "to": p.end.isoformat(),
            "complete": done,
            "waited_s": round(time.monotonic() - started, 3),
            "symbols": {s: per_symbol[s] for s in order[:MAX_LISTED]},
            "totals": totals,
        }
        if len(order) > MAX_LISTED:
            out["listed"] = MAX_LISTED  # unrepaired first; every symbol is in the totals
        if not done and self._stopping.is_set():
            out["stopped"] = True  # answered early: this instance is stopping
        return out
