"""The private attributes of libraries that the project reads, each behind one accessor.

A library may rename or drop a private attribute in any release. Reading them only here,
with a unit test per accessor against the installed version (tests/unit/test_compat.py),
makes an upgrade that breaks one fail that test, not a daemon in production.

- aiokafka ``AIOKafkaProducer._txn_manager``: whether the producer is idempotent (no
  public property says so; ``enable_idempotence`` may have been turned off for a broker
  that refuses InitProducerId).
- aiokafka ``AIOKafkaConsumer._client``: to force a metadata refresh while waiting for a
  topic to appear (the consumer only refreshes on its own interval).

aiohttp's bound port is read through the public ``AppRunner.addresses``, not here.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def producer_idempotent(producer: AIOKafkaProducer) -> bool:
    """Whether an ``AIOKafkaProducer`` was built idempotent (it has a transaction manager)."""
    return bool(producer._txn_manager is not None)


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask an ``AIOKafkaConsumer``'s client for fresh cluster metadata now, and wait for it."""
    await consumer._client.force_metadata_update()
