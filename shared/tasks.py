"""Owning tasks and waiting on a stop event: cancel without swallowing our own
cancellation, sleep that a stop cuts short, and retry until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T | None:
    """Run ``op()`` until it succeeds (its result) or ``stop`` is set (None). Each failure
    of a ``retry_on`` kind is logged as one warning line with the delay, then retried
    after a capped, jittered backoff."""
    backoff = backoff or Backoff(base_s=0.2, cap_s=5.0)
    while not stop.is_set():
        try:
            return await op()
        except retry_on as e:
            delay = backoff.next_delay()
            log.warning(f"{what} failed, retrying", extra=kv(error=repr(e)[:300], retry_in_s=round(delay, 2)))
            if await sleep_or_stop(stop, delay):
                break
    return None
