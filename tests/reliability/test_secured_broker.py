"""A secured Apache Kafka: SASL SCRAM-SHA-512 logins, StandardAuthorizer, no ACL = no access.

One broker (same jars, KRaft) with a user per role, created at format time; the ACLs are
exactly what ``livedata acls`` prints (services/ops/acls.py), applied through the Kafka
protocol by the broker's super user; the system's own ``admin`` principal creates the
topics, so every daemon runs with ``create_topics: false`` as its own principal.
Asserted: each daemon becomes ready and interest → subscription → sim ticks → client SDK
works; a wrong password is one clear line and never printed; a strategy node cannot write
commands or market data; the gateway cannot read interest; an unauthenticated client gets
nothing; missing topics are said once (not ready), and a refused create is never retried.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from services.ops.acls import apply_acls, system_acls
from services.ops.servers import free_port, kafka_available
from services.ops.servers.base import kafka_metadata_brokers
from services.ops.servers.kafka import KafkaBroker
from shared.client import LiveDataClient
from shared.config import KafkaSecurity, KafkaSettings, load_config
from shared.dto import CommandResult, ControlCommand, PriceUpdate, utcnow
from shared.kafka import KafkaPublisher, assign_all, ensure_system_topics
from shared.kafka_security import KafkaLoginError, security_options
from shared.topics import Topics
from tests.daemons import Daemon
from tests.helpers import TopicReader, env_without_overrides, eventually, publish, unavailable

pytestmark = pytest.mark.reliability

RUN = uuid.uuid4().hex[:6]
PREFIX = "ld-"  # principal prefix
ROLES = ("gateway", "datamanager", "tasktimer", "operator", "strategy", "admin")
PASSWORDS = {f"{PREFIX}{role}": f"pw-{role}-{RUN}-Zq9" for role in ROLES}
SUPER = ("broker", f"pw-broker-{RUN}")
WRONG = f"not-the-password-{RUN}-Xk3"


def user(role: str) -> str:
    return f"{PREFIX}{role}"


def security(role: str, password: str | None = None) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username=user(role),
        password=password or PASSWORDS[user(role)],
    )


def kafka_as(bootstrap: str, role: str, password: str | None = None) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap, security=security(role, password))


def write_config(
    d: Path, bootstrap: str, prefix: str, role: str, port: int, password: str | None = None, create: bool = False
) -> Path:
    """A config directory for one daemon as ``role``: the username in livedata.yml, the
    password in secure.yml (``kafka: {password}``)."""
    d.mkdir(parents=True)
    live = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "create_topics": create,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 300,
            "security": {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "username": user(role)},
        },
        "topics": {"prefix": prefix},
        "gateway": {"http": {"port": port}},
        "datamanager": {"http": {"port": port}},
        "tasktimer": {"http": {"port": port}},
    }
    sim = {"type": "sim", "ticks_per_s_per_symbol": 20, "interval_ms": 50}
    (d / "livedata.yml").write_text(yaml.safe_dump(live))
    (d / "data_sources.yml").write_text(yaml.safe_dump({"markets": {m: {"sources": [sim]} for m in ("CN", "US")}}))
    (d / "task_timer.yml").write_text(
        yaml.safe_dump({"jobs": [{"name": "snap", "cron": "* * * * *", "command": "bar_snapshot"}]})
    )
    (d / "secure.yml").write_text(yaml.safe_dump({"kafka": {"password": password or PASSWORDS[user(role)]}}))
    (d / "secure.yml").chmod(0o600)
    return d


def daemon(workdir: Path, name: str, bootstrap: str, prefix: str, **kw: Any) -> Daemon:
    port = free_port()
    d = write_config(workdir / f"{name}-{uuid.uuid4().hex[:6]}", bootstrap, prefix, kw.pop("role", name), port, **kw)
    return Daemon(name, d, port, d / f"{name}.log", env_without_overrides())


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    ok, why = kafka_available()
    if not ok:
        unavailable(f"needs Apache Kafka: {why}", forced_by="LIVEDATA_TEST_BROKER")
    b = KafkaBroker(scram_users={SUPER[0]: SUPER[1], **PASSWORDS}, super_user=SUPER[0])
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
async def system(broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Topics, Path]]:
    """ACLs from `livedata acls` applied by the super user; topics created by the admin role."""
    workdir = tmp_path_factory.mktemp("secured")
    topics = Topics(f"sec.{RUN}")
    config = load_config(write_config(workdir / "acl-config", broker.address, topics.prefix, "admin", 0), env={})
    root = KafkaSettings(
        bootstrap_servers=broker.address,
        security=KafkaSecurity(
            protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", username=SUPER[0], password=SUPER[1]
        ),
    )
    await apply_acls(root, system_acls(config, PREFIX))
    await ensure_system_topics(kafka_as(broker.address, "admin"), topics)
    yield topics, workdir


async def test_every_daemon_ready_as_its_own_principal_and_data_flows(
    broker: KafkaBroker, system: tuple[Topics, Path]
) -> None:
    topics, workdir = system
    daemons = [daemon(workdir, name, broker.address, topics.prefix) for name in ("gateway", "datamanager", "tasktimer")]
    try:
        for d in daemons:
            await d.start()
        for d in daemons:
            await d.wait_ready(60)
        # a strategy node: interest → datamanager → subscription → gateway → sim ticks → SDK
        async with LiveDataClient(broker.address, "p1", "n1", topics=topics, security=security("strategy")) as client:
            await client.subscribe(["600000.SH", "AAPL"])
            seen: set[str] = set()

            async def both() -> bool:
                async for update in client:
                    if isinstance(update, PriceUpdate):
                        seen.add(update.symbol)
                    if seen >= {"600000.SH", "AAPL"}:
                        return True
                return False

            assert await asyncio.wait_for(both(), 30)
        # the operator: a command to the datamanager, its answer read back from system.events
        operator = kafka_as(broker.address, "operator")
        async with TopicReader(broker.address, topics.system_events, security_options(operator)) as events:
            async with KafkaPublisher(operator, "op-cli") as pub:
                assert pub.idempotent  # WRITE on a topic allows an idempotent producer (Kafka >= 3)
                cmd = ControlCommand(command="status", correlation_id=f"sec-{RUN}", timestamp=utcnow(), source="op")
                await pub.publish(topics.control_commands, cmd, key="datamanager")
            await events.wait_for(CommandResult, lambda r: r.correlation_id == f"sec-{RUN}" and r.ok, timeout_s=15)
        for d in daemons:
            assert await d.ready(), d.name
    finally:
        for d in daemons:
            await d.stop()
    for d in daemons:
        log = d.log.read_text()
        assert "Authorization" not in log and "AUTHORIZATION" not in log, (
            f"{d.name} was refused something:\n{log[-3000:]}"
        )


async def test_wrong_password_is_one_clear_line_and_never_printed(
    broker: KafkaBroker, system: tuple[Topics, Path]
) -> None:
    topics, workdir = system
    gw = daemon(workdir, "gateway", broker.address, topics.prefix, password=WRONG)
    await gw.start()
    try:
        doc = await eventually(
            lambda: _login_error(gw), timeout_s=30, interval_s=0.2, what="readyz names the refused login"
        )
        assert "refused the login" in doc and user("gateway") in doc
    finally:
        await gw.stop()
    log = gw.log.read_text()
    assert WRONG not in log and WRONG not in doc
    clear = [line for line in log.splitlines() if "refused the login" in line]
    assert len(clear) == 1, "\n".join(clear)
    # the client SDK: start() raises it, one line, no password
    client = LiveDataClient(broker.address, "p1", "n1", topics=topics, security=security("strategy", WRONG))
    with pytest.raises(KafkaLoginError) as info:
        await asyncio.wait_for(client.start(), 30)
    message = str(info.value)
    assert "\n" not in message and WRONG not in message and "refused the login" in message


async def _login_error(d: Daemon) -> str | None:
    try:
        doc = await d.readiness()
    except (aiohttp.ClientError, TimeoutError):  # its HTTP endpoint is not up yet
        return None
    error = str(doc.get("broker_error", ""))
    return error if "refused the login" in error else None


async def test_strategy_cannot_write_commands_or_market_data(broker: KafkaBroker, system: tuple[Topics, Path]) -> None:
    topics, _ = system
    strategy = security_options(kafka_as(broker.address, "strategy"))
    cmd = ControlCommand(command="status", correlation_id="forged", timestamp=utcnow(), source="x")
    for topic in (topics.control_commands, topics.market_data):
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(publish(broker.address, topic, cmd, key="datamanager", security=strategy), 20)
    await asyncio.wait_for(publish(broker.address, topics.interest_updates, b"{}", key="p1/n1", security=strategy), 20)


async def test_gateway_cannot_read_interest(broker: KafkaBroker, system: tuple[Topics, Path]) -> None:
    topics, _ = system
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.address,
        enable_auto_commit=False,
        **security_options(kafka_as(broker.address, "gateway")),
    )
    await consumer.start()
    try:
        tps = await assign_all(consumer, topics.interest_updates, wait_s=10)
        await consumer.seek_to_beginning(*tps)
        with pytest.raises(TopicAuthorizationFailedError):
            for _ in range(50):  # the refusal comes with the first fetch's answer
                await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()


async def test_unauthenticated_client_gets_nothing(broker: KafkaBroker, system: tuple[Topics, Path]) -> None:
    topics, _ = system
    with pytest.raises(OSError):  # a plain-text metadata request: the broker hangs up
        await asyncio.to_thread(kafka_metadata_brokers, broker.host, broker.port)
    producer = AIOKafkaProducer(bootstrap_servers=broker.address, request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(producer.start(), 20)
    await producer.stop()
    consumer = AIOKafkaConsumer(topics.market_data, bootstrap_servers=broker.address, request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(consumer.start(), 20)
    await consumer.stop()


async def test_missing_topics_said_once_not_ready_until_created(
    broker: KafkaBroker, system: tuple[Topics, Path]
) -> None:
    """create_topics: false on a prefix without topics; then a service that may create
    (create_topics: true) but lacks CREATE: both say so once and stay not ready; once the
    admin creates the topics both become ready."""
    _, workdir = system
    fresh = Topics(f"sec.{RUN}.late")
    waiting = daemon(workdir, "tasktimer", broker.address, fresh.prefix)
    refused = daemon(workdir, "tasktimer", broker.address, fresh.prefix, create=True)
    try:
        for d in (waiting, refused):
            await d.start()
        await eventually(lambda: _says(waiting, "system topics missing"), timeout_s=30, what="missing topics said")
        await eventually(lambda: _says(refused, "not allowed to create"), timeout_s=30, what="refused create said")
        for d in (waiting, refused):
            assert not await d.ready()
        await ensure_system_topics(kafka_as(broker.address, "admin"), fresh)
        for d in (waiting, refused):
            await d.wait_ready(30)
    finally:
        for d in (waiting, refused):
            await d.stop()
    for d, line in ((waiting, "system topics missing"), (refused, "not allowed to create")):
        log = d.log.read_text()
        assert log.count(line) == 1, f"{d.name}: {line!r} {log.count(line)} times:\n{log[-3000:]}"
        assert "could not create" not in log and "retrying" not in log.split(line, 1)[1].split("present now")[0]


async def _says(d: Daemon, text: str) -> bool:
    await d.ready()  # raises if the daemon died
    return text in d.log.read_text()
