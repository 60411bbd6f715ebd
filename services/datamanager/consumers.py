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


async def pin_start(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[int, int]:
    """Start each partition at the group's committed offset (seeking there explicitly:
    aiokafka's position inside a rebalance listener was seen at the end of a partition
    whose committed offset was earlier), or where the group has none yet at the reset
    position, committed at once. Returns where each partition starts."""
    fresh: dict[TopicPartition, int] = {}
    starts: dict[int, int] = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is None:
            start = fresh[tp] = await consumer.position(tp)
        else:
            start = committed
            consumer.seek(tp, committed)
        starts[tp.partition] = start
    if fresh:
        await consumer.commit(fresh)
    return starts
