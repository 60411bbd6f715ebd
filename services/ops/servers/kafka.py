"""Apache Kafka from its Maven Central jars: a single-node KRaft broker + controller.

The jars pinned by ``deploy/kafka/pom.xml`` are resolved once with Maven into a cache
directory (``$LIVEDATA_CACHE_DIR``, else ``$XDG_CACHE_HOME/ginkgo-livedata``, else
``~/.cache/ginkgo-livedata``) and reused by every later start. A broker gets a data
directory (formatted on first start; a restart resumes on the same log), two free
loopback ports (client and controller), a small heap and its own log file.

``scram_users`` makes it a secured broker: SASL SCRAM-SHA-512 on the client listener (the
users are created when the storage is formatted), PLAIN between the broker and its
controller, ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false`` and the
broker's own principal (``super_user``, one of the users) the only super user: a client
may do only what an ACL allows it (see ``services/ops/acls.py``).

``KafkaCluster`` runs three (or more) such nodes as one replicated cluster: every node a
broker and a voter of one KRaft quorum (formatted with ``--initial-controllers``, the same
cluster id on each), internal topics replicated to three with min ISR 2, and methods to
SIGKILL and restart one node for fault tests.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from services.ops.servers.base import LocalServer, ServerError, free_port, kafka_metadata_brokers

REPO = Path(__file__).resolve().parents[3]
POM = REPO / "deploy" / "kafka" / "pom.xml"
HEAP = os.environ.get("LIVEDATA_KAFKA_HEAP", "-Xmx512m -Xms256m")


def cache_dir() -> Path:
    explicit = os.environ.get("LIVEDATA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ginkgo-livedata"


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise ServerError(f"{POM}: no <kafka.version> property")
    return match.group(1).strip()


def java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@cache
def java_major(java: str) -> int:
    """The major version of a ``java`` binary (0 if it does not run)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20, check=False).stderr
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def jars_dir() -> Path:
    return cache_dir() / f"kafka-{kafka_version()}" / "jars"


def jars_resolved() -> bool:
    return (jars_dir().parent / ".complete").exists()


def kafka_available() -> tuple[bool, str]:
    """Whether an Apache Kafka broker can start here, and if not why not."""
    java = java_binary()
    if java is None:
        return False, "no java on PATH (Apache Kafka 4.x needs Java 17+)"
    major = java_major(java)
    if major < 17:
        return False, f"{java} is Java {major or '?'}; Apache Kafka 4.x needs Java 17+"
    if not jars_resolved() and shutil.which("mvn") is None:
        return False, f"the Kafka jars are not cached in {jars_dir()} and there is no mvn to resolve them"
    return True, f"Java {major}"


