"""Command intake: control commands in, each answered once per partition, results out.

A fresh consumer starts at the end of the command topic (commands are never replayed
into the present); the desk refuses stale, duplicate and other services' commands. An
answer covers the market-data partitions this instance owns: it claims ``<id>@<partition>``
for each (``shared.coordination``), answers for those it won, and names them in the
``command_result``, so a command is fully answered once every partition is named. A claim
held by another instance on a partition we own was made by its previous owner, which died
or lost it: unless that owner's answer is already on system events, it is dropped and
answered here. Partitions taken over in a rebalance answer the recent commands again.
The claims are marked done only after the result is published, so a crash in between
answers again rather than never. A command whose handler waits (``repair_bars``) is
answered by a task of its own beside the loop (at most ``MAX_WAITING`` at once), so it
never holds up the others; on stop those answer at once with what they have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from aiokafka import AIOKafkaConsumer

from services.datamanager.admission import Admission
from services.datamanager.commands import CommandDesk
from services.datamanager.consumers import assigned_consumer, pin_start
from services.datamanager.metrics import RecordFailures
from services.datamanager.ownership import Ownership
from shared.alarms import LoopHeartbeats
from shared.config import DatamanagerSettings, KafkaSettings
from shared.coordination import ClaimState, OnceClaims
from shared.dto import CommandResult, ControlCommand, decode
from shared.kafka import DeadLetters, Inbox, KafkaPublisher, assign_all, commit, consumer_options, fetch
from shared.logs import kv
from shared.tasks import cancel_and_wait
from shared.topics import Topics

log = logging.getLogger("datamanager.commands")

RECENT_COMMANDS = 1000
"""Commands kept to answer again for partitions taken over (those within the freshness window)."""
MAX_WAITING = 64
"""Answers that wait (repair_bars) at once; one more is refused, saying so."""
STOP_GRACE_S = 5.0
"""On stop, how long waiting answers have to publish what they have before they are cancelled."""


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
        ownership: Ownership,
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
        self._own = ownership
        self._publisher = publisher
        self._inbox = inbox
        self._dead = dead
        self._failures = failures
        self._loops = loops
        self.admission = admission  # ids and signatures, checked before a command is claimed
        self._ttl_s = settings.command_freshness_s * 2
        self.desk = CommandDesk(service, settings.command_freshness_s)
        self.ready = asyncio.Event()
        self._recent: deque[ControlCommand] = deque(maxlen=RECENT_COMMANDS)
        self._waiting: set[asyncio.Task[None]] = set()  # answers that wait, owned here

    async def run(self, stop: asyncio.Event) -> None:
        self.ready.clear()
        self.desk.stopping.clear()
        consumer = self._consumer()
        await consumer.start()
        try:
            await pin_start(consumer, await assign_all(consumer, self._topics.control_commands))
            self.ready.set()
            while not stop.is_set():
                self._loops.beat("commands")
                batches = await fetch(consumer, timeout_ms=200, max_records=100)
                acquired = self._own.take_acquired()
                if acquired:
                    await self._answer_again(acquired)
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
            await self._stop_waiting()
            await consumer.stop()

    async def _stop_waiting(self) -> None:
        """Tell waiting answers to answer now; cancel those that have not within the grace."""
        self.desk.stopping.set()
        waiting = list(self._waiting)
        if waiting:
            await asyncio.wait(waiting, timeout=STOP_GRACE_S)
            await cancel_and_wait(t for t in waiting if not t.done())
        self._waiting.clear()

    def _answer_beside(self, cmd: ControlCommand, partitions: frozenset[int]) -> None:
        """Answer ``cmd`` in a task of its own (its handler waits)."""
        task = asyncio.create_task(self._answer_logged(cmd, partitions), name=f"dm.command.{cmd.correlation_id[:40]}")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _answer_logged(self, cmd: ControlCommand, partitions: frozenset[int]) -> None:
        try:
            await self._answer(cmd, partitions)
        except Exception as e:  # one answer's failure is logged, never the loop's end
            log.error("answering failed", extra=kv(correlation_id=cmd.correlation_id[:64], error=repr(e)))

    def _dispatch(self, cmd: ControlCommand, partitions: frozenset[int]) -> bool:
        """Start a waiting answer beside the loop; False for a command answered inline."""
        if not self.desk.waits(cmd.command):
            return False
        self._answer_beside(cmd, partitions)
        return True

    def _consumer(self) -> AIOKafkaConsumer:
        if self._settings.partitioned:  # every member reads every command, at its own offsets
            member = self._settings.member_id or self._instance_id
            return assigned_consumer(self._kafka, f"{self._settings.group_id}.{member}", "commands")
        return assigned_consumer(self._kafka, self._settings.group_id, "commands")

    async def _handle(self, cmd: ControlCommand) -> None:
        if cmd.timestamp.timestamp() > time.time() + self._settings.max_clock_skew_s:
            # a command from the future would run now (never stale): refused
            raise ValueError(f"timestamp {cmd.timestamp.isoformat()} is ahead of the receive clock")
        why_not = self.desk.should_run(cmd)
        if why_not is None:
            self._recent.append(cmd)
            if not self._dispatch(cmd, self._own.partitions):
                await self._answer(cmd, self._own.partitions)
        elif why_not != "other_target":
            log.info(
                "command ignored",
                extra=kv(command=cmd.command[:64], correlation_id=cmd.correlation_id[:64], reason=why_not),
            )

    async def _answer_again(self, partitions: frozenset[int]) -> None:
        """Partitions just taken over: answer for them the recent commands their previous
        owner may have left unanswered (each claim says whether it did)."""
        for cmd in list(self._recent):
            if self.desk.is_fresh(cmd):
                if self._dispatch(cmd, partitions):
                    continue
                try:
                    await self._answer(cmd, partitions)
                except Exception as e:  # one command's failure is logged, never the loop's end
                    log.error("answering again failed", extra=kv(correlation_id=cmd.correlation_id[:64], error=repr(e)))

    async def _answer(self, cmd: ControlCommand, partitions: frozenset[int]) -> None:
        if not partitions:
            return  # a member without partitions has nothing to answer for
        won = await self._claim(cmd.correlation_id, partitions)
        if not won:
            log.info(
                "command ignored",
                extra=kv(correlation_id=cmd.correlation_id[:64], reason="answered_by_another_instance"),
            )
            return
        busy = None
        if self.desk.waits(cmd.command) and len(self._waiting) > MAX_WAITING:
            busy = f"{len(self._waiting) - 1} waiting answers already; at most {MAX_WAITING} at once (try again)"
        result = await self.desk.execute(cmd, won, self._own.count, self._instance_id, refused=busy)
        log.info(
            "command done",
            extra=kv(command=cmd.command[:64], ok=result.ok, duration_ms=result.duration_ms, partitions=sorted(won)),
        )
        await self._publisher.publish(self._topics.system_events, result, key=self._service)
        for p in won:
            await self._claims.complete(_key(cmd.correlation_id, p), self._ttl_s)

    async def _claim(self, correlation_id: str, partitions: frozenset[int]) -> frozenset[int]:
        """The partitions of ``partitions`` this instance now answers ``correlation_id`` for."""
        won: set[int] = set()
        held: dict[int, str] = {}
        for p in sorted(partitions):
            claim = await self._claims.claim(_key(correlation_id, p), self._instance_id, self._ttl_s)
            if claim.state is ClaimState.CLAIMED:
                won.add(p)
            elif claim.state is ClaimState.HELD and claim.holder is not None and claim.holder != self._instance_id:
                held[p] = claim.holder
        if held:
            # we own these partitions, so their holder no longer does (dead, or moved on):
            # it may have published its answer before marking it, look first
            answered = await self._answered_partitions(correlation_id)
            for p, holder in held.items():
                key = _key(correlation_id, p)
                if p in answered:
                    await self._claims.complete(key, self._ttl_s)
                    continue
                log.warning(
                    "command claimed by an instance that no longer owns its partition, unanswered: answering it",
                    extra=kv(correlation_id=correlation_id[:64], partition=p, holder=holder),
                )
                await self._claims.drop(key, holder)
                if (await self._claims.claim(key, self._instance_id, self._ttl_s)).state is ClaimState.CLAIMED:
                    won.add(p)
        return frozenset(won)

    async def _answered_partitions(self, correlation_id: str) -> set[int]:
        """The partitions whose answer to ``correlation_id`` is on system events (read from
        the claim ttl ago to the end; rare: only for claims a previous owner left)."""
        consumer = AIOKafkaConsumer(**consumer_options(self._kafka, f"{self._kafka.client_id}-dm-answers"))
        await consumer.start()
        answered: set[int] = set()
        try:
            tps = await assign_all(consumer, self._topics.system_events)
            ends = await consumer.end_offsets(tps)
            since = int((time.time() - self._ttl_s) * 1000)
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
                                answered.update(msg.partitions or ())
        except Exception as e:  # cannot tell: answering again beats not answering
            log.warning("could not look for a published answer", extra=kv(error=repr(e)))
        finally:
            await consumer.stop()
        return answered


def _key(correlation_id: str, partition: int) -> str:
    return f"{correlation_id}@{partition}"
