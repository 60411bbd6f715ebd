"""System events (status, alert, command results) published on ``system.events``.

``emit`` never blocks and never raises: events go into a bounded buffer that a task
publishes; if the broker is away long enough to fill it, the oldest events are dropped
and counted (events describe the system; ticks, bars and commands never go here).
"""

from __future__ import annotations

import logging
from typing import Any

from shared.dto import Alert, Status, SystemEvent, utcnow
from shared.kafka import KafkaPublisher
from shared.logs import kv
from shared.outbox import Outbox

log = logging.getLogger("events")


class SystemEvents:
    """A non-blocking emitter of system events for one service."""

    def __init__(self, service: str, topic: str, maxsize: int = 10_000) -> None:
        self.service = service
        self.topic = topic
        self._outbox: Outbox[SystemEvent] = Outbox(topic, lambda _: service, maxsize, drop="oldest")

    @property
    def dropped(self) -> int:
        return self._outbox.dropped

    def emit(self, event: SystemEvent) -> None:
        self._outbox.put(event)

    def status(self, component: str, state: str, **detail: Any) -> None:
        log.info("status", extra=kv(component=component, state=state, **detail))
        self.emit(Status(service=self.service, component=component, state=state, detail=detail, timestamp=utcnow()))

    def alert(
        self, code: str, message: str, severity: str = "warning", symbol: str | None = None, **detail: Any
    ) -> None:
        log.warning("alert %s: %s", code, message, extra=kv(symbol=symbol, **detail))
        self.emit(
            Alert(
                service=self.service,
                code=code,
                message=message,
                severity=severity,  # type: ignore[arg-type]
                symbol=symbol,
                detail=detail,
                timestamp=utcnow(),
            )
        )

    def close(self) -> None:
        self._outbox.close()

    async def run(self, publisher: KafkaPublisher) -> None:
        """Publish buffered events until closed and drained."""
        await self._outbox.run(publisher)
