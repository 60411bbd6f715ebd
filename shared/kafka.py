"""Kafka plumbing: topic creation, a retrying batch publisher, decoding with dead-lettering."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownProducerId,
    UnsupportedVersionError,
    for_code,
)

from shared.backoff import Backoff
from shared.compat import producer_idempotent, refresh_metadata
from shared.config import KafkaSettings
from shared.dto import DeadLetter, DecodeError, Message, decode, encode, utcnow
from shared.kafka_security import login_refused, security_options
from shared.logs import kv
from shared.metrics import ServiceMetrics
from shared.partitioning import partition_of
from shared.tasks import sleep_or_stop
from shared.topics import Topics

log = logging.getLogger("kafka")

MAX_DEAD_LETTER_RAW = 64 * 1024


def producer_options(k: KafkaSettings, client_id: str, idempotent: bool | None = None) -> dict[str, Any]:
    """AIOKafkaProducer keyword arguments for our settings (acks=all always).

    ``idempotent`` decides ``enable_idempotence: auto`` (default: on).
    """
    if idempotent is None:
        idempotent = k.enable_idempotence is not False
    return {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "linger_ms": k.linger_ms,
        "max_batch_size": k.max_batch_bytes,
        "compression_type": None if k.compression == "none" else k.compression,
        "enable_idempotence": idempotent if k.enable_idempotence == "auto" else bool(k.enable_idempotence),
        "request_timeout_ms": k.request_timeout_ms,
        **security_options(k),
    }


def consumer_options(k: KafkaSettings, client_id: str, background: bool = False, **extra: Any) -> dict[str, Any]:
    """AIOKafkaConsumer keyword arguments; ``background`` consumers wait longer per fetch
    (``background_fetch_max_wait_ms``); ``extra`` overrides."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_wait_ms": k.background_fetch_max_wait_ms if background else k.fetch_max_wait_ms,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        **security_options(k),
    }
    opts.update(extra)
    return opts


async def ensure_system_topics(k: KafkaSettings, topics: Topics) -> None:
    """Create the system's topics that do not exist yet, with their partitions and configs."""
    await ensure_topics(k, topics.with_partitions(k.partitions), topics.with_configs(k.retention))


