"""Control commands for the datamanager: freshness, once per correlation id, dispatch."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from shared.dto import CommandResult, ControlCommand, utcnow

CommandHandler = Callable[[ControlCommand, frozenset[int]], Awaitable[dict[str, Any]]]
"""A command's handler, given the market-data partitions its answer covers."""

ACCEPTED_TARGETS = frozenset({"datamanager", "*", "all"})


class CommandDesk:
    """Decides whether to run a command and turns handler outcomes into results.

    Commands older than ``freshness_s`` are ignored (a consumer never replays the past
    into the present); each ``correlation_id`` is answered once (``remember`` ids). A
    handler registered with ``waits`` is answered beside the intake's loop (it may wait for
    other parts, e.g. repair_bars for the provider); ``stopping`` tells it to answer now.
    """

    def __init__(self, service: str, freshness_s: float, remember: int = 10_000) -> None:
        self.service = service
        self.freshness_s = freshness_s
        self._handlers: dict[str, CommandHandler] = {}
        self._waiting: set[str] = set()
        self.stopping = asyncio.Event()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.ignored_stale = 0
        self.ignored_duplicate = 0

    def register(self, command: str, handler: CommandHandler, waits: bool = False) -> None:
        self._handlers[command] = handler
        if waits:
            self._waiting.add(command)

    def waits(self, command: str) -> bool:
        """Whether ``command``'s handler waits (it is answered beside the intake's loop)."""
        return command in self._waiting

    def should_run(self, cmd: ControlCommand, now: datetime | None = None) -> str | None:
        """None to run it, else why not (stale, duplicate, other target)."""
        if cmd.target not in ACCEPTED_TARGETS:
            return "other_target"
        now = now or utcnow()
        # stamped ahead of the clock by more than max_clock_skew_s: dead-lettered before this
        if (now - cmd.timestamp).total_seconds() > self.freshness_s:
            self.ignored_stale += 1
            return "stale"
        if cmd.correlation_id in self._seen:
            self.ignored_duplicate += 1
            return "duplicate"
        self._seen[cmd.correlation_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return None

    def is_fresh(self, cmd: ControlCommand, now: datetime | None = None) -> bool:
        """For us and not stale (a command answered again after a takeover)."""
        now = now or utcnow()
        return cmd.target in ACCEPTED_TARGETS and (now - cmd.timestamp).total_seconds() <= self.freshness_s

    async def execute(
        self,
        cmd: ControlCommand,
        partitions: frozenset[int],
        partition_count: int,
        instance: str,
        refused: str | None = None,
    ) -> CommandResult:
        """Run ``cmd`` for ``partitions`` and say which partitions the answer covers
        (``refused``: answer that error instead of running it)."""
        started = time.perf_counter()
        handler = self._handlers.get(cmd.command)
        detail: dict[str, Any]
        if refused is not None:
            ok, detail = False, {"error": refused}
        elif handler is None:
            ok, detail = False, {"error": f"unknown command {cmd.command!r}", "known": sorted(self._handlers)}
        else:
            try:
                ok, detail = True, await handler(cmd, partitions)
            except ValueError as e:  # bad params: the handler names the parameter
                ok, detail = False, {"error": str(e)}
        return CommandResult(
            service=self.service,
            command=cmd.command,
            correlation_id=cmd.correlation_id,
            ok=ok,
            duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
            detail=detail,
            timestamp=utcnow(),
            partitions=tuple(sorted(partitions)),
            partition_count=partition_count,
            instance=instance,
        )
