"""The datamanager's consumers: every partition assigned, offsets kept in a group.

No group membership: a takeover by a standby waits for no session timeout. Partitions
without a committed offset start at the end, and that start is committed at once
(``pin_start``), so a crash before the first regular commit resumes there.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.config import KafkaSettings
from shared.kafka import consumer_options


def assigned_consumer(kafka: KafkaSettings, group_id: str, role: str) -> AIOKafkaConsumer:
    """A consumer for ``role`` (``bars``, ``commands``) keeping offsets in ``{group_id}.{role}``."""
    return AIOKafkaConsumer(
        **consumer_options(
            kafka,
            f"{kafka.client_id}-dm-{role}",
            background=True,
            group_id=f"{group_id}.{role}",
            auto_offset_reset="latest",
        ),
    )


async def pin_start(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Resolve each partition's start and commit it where the group had no offset yet."""
    fresh: dict[TopicPartition, int] = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        position = await consumer.position(tp)
        if committed is None:
            fresh[tp] = position
    if fresh:
        await consumer.commit(fresh)
