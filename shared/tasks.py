"""Owning tasks and waiting on a stop event: cancel without swallowing our own
cancellation, sleep that a stop cuts short, and retry until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from shared.backoff import Backoff
from shared.logs import kv

T = TypeVar("T")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are done.

    Unlike ``suppress(CancelledError)`` around ``await task``, a cancellation of the
    caller itself still propagates; the tasks' own outcomes are collected (never
    re-raised), so no "exception was never retrieved" is logged for them.
    """
    owned = list(tasks)
    for t in owned:
        t.cancel()
    pending = [t for t in owned if not t.done()]
    if pending:
        await asyncio.wait(pending)
    for t in owned:
        if not t.cancelled():
            t.exception()


async def wait_first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait(), name="wait-first") for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(waiters)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True if stopped."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    return stop.is_set()


async def retry_until_stopped(
    op: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    what: str,
    log: logging.Logger,
    *,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
    level: int = logging.WARNING,
    recovered: str | None = None,
    **detail: Any,
) -> T | None:
    """Run ``op()`` until it succeeds (its result) or ``stop`` is set (None).

    A failure of a ``retry_on`` kind is retried after a capped, jittered backoff. The
    first failure of each kind (exception type) is logged as one line, ``"<what>,
    retrying"`` with the error and ``detail``, so an outage is said once, not once a
    retry; a success after failures logs ``recovered`` (default ``"<what>: recovered"``).
    ``on_failure`` runs after each failure (e.g. to drop a broken client).
    """
    backoff = backoff or Backoff(base_s=0.2, cap_s=5.0)
    logged: str | None = None
    started = time.monotonic()
    while not stop.is_set():
        try:
            result = await op()
        except retry_on as e:
            if on_failure is not None:
                await on_failure(e)
            delay = backoff.next_delay()
            if type(e).__name__ != logged:
                logged = type(e).__name__
                log.log(level, f"{what}, retrying", extra=kv(**detail, error=repr(e)[:300], retry_in_s=round(delay, 2)))
            if await sleep_or_stop(stop, delay):
                break
            continue
        if logged is not None:
            log.info(recovered or f"{what}: recovered", extra=kv(waited_s=round(time.monotonic() - started, 1)))
        return result
    return None
