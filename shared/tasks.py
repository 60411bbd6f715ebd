"""Stopping tasks we own without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


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
