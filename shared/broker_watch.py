"""Whether the broker answers, for every service: start-up wait, outages, vanished topics.

One ``BrokerWatch`` per service probes the broker with a metadata request every
``probe_interval_s`` on its own connection. It logs one line per state change (and a
summary while an outage lasts), emits ``broker`` status events, recreates the system's
topics when they vanished (the embedded Tansu broker loses them on a restart), and calls
the service's reconnect hooks once the broker is back, so each service can republish,
re-announce or re-read what the outage may have cost it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from shared.config import KafkaSettings
from shared.events import SystemEvents
from shared.kafka import TopicsNotCreated, ensure_system_topics
from shared.kafka_security import describe, login_refused, security_options
from shared.logs import kv
from shared.tasks import retry_until_stopped, sleep_or_stop
from shared.topics import Topics

log = logging.getLogger("broker")

ReconnectHook = Callable[["BrokerReturn"], Awaitable[None]]


class BrokerState(enum.Enum):
    CONNECTING = "connecting"  # never reached yet
    UP = "up"
    DOWN = "down"
    TOPICS_MISSING = "topics_missing"  # the broker answers, but system topics are missing and we may not create them


class BrokerReturn:
    """What a reconnect hook learns: how long the broker was away, which topics came back new."""

    def __init__(self, outage_s: float, recreated: frozenset[str]) -> None:
        self.outage_s = outage_s
        self.recreated = recreated  # topics that had vanished and were created again

    def __repr__(self) -> str:
        return f"BrokerReturn(outage_s={self.outage_s:.1f}, recreated={sorted(self.recreated)})"


class BrokerWatch:
    """Probes the broker; ``up`` is what readiness reports."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Topics,
        events: SystemEvents | None,
        client_id: str,
        probe_interval_s: float = 1.0,
        summary_every_s: float = 30.0,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        self._events = events
        self._client_id = client_id
        self._probe_interval_s = probe_interval_s
        self._summary_every_s = summary_every_s
        self._client: AIOKafkaClient | None = None
        self._hooks: list[tuple[str, ReconnectHook]] = []
        self.state = BrokerState.CONNECTING
        self.down_since: float | None = None
        self.outages = 0
        self.last_error = ""
        self._create_refused = False  # the broker said we may not create topics: never ask again
        self._missing_said: frozenset[str] = frozenset()

    @property
    def up(self) -> bool:
        return self.state is BrokerState.UP

    def on_reconnect(self, name: str, hook: ReconnectHook) -> None:
        """Run ``hook`` each time the broker is back after an outage (not on first connect)."""
        self._hooks.append((name, hook))

    def _system_topics(self) -> list[str]:
        return list(self._topics.with_partitions(self._kafka.partitions))

    async def _probe(self) -> set[str]:
        """One metadata request; the topics the broker has. Raises KafkaError/OSError/TimeoutError."""
        if self._client is None:
            self._client = AIOKafkaClient(
                bootstrap_servers=self._kafka.bootstrap_servers,
                client_id=f"{self._client_id}-probe",
                request_timeout_ms=max(1000, int(self._probe_interval_s * 3000)),
                **security_options(self._kafka),
            )
        client = self._client
        if not client.cluster.brokers():
            try:
                await client.bootstrap()
            except KafkaConnectionError:
                refused = await login_refused(self._kafka)  # a refused login, said as such
                if refused is not None:
                    raise refused from None
                raise
        async with asyncio.timeout(max(2.0, self._probe_interval_s * 3)):
            metadata = await client.fetch_all_metadata()
        return set(metadata.topics())

    async def connect(self, stop: asyncio.Event) -> bool:
        """Start-up: wait (backoff, not ready meanwhile) until the broker answers and the
        system topics exist, creating them if configured and allowed. Missing topics we may
        not create (``create_topics: false``, or the broker refused) are said once, then
        awaited without asking to create them again. False if ``stop`` was set first."""

        async def failed(e: BaseException) -> None:
            self.last_error = repr(e)
            await self._reset_client()

        while True:
            present = await retry_until_stopped(
                self._probe,
                stop,
                "broker not reachable yet",
                log,
                retry_on=(KafkaError, OSError, TimeoutError),
                on_failure=failed,
                recovered="broker reachable",
                bootstrap=self._kafka.bootstrap_servers,
                security=describe(self._kafka),
            )
            if present is None:
                return False
            missing = set(self._system_topics()) - present
            if missing and await self._create(missing):
                missing = set()
            if not missing:
                if self._missing_said:
                    log.info("system topics present now", extra=kv(topics=",".join(sorted(self._missing_said))))
                    self._missing_said = frozenset()
                self.state = BrokerState.UP
                return True
            self._topics_missing(missing)
            if await sleep_or_stop(stop, self._probe_interval_s):
                return False

    async def _create(self, missing: set[str]) -> bool:
        """Create the system topics if configured and not refused before; True if done.
        A refusal is logged once per kind; for want of permission it is final."""
        if not self._kafka.create_topics or self._create_refused:
            return False
        try:
            await ensure_system_topics(self._kafka, self._topics)
            return True
        except TopicsNotCreated as e:
            self.last_error = str(e)
            if not e.authorized:
                self._create_refused = True
                log.error(
                    "not allowed to create the missing topics: an admin must create them (see `livedata acls`)",
                    extra=kv(topics=",".join(sorted(missing)), error=str(e)),
                )
            elif self._missing_said != frozenset(missing):
                log.warning("could not create the missing topics yet", extra=kv(error=str(e)))
            return False
        except (KafkaError, OSError, TimeoutError) as e:
            self.last_error = repr(e)
            return False

    def _topics_missing(self, missing: set[str]) -> None:
        """Not ready for want of topics; said once per set of missing topics."""
        self.state = BrokerState.TOPICS_MISSING
        if not self.last_error.startswith("broker refused"):
            self.last_error = f"system topics missing: {','.join(sorted(missing))}"
        if self._missing_said != frozenset(missing):
            self._missing_said = frozenset(missing)
            why = "create_topics is false" if not self._kafka.create_topics else "we may not create them"
            log.error(
                f"system topics missing ({why}): not ready until they exist",
                extra=kv(topics=",".join(sorted(missing))),
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop``; on every return run the reconnect hooks."""
        last_summary = time.monotonic()
        try:
            while not stop.is_set():
                if await sleep_or_stop(stop, self._probe_interval_s):
                    return
                try:
                    present = await self._probe()
                except (KafkaError, OSError, TimeoutError) as e:
                    self.last_error = repr(e)
                    if self.state is not BrokerState.DOWN:
                        self._went_down()
                        last_summary = time.monotonic()
                    elif time.monotonic() - last_summary >= self._summary_every_s:
                        last_summary = time.monotonic()
                        log.warning(
                            "broker still unreachable",
                            extra=kv(down_s=round(self._down_for(), 1), error=self.last_error),
                        )
                    await self._reset_client()
                    continue
                missing = set(self._system_topics()) - present
                if missing and not (self._kafka.create_topics and not self._create_refused):
                    if self.state is BrokerState.DOWN:
                        self.down_since = None  # the broker is back; the outage is over
                    self._topics_missing(missing)  # not ready until an admin creates them
                elif self.state in (BrokerState.DOWN, BrokerState.TOPICS_MISSING) or missing:
                    await self._came_back(missing)
                elif self.state is BrokerState.CONNECTING:
                    self.state = BrokerState.UP  # run() without connect(): the first answer
        finally:
            await self._reset_client()

    def _down_for(self) -> float:
        return time.monotonic() - self.down_since if self.down_since is not None else 0.0

    def _went_down(self) -> None:
        self.down_since = time.monotonic()
        self.outages += 1
        self.state = BrokerState.DOWN
        log.error(
            "broker unreachable: producing and consuming wait for it",
            extra=kv(bootstrap=self._kafka.bootstrap_servers, error=self.last_error),
        )
        if self._events is not None:
            self._events.status("broker", "down", error=self.last_error)  # published once it is back

    async def _came_back(self, missing: set[str]) -> None:
        outage = self._down_for()
        recreated: frozenset[str] = frozenset()
        if self.state is BrokerState.TOPICS_MISSING:
            recreated = self._missing_said  # an admin created them: new to us
            log.info("system topics present now", extra=kv(topics=",".join(sorted(recreated))))
            self._missing_said = frozenset()
        if missing:
            if not await self._create(missing):
                if self._create_refused:
                    self._topics_missing(missing)
                else:
                    log.warning(
                        "could not recreate topics yet", extra=kv(topics=sorted(missing), error=self.last_error)
                    )
                return  # still not usable: try again on the next probe
            recreated = frozenset(missing)
            log.warning("recreated vanished topics", extra=kv(topics=",".join(sorted(missing))))
        self.down_since = None
        self.state = BrokerState.UP
        back = BrokerReturn(outage, recreated)
        log.info("broker back", extra=kv(outage_s=round(outage, 1), recreated=len(recreated)))
        if self._events is not None:
            self._events.status("broker", "up", outage_s=round(outage, 2), recreated_topics=sorted(recreated))
        for name, hook in self._hooks:
            try:
                await hook(back)
            except Exception:
                log.exception("reconnect hook failed", extra=kv(hook=name))

    async def _reset_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
