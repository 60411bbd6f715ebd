"""Command intake: control commands in, each answered once, its result on system events.

A fresh consumer starts at the end of the command topic (commands are never replayed
into the present); the desk refuses stale, duplicate and other services' commands; a
once-only claim (``shared.coordination``) makes one instance answer each correlation id.
A claim left unanswered by a predecessor that died on this host is answered, unless its
answer is already on system events. The claim is marked done only after the result is
published, so a crash in between answers it again rather than never.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer

from services.datamanager.admission import Admission
from services.datamanager.commands import CommandDesk
from services.datamanager.consumers import assigned_consumer, pin_start
from services.datamanager.metrics import RecordFailures
from shared.alarms import LoopHeartbeats
from shared.config import DatamanagerSettings, KafkaSettings
from shared.coordination import ClaimState, OnceClaims, holder_is_gone
from shared.dto import CommandResult, ControlCommand, decode
from shared.kafka import DeadLetters, Inbox, KafkaPublisher, assign_all, commit, consumer_options, fetch
from shared.logs import kv
from shared.topics import Topics

log = logging.getLogger("datamanager.commands")


class CommandIntake:
    """Owns the command consumer and the claims; handlers are registered on ``desk``."""

    def __init__(
        self,
        service: str,
        instance_id: str,
        settings: DatamanagerSettings,
        kafka: KafkaSettings,
        topics: Topics,
        claims: OnceClaims,
        publisher: KafkaPublisher,
        inbox: Inbox,
        dead: DeadLetters,
        failures: RecordFailures,
        loops: LoopHeartbeats,
        admission: Admission,
    ) -> None:
        self._service = service
        self._instance_id = instance_id
        self._settings = settings
        self._kafka = kafka
        self._topics = topics
        self._claims = claims
        self._publisher = publisher
        self._inbox = inbox
        self._dead = dead
        self._failures = failures
        self._loops = loops
        self.admission = admission  # ids and signatures, checked before a command is claimed
        self.desk = CommandDesk(service, settings.command_freshness_s)
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.ready.clear()
        consumer = assigned_consumer(self._kafka, self._settings.group_id, "commands")
        await consumer.start()
        try:
            await pin_start(consumer, await assign_all(consumer, self._topics.control_commands))
            self.ready.set()
            while not stop.is_set():
                self._loops.beat("commands")
                batches = await fetch(consumer, timeout_ms=200, max_records=100)
                if not batches:
                    continue
                for rec, msg in await self._inbox.decode(batches):
                    assert isinstance(msg, ControlCommand)
                    problem = self.admission.command_problem(rec, msg, time.time())
                    if problem is not None:  # bad ids, unsigned under require_signed, bad signature, replay
                        await self.admission.reject(rec, problem)
                        continue
                    try:
                        await self._handle(msg)
                    except Exception as e:
                        await self._failures.failed(rec, e)
                await self._dead.flush()  # their letters first, then the offsets
                await commit(consumer)
        finally:
            self._loops.retire("commands")
            await consumer.stop()

    async def _handle(self, cmd: ControlCommand) -> None:
        ttl = self._settings.command_freshness_s * 2
        if cmd.timestamp.timestamp() > time.time() + self._settings.max_clock_skew_s:
            # a command from the future would run now (never stale): refused
            raise ValueError(f"timestamp {cmd.timestamp.isoformat()} is ahead of the receive clock")
        why_not = self.desk.should_run(cmd)
        if why_not is None and not await self._claim(cmd.correlation_id, ttl):
            why_not = "answered_by_another_instance"
        if why_not is not None:
            if why_not != "other_target":
                log.info(
                    "command ignored",
                    extra=kv(command=cmd.command[:64], correlation_id=cmd.correlation_id[:64], reason=why_not),
                )
            return
        result = await self.desk.execute(cmd)
        log.info("command done", extra=kv(command=cmd.command[:64], ok=result.ok, duration_ms=result.duration_ms))
        await self._publisher.publish(self._topics.system_events, result, key=self._service)
        await self._claims.complete(cmd.correlation_id, ttl)

    async def _claim(self, correlation_id: str, ttl: float) -> bool:
        """Claim answering a command; a claim left unanswered by a predecessor that died on
        this host (SIGKILL between claim and answer) is taken over, not skipped."""
        claim = await self._claims.claim(correlation_id, self._instance_id, ttl)
        if claim.state is ClaimState.HELD and claim.holder is not None and holder_is_gone(claim.holder):
            # it may have died after publishing the answer, before marking it: look first
            if await self._answer_published(correlation_id, ttl):
                await self._claims.complete(correlation_id, ttl)
                return False
            log.warning(
                "command claimed by a process that is gone, unanswered: answering it",
                extra=kv(correlation_id=correlation_id, holder=claim.holder),
            )
            await self._claims.drop(correlation_id, claim.holder)
            claim = await self._claims.claim(correlation_id, self._instance_id, ttl)
        return claim.state is ClaimState.CLAIMED

    async def _answer_published(self, correlation_id: str, within_s: float) -> bool:
        """Whether a command_result for ``correlation_id`` is on system.events (read from
        ``within_s`` ago to the end; rare: only for a claim a dead predecessor left)."""
        consumer = AIOKafkaConsumer(**consumer_options(self._kafka, f"{self._kafka.client_id}-dm-answers"))
        await consumer.start()
        try:
            tps = await assign_all(consumer, self._topics.system_events)
            ends = await consumer.end_offsets(tps)
            since = int((time.time() - within_s) * 1000)
            starts = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
            needle = correlation_id.encode()
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                if not batches:
                    break
                for records in batches.values():
                    for rec in records:
                        if rec.value and needle in rec.value:
                            msg = decode(rec.value)
                            if isinstance(msg, CommandResult) and msg.correlation_id == correlation_id:
                                return True
            return False
        except Exception as e:  # cannot tell: answering again beats not answering
            log.warning("could not look for a published answer", extra=kv(error=repr(e)))
            return False
        finally:
            await consumer.stop()