def resolve_jars() -> Path:
    """Resolve the pinned runtime jars into the cache (once; safe across processes)."""
    target = jars_dir()
    marker = target.parent / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerError(f"cannot resolve Apache Kafka {kafka_version()}: mvn is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving the same version
        if marker.exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix="jars-", dir=target.parent))
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise ServerError(f"mvn could not resolve {POM}:\n{(result.stdout + result.stderr)[-3000:]}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        marker.write_text(kafka_version() + "\n")
    return target


def kafka_uuid() -> str:
    """A random Kafka ``Uuid`` in its base64 form (cluster and directory ids), never one
    starting with '-' or '_' (the storage tool would read a leading '-' as an option)."""
    out = "-"
    while out[0] in "-_":
        out = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return out


@dataclass(frozen=True)
class Voter:
    """One voter of a KRaft quorum: node id, controller endpoint, metadata directory id."""

    node_id: int
    host: str
    port: int
    directory_id: str

    @property
    def spec(self) -> str:
        """As ``kafka-storage format --initial-controllers`` wants it: ``id@host:port:dirid``."""
        return f"{self.node_id}@{self.host}:{self.port}:{self.directory_id}"


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


class KafkaBroker(LocalServer):
    """Apache Kafka, KRaft combined mode, one node, on 127.0.0.1."""

    kind = "Apache Kafka"
    start_timeout_s: ClassVar[float] = 60.0
    supports_idempotence: ClassVar[bool] = True

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        controller_port: int | None = None,
        scram_users: Mapping[str, str] | None = None,
        super_user: str = "admin",
        *,
        node_id: int = 1,
        cluster_id: str | None = None,
        voters: Sequence[Voter] = (),
        internal_replication: int = 1,
        heap: str = HEAP,
        broker_session_timeout_ms: int | None = None,
    ) -> None:
        """``voters``, ``cluster_id`` and ``internal_replication``: a node of a
        ``KafkaCluster`` (alone: its own single-voter quorum, internal topics RF 1)."""
        super().__init__(port, data_dir, log_path)
        self.controller_port = controller_port or free_port()
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.voters = tuple(voters)
        if self.voters and node_id not in {v.node_id for v in self.voters}:
            raise ServerError(f"node {node_id} is not one of the quorum's voters")
        self.internal_replication = internal_replication
        self.heap = heap
        self.broker_session_timeout_ms = broker_session_timeout_ms
        self.scram_users = dict(scram_users or {})
        self.super_user = super_user
        if self.scram_users and super_user not in self.scram_users:
            raise ServerError(f"super_user {super_user!r} is not one of scram_users")
        for name, password in self.scram_users.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or any(c in password for c in '"\\,[]\n'):
                raise ServerError(
                    f"scram user {name!r}: names are [A-Za-z0-9._-]+, passwords without quotes, commas, brackets"
                )

    @property
    def secured(self) -> bool:
        return bool(self.scram_users)

    @property
    def slug(self) -> str:
        return "kafka"

    def describe(self) -> str:
        node = f"node {self.node_id} " if self.voters else ""
        return f"{self.kind} {self.version} {node}at {self.address} (pid {self.pid}, log {self.log_path})"

    @property
    def version(self) -> str:
        return kafka_version()

    @property
    def bootstrap_servers(self) -> str:
        return self.address

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    def _security_properties(self) -> dict[str, str]:
        c = f"{self.host}:{self.controller_port}"
        if not self.secured:
            return {
                "listeners": f"PLAINTEXT://{self.address},CONTROLLER://{c}",
                "advertised.listeners": f"PLAINTEXT://{self.address}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            }
        user, password = self.super_user, self.scram_users[self.super_user]
        return {
            "listeners": f"SASL_PLAINTEXT://{self.address},CONTROLLER://{c}",
            "advertised.listeners": f"SASL_PLAINTEXT://{self.address}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required"
                f' username="{user}" password="{password}";'
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required"
                f' username="{user}" password="{password}" user_{user}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{user}",
        }

    def properties(self) -> str:
        c = f"{self.host}:{self.controller_port}"
        quorum = ",".join(f"{v.host}:{v.port}" for v in self.voters) or c
        rf = str(self.internal_replication)
        min_isr = str(min(2, self.internal_replication))
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.bootstrap.servers": quorum,
            "controller.listener.names": "CONTROLLER",
            **self._security_properties(),
            "log.dirs": str(self.log_dir),
            # the services create their topics with their own partition counts and configs
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            # tests run consumer groups with 1-2 s session timeouts to rebalance quickly
            "group.min.session.timeout.ms": "1000",
            # two cores: fewer idle threads competing with the daemons
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        if self.broker_session_timeout_ms is not None:
            # how long the controller waits for a silent broker before it fences it and
            # moves its partitions' leadership (Kafka's default: 9 s, heartbeats every 2 s)
            settings["broker.session.timeout.ms"] = str(self.broker_session_timeout_ms)
            settings["broker.heartbeat.interval.ms"] = str(max(100, self.broker_session_timeout_ms // 4))
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def prepare(self) -> None:
        java = java_binary()
        if java is None or java_major(java) < 17:
            raise ServerError(kafka_available()[1])
        jars = resolve_jars()
        props = self.data_dir / "server.properties"
        props.touch(mode=0o600)  # it holds the super user's password when secured
        props.chmod(0o600)
        props.write_text(self.properties())
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        if (self.log_dir / "meta.properties").exists():
            return  # formatted before: a restart resumes on the same log
        cluster_id = self.cluster_id or kafka_uuid()
        # one voter: itself; several: every node formatted with the same list (KIP-853)
        quorum = ["--initial-controllers", ",".join(v.spec for v in self.voters)] if self.voters else ["--standalone"]
        result = subprocess.run(
            [
                java,
                "-cp",
                f"{jars}/*",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.data_dir / "server.properties"),
                *quorum,
                *(
                    arg
                    for name, password in self.scram_users.items()
                    for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
                ),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"kafka-storage format failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def command(self) -> list[str]:
        java = java_binary()
        assert java is not None  # checked in prepare()
        return [
            java,
            *self.heap.split(),
            "-XX:+UseSerialGC",  # one core's worth of GC threads on a 2-core machine
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{jars_dir()}/*",
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]

    def answers(self) -> bool:
        if self.secured:
            return self._sasl_answers()
        return kafka_metadata_brokers(self.host, self.port) > 0

    def _sasl_answers(self) -> bool:
        """Log in as the super user and ask for metadata (aiokafka, on a loop of its own in a
        worker thread: the caller may be inside an event loop)."""
        from aiokafka.client import AIOKafkaClient
        from aiokafka.errors import KafkaError

        with socket.create_connection((self.host, self.port), timeout=1.0):
            pass  # not listening yet: OSError, without aiokafka logging a failed bootstrap

        async def probe() -> bool:
            client = AIOKafkaClient(
                bootstrap_servers=self.address,
                client_id="livedata-probe",
                request_timeout_ms=2000,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_plain_username=self.super_user,
                sasl_plain_password=self.scram_users[self.super_user],
            )
            try:
                await client.bootstrap()
                return bool(client.cluster.brokers())
            except KafkaError:
                return False
            finally:
                await client.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, probe()).result(timeout=10)


class KafkaCluster:
    """Apache Kafka as a replicated cluster on 127.0.0.1: ``size`` combined broker +
    controller nodes, all voters of one KRaft quorum.

    Every node is formatted with the same cluster id and the same ``--initial-controllers``
    list (each voter's id, controller endpoint and directory id), so the quorum has all of
    them from the start and survives the loss of a minority. Internal topics (consumer
    offsets, transaction and share state) have replication factor ``size`` and min ISR 2.
    ``kill(i)`` SIGKILLs one node (its log stays), ``restart(i)`` starts it again on the same
    ports and log. Each JVM gets ``heap`` (three 512 MB heaps do not fit beside the daemons
    on a small machine).
    """

    kind = "Apache Kafka cluster"

    def __init__(
        self,
        size: int = 3,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        heap: str = os.environ.get("LIVEDATA_KAFKA_CLUSTER_HEAP", "-Xmx384m -Xms128m"),
        broker_session_timeout_ms: int | None = None,
    ) -> None:
        if size < 1:
            raise ServerError(f"a cluster needs at least one node, not {size}")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="livedata-kafka-cluster-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = Path(log_dir) if log_dir else self.data_dir
        host = "127.0.0.1"
        voters = [Voter(i, host, free_port(), kafka_uuid()) for i in range(1, size + 1)]
        self.cluster_id = kafka_uuid()
        self.nodes = [
            KafkaBroker(
                data_dir=self.data_dir / f"node-{v.node_id}",
                log_path=logs / f"kafka-node-{v.node_id}.log",
                controller_port=v.port,
                node_id=v.node_id,
                cluster_id=self.cluster_id,
                voters=voters,
                internal_replication=size,
                heap=heap,
                broker_session_timeout_ms=broker_session_timeout_ms,
            )
            for v in voters
        ]

    @property
    def version(self) -> str:
        return kafka_version()

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated (the clients' bootstrap list)."""
        return ",".join(n.address for n in self.nodes)

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    def node(self, node_id: int) -> KafkaBroker:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise ServerError(f"no node {node_id} in this cluster (1..{len(self.nodes)})")

    def describe(self) -> str:
        """One line per node (which version, where, pid, log), under a header line."""
        running = sum(n.running for n in self.nodes)
        head = (
            f"{self.kind} {self.version}: {len(self.nodes)} nodes ({running} running), cluster id {self.cluster_id},"
            f" bootstrap {self.bootstrap_servers}"
        )
        return "\n".join([head, *(f"  {n.describe()}" for n in self.nodes)])

    def start(self, timeout_s: float | None = None) -> Self:
        """Start every node that is not running and return once the metadata lists them all.

        The nodes are launched together: a voter cannot answer until a majority is up."""
        try:
            starting = [n for n in self.nodes if not n.running]
            for n in starting:
                n.prepare()
                n.launch()
            for n in starting:
                n.await_ready(timeout_s)
            self.await_brokers(sum(n.running for n in self.nodes), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def await_brokers(self, count: int, timeout_s: float | None = None) -> None:
        """Return once every running node's metadata lists ``count`` brokers (registered
        and unfenced); ServerError at the deadline."""
        deadline = time.monotonic() + (timeout_s or KafkaBroker.start_timeout_s)
        seen: dict[int, int] = {}
        while True:
            for n in self.nodes:
                if n.running:
                    try:
                        seen[n.node_id] = kafka_metadata_brokers(n.host, n.port)
                    except OSError:
                        seen[n.node_id] = 0
            if all(seen.get(n.node_id) == count for n in self.nodes if n.running):
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.kind}: metadata lists {seen} brokers per node, not {count}:\n{self.describe()}"
                )
            time.sleep(0.1)  # metadata probe interval while the brokers register

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash): its log stays for ``restart``."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout_s: float | None = None) -> None:
        """Start a killed or stopped node again on its own ports and log, and return once
        every running node lists it."""
        self.node(node_id).start(timeout_s)
        self.await_brokers(sum(n.running for n in self.nodes), timeout_s)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def close(self) -> None:
        """Stop every node and remove the data directory if the launcher made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
