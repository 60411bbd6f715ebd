"""Fixtures: a real Kafka broker (tests/plugins/broker.py), per-test topics, config directories."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.config import AppConfig, KafkaSettings, TopicPartitions, load_config
from shared.kafka import ensure_topics
from shared.topics import Topics
from tests.helpers import env_without_overrides, write_config_dir

pytest_plugins = ["tests.plugins.broker", "tests.plugins.redis", "tests.plugins.clickhouse"]


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    """A fresh topic prefix per test; its topics are deleted afterwards."""
    t = Topics(f"test.{uuid.uuid4().hex[:10]}")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    await ensure_topics(kafka, t.with_partitions(TopicPartitions(market_data=3)), t.with_configs(kafka.retention))
    yield t
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(t.prefix + ".")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


FAST_KAFKA = {
    "linger_ms": 0,
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 300,
    "partitions": {"market_data": 3},
}


@pytest.fixture
def make_config(tmp_path: Path, kafka_bootstrap: str) -> Callable[..., AppConfig]:
    """Write a config directory for a test and load it.

    ``make_config(topics, livedata={...}, data_sources={...}, task_timer={...})``; the
    broker, the topic prefix and fast consumer-group timings are filled in.
    """

    def make(topics: Topics, livedata: dict[str, Any] | None = None, **files: Any) -> AppConfig:
        kafka = {"bootstrap_servers": kafka_bootstrap, **FAST_KAFKA}
        d = write_config_dir(tmp_path, kafka, topics.prefix, livedata, **files)
        return load_config(d, env=env_without_overrides())

    return make


@pytest.fixture
def demo_config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "demo"
    shutil.copytree(Path(__file__).parent.parent / "deploy" / "config" / "demo", d)
    return d
