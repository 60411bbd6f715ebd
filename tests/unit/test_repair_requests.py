"""repair_bars answers (the ledger, per-symbol states) and the sweep's windows."""

from __future__ import annotations

import asyncio
import time

from services.datamanager.repair import RepairOutcome
from services.datamanager.repair_answers import RepairLedger, symbol_answer
from services.datamanager.repair_triggers import _windows

MIN = 60_000


def outcome(symbol: str, state: str, start: float = 0.0, rid: str | None = "r1", **counts: int) -> RepairOutcome:
    return RepairOutcome(symbol, state, "alpaca", rid, start, start + 60.0, **counts)  # type: ignore[arg-type]


def test_sweep_windows_join_minutes_close_together() -> None:
    assert _windows([]) == []
    assert _windows([0]) == [(0, MIN)]
    assert _windows([0, MIN, 2 * MIN]) == [(0, 3 * MIN)]
    assert _windows([0, 6 * MIN]) == [(0, 7 * MIN)]  # 5 minutes apart: one window
    assert _windows([0, 7 * MIN, 8 * MIN]) == [(0, MIN), (7 * MIN, 9 * MIN)]


def test_a_symbols_state_from_its_windows() -> None:
    assert symbol_answer([])["state"] == "no_answer"
    assert symbol_answer([outcome("A", "repaired", replaced=3, added=1)]) == {
        "state": "repaired", "source": "alpaca", "replaced": 3, "added": 1, "incomplete": 0, "reason": None,
    }  # fmt: skip
    assert symbol_answer([outcome("A", "repaired"), outcome("A", "partial", 60)])["state"] == "partial"
    assert symbol_answer([outcome("A", "repaired"), outcome("A", "out_of_reach", 60)])["state"] == "out_of_reach"
    failed = outcome("A", "failed", 60)
    failed.reason = "HTTP 503"
    got = symbol_answer([outcome("A", "repaired", replaced=2), failed])
    assert (got["state"], got["reason"], got["replaced"]) == ("incomplete", "HTTP 503", 2)


async def test_the_ledger_wakes_a_waiter_when_every_symbol_is_final() -> None:
    ledger = RepairLedger()
    stopping = asyncio.Event()
    waiter = asyncio.create_task(ledger.wait("r1", ["A", "B"], 5.0, stopping))
    ledger.record([outcome("A", "pending"), outcome("B", "repaired")])
    await asyncio.sleep(0)
    assert not waiter.done()  # A is still pending
    ledger.record([outcome("A", "repaired"), outcome("B", "repaired", rid="r2")])
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert [o.state for o in ledger.outcomes("r1", "A")] == ["repaired"]  # the latest per window


async def test_the_ledger_gives_up_at_the_timeout_and_on_stopping() -> None:
    ledger = RepairLedger()
    stopping = asyncio.Event()
    started = time.monotonic()
    assert await ledger.wait("r1", ["A"], 0.2, stopping) is False
    assert 0.15 < time.monotonic() - started < 2.0
    waiter = asyncio.create_task(ledger.wait("r1", ["A"], 30.0, stopping))
    await asyncio.sleep(0)
    stopping.set()
    assert await asyncio.wait_for(waiter, 1.0) is False


def test_the_ledger_is_bounded() -> None:
    ledger = RepairLedger(max_requests=2, max_outcomes=3)
    ledger.record([outcome("A", "repaired", rid="r1"), outcome("B", "repaired", rid="r1")])
    ledger.record([outcome("A", "repaired", rid="r2")])
    ledger.record([outcome("A", "repaired", rid="r3")])  # three requests: the oldest goes
    assert ledger.outcomes("r1", "A") == [] and ledger.outcomes("r3", "A")
    ledger.record([outcome(s, "repaired", rid="r4") for s in "ABCD"])  # four outcomes: past the cap
    assert ledger.outcomes("r2", "A") == [] and ledger.outcomes("r3", "A") == []