async def ensure_topics(
    k: KafkaSettings, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> None:
    """Create the topics that do not exist yet, with the given partition counts and configs.

    Each gets ``kafka.replication_factor`` replicas and ``kafka.min_insync_replicas``
    (unless its configs say otherwise). Raises TopicsNotCreated when the broker refused
    some (``authorized`` False when it was for want of permission: retrying will not help
    until an admin acts), TooFewBrokers (one of those) when the cluster has fewer brokers
    than the replication factor.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers, client_id=k.client_id, **security_options(k))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=t,
                num_partitions=n,
                replication_factor=k.replication_factor,
                topic_configs={"min.insync.replicas": str(k.min_insync_replicas), **(configs or {}).get(t, {})},
            )
            for t, n in partitions.items()
            if t not in existing
        ]
        if missing and k.replication_factor > 1:
            brokers = len((await admin.describe_cluster()).get("brokers", ()))
            if brokers < k.replication_factor:
                raise TooFewBrokers(k.replication_factor, brokers, [t.name for t in missing])
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None  # another service created them first
            refused: dict[str, type[KafkaError]] = {}
            for entry in response.topic_errors if response is not None else ():
                name, code = entry[0], entry[1]
                if code not in (0, TopicAlreadyExistsError.errno):  # already there: another service made it
                    refused[name] = for_code(code)
            if refused:
                raise TopicsNotCreated(refused)
            log.info("created topics", extra=kv(topics=",".join(t.name for t in missing)))
    finally:
        await admin.close()


class TopicsNotCreated(KafkaError):  # type: ignore[misc]  # aiokafka's errors are untyped
    """The broker refused to create some topics (each with its error class)."""

    def __init__(self, refused: dict[str, type[KafkaError]]) -> None:
        self.refused = refused
        reasons = ", ".join(f"{t}: {getattr(e, 'message', e.__name__)}" for t, e in sorted(refused.items()))
        super().__init__(f"broker refused to create topics ({reasons})")

    @property
    def authorized(self) -> bool:
        """False if any refusal was for want of permission (CREATE on the cluster or topics)."""
        denied = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)
        return not any(issubclass(e, denied) for e in self.refused.values())


class TooFewBrokers(TopicsNotCreated):
    """Topics not created: the cluster has fewer brokers (registered and unfenced) than
    ``kafka.replication_factor``. Worth retrying: a broker may be down for a while."""

    def __init__(self, replication_factor: int, brokers: int, topics: Sequence[str]) -> None:
        super().__init__(dict.fromkeys(topics, InvalidReplicationFactorError))
        self.replication_factor = replication_factor
        self.brokers = brokers
        self.args = (
            f"broker refused to create topics: kafka.replication_factor is {replication_factor} but the cluster"
            f" has {brokers} broker{'' if brokers == 1 else 's'} up ({len(topics)} topics not created:"
            f" {', '.join(sorted(topics)[:3])}{', ...' if len(topics) > 3 else ''})",
        )


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()


Record = tuple[bytes | None, bytes]  # (key, value), already encoded


@dataclass
class Delivery:
    """Records handed to the producer, one future per partition batch."""

    topic: str
    parts: list[tuple[asyncio.Future[Any], list[Record]]] = field(default_factory=list)


class _ProbeRecordFilter(logging.Filter):
    """Drops aiokafka's "Unexpected error during InitProducerIdRequest" ERROR: with
    ``enable_idempotence: auto`` that answer (Tansu's) is how support is probed, and
    ``KafkaPublisher.start`` reports the outcome itself (INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unexpected error during InitProducerIdRequest")


@contextlib.contextmanager
def _idempotence_probe(k: KafkaSettings) -> Iterator[None]:
    """While an ``auto`` producer starts, the probe's expected refusal is not an error log."""
    if k.enable_idempotence != "auto":
        yield
        return
    sender_log, probe_filter = logging.getLogger("aiokafka.producer.sender"), _ProbeRecordFilter()
    sender_log.addFilter(probe_filter)
    try:
        yield
    finally:
        sender_log.removeFilter(probe_filter)


class KafkaPublisher:
    """An AIOKafkaProducer that never gives up on a message while the service runs.

    Records are grouped by partition (the producer's own murmur2 placement, cached per
    key) into whole producer batches: one future per batch instead of one per message,
    which measured 2-4x the throughput of per-message ``send``. ``send`` hands records
    over and returns a Delivery; ``confirm`` awaits it and resends failed batches in
    order after a jittered backoff until delivered or ``stop()`` (then counted as lost).
    Keeping one Delivery in flight while the next is sent pipelines the two.
    """

    def __init__(self, settings: KafkaSettings, client_id: str, metrics: ServiceMetrics | None = None) -> None:
        self._settings = settings
        self._client_id = client_id
        self._producer = AIOKafkaProducer(**producer_options(settings, client_id))
        self._metrics = metrics
        self._started = False
        self._spent = False
        self._renewing = asyncio.Lock()
        self._closing = asyncio.Event()
        self._placement: dict[str, tuple[list[int], dict[bytes, int]]] = {}
        self._round_robin = 0
        self.lost = 0

    async def start(self) -> None:
        if self._started:
            return
        if self._spent:  # an earlier start failed and closed it
            self._producer = AIOKafkaProducer(**producer_options(self._settings, self._client_id))
            self._spent = False
        try:
            with _idempotence_probe(self._settings):
                await self._producer.start()
        except KafkaConnectionError:
            with contextlib.suppress(Exception):
                await self._producer.stop()  # a failed start leaves it open: close it, start anew next time
            self._spent = True
            refused = await login_refused(self._settings)  # say why, if it was the login
            if refused is not None:
                raise refused from None
            raise
        except (UnknownError, UnsupportedVersionError) as e:
            if self._settings.enable_idempotence != "auto":
                raise
            # Tansu answers aiokafka's InitProducerId v0 this way: go on without idempotence
            with contextlib.suppress(Exception):
                await self._producer.stop()
            log.info("broker refused an idempotent producer; producing without", extra=kv(error=repr(e)))
            self._producer = AIOKafkaProducer(**producer_options(self._settings, self._client_id, idempotent=False))
            await self._producer.start()
        self._started = True

    @property
    def idempotent(self) -> bool:
        return producer_idempotent(self._producer)

    async def stop(self) -> None:
        """Flush what is pending and close; idempotent."""
        self._closing.set()
        if self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> KafkaPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, topic: str, message: Message, key: str | bytes | None = None) -> None:
        """Publish one message and wait until the broker has it (acks=all)."""
        await self.publish_raw(topic, [(_key_bytes(key), encode(message))])

    async def publish_many(self, topic: str, items: Iterable[tuple[str | bytes | None, Message]]) -> None:
        """Publish messages in order and wait until the broker has all of them."""
        await self.publish_raw(topic, [(_key_bytes(k), encode(m)) for k, m in items])

    async def publish_raw(self, topic: str, items: Sequence[Record]) -> None:
        """Publish pre-encoded (key, value) pairs and wait for all of them."""
        await self.confirm(await self.send(topic, items))

    async def _partitions(self, topic: str) -> tuple[list[int], dict[bytes, int]]:
        cluster_parts = self._producer.client.cluster.partitions_for_topic(topic)
        cached = self._placement.get(topic)
        if cached is None or (cluster_parts and len(cluster_parts) != len(cached[0])):
            parts = sorted(await self._producer.partitions_for(topic))
            cached = self._placement[topic] = (parts, {})
        return cached

    async def send(self, topic: str, items: Sequence[Record]) -> Delivery:
        """Hand records to the producer, grouped into per-partition batches, in order."""
        delivery = Delivery(topic)
        if not items:
            return delivery
        try:
            parts, placed = await self._partitions(topic)
            groups: dict[int, list[Record]] = {}
            for record in items:
                key = record[0]
                if key is None:
                    self._round_robin += 1
                    partition = parts[self._round_robin % len(parts)]
                else:
                    p = placed.get(key)
                    if p is None:
                        if len(placed) > 100_000:  # bound the cache; keys are symbols, few
                            placed.clear()
                        p = placed[key] = partition_of(key, parts)
                    partition = p
                groups.setdefault(partition, []).append(record)
            for partition, records in groups.items():
                await self._send_partition(delivery, partition, records)
        except KafkaError as e:
            # nothing of what failed to be handed over is lost: confirm() resends it
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            sent = {id(r) for _, recs in delivery.parts for r in recs}
            delivery.parts.append((failed, [r for r in items if id(r) not in sent]))
        return delivery

    async def _send_partition(self, delivery: Delivery, partition: int, records: list[Record]) -> None:
        producer = self._producer
        batch = producer.create_batch()
        in_batch: list[Record] = []
        for record in records:
            if batch.append(key=record[0], value=record[1], timestamp=None) is None:
                if not in_batch:  # a single record larger than a batch: let send() handle it
                    fut = await producer.send(delivery.topic, record[1], key=record[0], partition=partition)
                    delivery.parts.append((fut, [record]))
                    continue
                delivery.parts.append((await producer.send_batch(batch, delivery.topic, partition=partition), in_batch))
                batch, in_batch = producer.create_batch(), []
                if batch.append(key=record[0], value=record[1], timestamp=None) is None:
                    fut = await producer.send(delivery.topic, record[1], key=record[0], partition=partition)
                    delivery.parts.append((fut, [record]))
                    continue
            in_batch.append(record)
        if in_batch:
            delivery.parts.append((await producer.send_batch(batch, delivery.topic, partition=partition), in_batch))

    async def confirm(self, delivery: Delivery) -> int:
        """Wait until the broker has every record of ``delivery``; resend what failed.

        Returns how many were delivered (fewer only if the publisher is stopping).
        """
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        topic = delivery.topic
        total = 0
        while delivery.parts:
            results = await asyncio.gather(*(f for f, _ in delivery.parts), return_exceptions=True)
            failed: list[Record] = []
            error: BaseException | None = None
            delivered = 0
            for (_, records), result in zip(delivery.parts, results, strict=True):
                if isinstance(result, BaseException):
                    error = error or result
                    failed.extend(records)
                else:
                    delivered += len(records)
            total += delivered
            if self._metrics is not None and delivered:
                self._metrics.messages_out.labels(topic).inc(delivered)
            if not failed:
                return total
            if self._metrics is not None:
                self._metrics.publish_errors.labels(topic).inc()
            if self._closing.is_set():
                self.lost += len(failed)
                log.error(
                    "publisher stopping with undelivered messages",
                    extra=kv(topic=topic, lost=len(failed), error=repr(error)),
                )
                return total
            delay = backoff.next_delay()
            log.warning(
                "publish failed, retrying",
                extra=kv(topic=topic, messages=len(failed), error=repr(error), retry_in_s=round(delay, 2)),
            )
            if isinstance(error, SEQUENCE_ERRORS):
                await self._renew_producer(error)
            await sleep_or_stop(self._closing, delay)
            delivery = await self.send(topic, failed)
        return total

    async def _renew_producer(self, error: BaseException) -> None:
        """An idempotent producer whose sequence the broker no longer follows (batches it
        lost across a restart) can never deliver again: aiokafka does not bump the epoch as
        the Java client does, so start a new producer (a new producer id) and resend with
        it. One renewal per failing producer, however many deliveries saw the error."""
        failing = self._producer
        async with self._renewing:
            if self._producer is not failing or self._closing.is_set():
                return  # another delivery renewed it already, or we are stopping
            fresh = AIOKafkaProducer(**producer_options(self._settings, self._client_id, producer_idempotent(failing)))
            await fresh.start()
            self._producer = fresh
            self._placement.clear()
        log.warning("producer renewed after a sequence error", extra=kv(error=repr(error)))
        try:
            await asyncio.wait_for(failing.stop(), 5.0)  # what it still holds is resent through the new one
        except Exception as e:
            log.debug("closing the renewed producer failed", extra=kv(error=repr(e)))


SEQUENCE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)
"""Errors after which an idempotent producer cannot go on (its id or sequence is lost)."""


class DeadLetters:
    """Sends bad consumed messages to the dead-letter topic with the reason, and counts them.

    ``send`` only queues the letter; ``flush()`` publishes what is queued in one batch and
    waits for the broker, so a flood of bad records is dead-lettered at producer speed
    (one round trip each measured ~400/s; batched, 30,000 take ~2 s). The Inbox flushes at
    the end of every batch it decodes, and a consumer that dead-letters on its own flushes
    before it commits past those records, so an offset is never committed ahead of its
    letter. The queue is bounded (``MAX_QUEUED_BYTES``): past it ``send`` flushes first.
    """

    MAX_REASON = 1000  # characters of the reason kept (a decoder may quote a 1 MB value whole)
    MAX_QUEUED_BYTES = 4 * 2**20

    def __init__(self, publisher: KafkaPublisher, topics: Topics, service: str, metrics: ServiceMetrics) -> None:
        self._publisher = publisher
        self._topic = topics.deadletter
        self._service = service
        self._metrics = metrics
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._flushing = asyncio.Lock()

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        raw = (record.value or b"")[:MAX_DEAD_LETTER_RAW].decode("utf-8", errors="replace")
        reason = reason[: self.MAX_REASON]
        key = record.key.decode("utf-8", errors="replace") if record.key else None
        letter = DeadLetter(
            service=self._service,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            raw=raw,
            key=key,
            timestamp=utcnow(),
        )
        self._metrics.dead_lettered.labels(record.topic).inc()
        log.warning(  # rate-limited per template by the logging setup (RepeatLimiter)
            "dead-lettered a message",
            extra=kv(topic=record.topic, offset=record.offset, reason=reason[:200], raw=repr(raw[:120])),
        )
        value = encode(letter)
        self._pending.append((record.topic.encode(), value))
        self._pending_bytes += len(value)
        if self._pending_bytes > self.MAX_QUEUED_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Publish every queued letter and wait until the broker has them (resending what
        failed). One flush at a time: a loop that finds another one flushing waits."""
        async with self._flushing:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            if pending:
                await self._publisher.publish_raw(self._topic, pending)


class Inbox:
    """Decodes consumed records by ``type``; anything else is dead-lettered, never fatal.

    ``accepts`` maps a topic to the message types a consumer handles there; other valid
    types on that topic are skipped silently when listed in ``ignores`` (e.g. the
    datamanager's own bars on the market-data topic), dead-lettered otherwise.
    """

    def __init__(
        self,
        dead_letters: DeadLetters,
        metrics: ServiceMetrics,
        accepts: dict[str, tuple[type[Message], ...]],
        ignores: dict[str, tuple[type[Message], ...]] | None = None,
    ) -> None:
        self._dead = dead_letters
        self._metrics = metrics
        self._accepts = {t: frozenset(types) for t, types in accepts.items()}
        self._ignores = {t: frozenset(types) for t, types in (ignores or {}).items()}

    async def reject(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """A record that decoded but cannot be applied: dead-letter it with the reason."""
        await self._dead.send(record, reason)
        await self._dead.flush()

    async def decode(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> list[tuple[ConsumerRecord[bytes, bytes], Message]]:
        """Decode what ``getmany`` returned; keep each record beside its message (the hot
        path of every consumer: an accepted message costs one decode and a type check)."""
        out: list[tuple[ConsumerRecord[bytes, bytes], Message]] = []
        append = out.append
        for tp, records in batches.items():
            accepted = self._accepts.get(tp.topic, frozenset())
            for rec in records:
                try:
                    msg = decode(rec.value or b"")
                except DecodeError:
                    msg = None
                if msg is None or type(msg) not in accepted:  # the rare path: say what is wrong
                    msg = await self._one(rec, accepted)
                    if msg is None:
                        continue
                append((rec, msg))
            self._metrics.messages_in.labels(tp.topic).inc(len(records))
        await self._dead.flush()
        return out

    async def _one(self, rec: ConsumerRecord[bytes, bytes], accepted: frozenset[type[Message]]) -> Message | None:
        try:
            msg = decode(rec.value or b"")
        except DecodeError as e:
            await self._dead.send(rec, f"undecodable: {e}")
            return None
        if type(msg) in accepted:
            return msg
        if type(msg) not in self._ignores.get(rec.topic, frozenset()):
            await self._dead.send(rec, f"unexpected message type {type(msg).__name__} on this topic")
        return None


async def assign_all(consumer: AIOKafkaConsumer, topic: str, wait_s: float = 30.0) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (no consumer group) and return them.

    Waits up to ``wait_s`` for the topic to exist (another service may be creating it).
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while not (partitions := consumer.partitions_for_topic(topic)):
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaError(f"topic {topic} does not exist after {wait_s}s")
        await refresh_metadata(consumer)
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.1)  # metadata refresh interval while the topic is created
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return tps


async def at_end(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> bool:
    """Whether every partition has been read up to the high watermark of its last fetch.

    Uses ``highwater`` from fetch responses, not ``end_offsets`` (which some brokers,
    Tansu among them, answer with the last batch's base offset + 1).
    """
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or await consumer.position(tp) < high:
            return False
    return True


REWIND_AFTER_S = 5.0
"""How long a partition's log must stay shorter than our position before it is taken as
recreated or truncated: a new leader's high watermark lags the old one's for a moment after
a leader change (until the followers' next fetch), which is not a truncation."""

_beyond: weakref.WeakKeyDictionary[AIOKafkaConsumer, dict[TopicPartition, float]] = weakref.WeakKeyDictionary()


async def rewind_truncated(consumer: AIOKafkaConsumer, now: float | None = None) -> list[TopicPartition]:
    """Restart from the beginning every assigned partition whose log has stayed shorter than
    our position for ``REWIND_AFTER_S``: the topic was deleted and recreated (the embedded
    broker loses its topics on a restart) or truncated, so everything in it is new to us.

    Apache Kafka answers such a fetch with OFFSET_OUT_OF_RANGE and aiokafka resets by
    ``auto_offset_reset``; Tansu answers with no records and a smaller high watermark,
    which only this check notices. A high watermark below our position only briefly is a
    leader change on a replicated cluster (the new leader's watermark catches up): rewinding
    then would deliver the partition again from its start. Cheap (local state only): call
    it after empty fetches.
    """
    now = time.monotonic() if now is None else now
    seen = _beyond.setdefault(consumer, {})
    shorter: set[TopicPartition] = set()
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            continue
        try:
            position = await consumer.position(tp)
        except KafkaError:
            continue
        if position > high:
            shorter.add(tp)
    for tp in list(seen):
        if tp not in shorter:
            del seen[tp]
    rewound = []
    for tp in shorter:
        since = seen.setdefault(tp, now)
        if now - since >= REWIND_AFTER_S:
            rewound.append(tp)
            del seen[tp]
    if rewound:
        await consumer.seek_to_beginning(*rewound)
        log.warning(
            "partition shorter than our position (topic recreated?): reading it from the beginning",
            extra=kv(partitions=",".join(f"{tp.topic}[{tp.partition}]" for tp in rewound)),
        )
    return rewound


Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def fetch(
    consumer: AIOKafkaConsumer, *partitions: TopicPartition, timeout_ms: int, max_records: int | None = None
) -> Batches:
    """``getmany`` for a consumer loop that must outlive the broker: a broker error is an
    empty fetch (the service's BrokerWatch reports the outage), and after an empty fetch a
    recreated or truncated partition is read again from its beginning (rewind_truncated)."""
    try:
        batches: Batches = await consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as e:
        log.debug("fetch failed", extra=kv(error=repr(e)))
        batches = {}
    if not batches:
        await rewind_truncated(consumer)
    return batches


RecordsHandler = Callable[[Sequence[tuple[ConsumerRecord[bytes, bytes], Message]]], Awaitable[None]]


async def follow_topic(
    kafka: KafkaSettings,
    client_id: str,
    topic: str,
    inbox: Inbox,
    on_records: RecordsHandler,
    stop: asyncio.Event,
    *,
    from_beginning: bool,
    caught_up: asyncio.Event | None = None,
    max_records: int = 1000,
) -> None:
    """Read every partition of ``topic`` without a consumer group (from its beginning, or
    only what arrives from now on) until ``stop``: each fetch is decoded by ``inbox`` (bad
    records dead-lettered there) and handed to ``on_records``; ``caught_up`` is set once
    the reader has reached the end of what was there when it started."""
    consumer = AIOKafkaConsumer(**consumer_options(kafka, client_id, background=True))
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        while not stop.is_set():
            batches = await fetch(consumer, *tps, timeout_ms=200, max_records=max_records)
            if batches:
                await on_records(await inbox.decode(batches))
            if caught_up is not None and not caught_up.is_set() and await at_end(consumer, tps):
                caught_up.set()
    finally:
        await consumer.stop()


async def commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int] | None = None) -> bool:
    """Commit (the given offsets, else the consumed positions); False if the broker refused
    or is away: the caller commits again later, and a redelivery changes nothing."""
    try:
        if offsets is None:
            await consumer.commit()
        else:
            await consumer.commit(offsets)
        return True
    except KafkaError as e:
        log.warning("offset commit failed; will commit again", extra=kv(error=repr(e)))
        return False
