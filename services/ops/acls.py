"""Least privilege on a secured cluster: the exact Kafka ACLs each principal of the system needs.

One principal per role (``User:{prefix}{role}``):

- ``gateway`` reads ``feeder.subscriptions`` and ``control.commands`` (``repair_bars``); writes
  ``market.data`` (ticks, corrections, provider minute history), ``system.events``, ``deadletter``;
- ``datamanager`` reads ``interest.updates``, ``control.commands``, ``market.data`` (ticks) and
  ``system.events`` (answers a dead predecessor published); writes ``market.data`` (bars),
  ``feeder.subscriptions``, ``control.commands`` (the repairs it asks the gateway for),
  ``system.events``, ``deadletter``; commits offsets in the consumer
  groups ``{datamanager.group_id}.*``;
- ``tasktimer`` writes the jobs' topics (``control.commands``) and ``system.events``;
- ``operator`` (the ``livedata`` CLI) writes the jobs' topics and reads ``system.events``;
- ``strategy`` (a node on the client SDK) reads ``market.data`` and writes ``interest.updates``
  only;
- ``admin`` creates the topics (``CREATE`` on the topic prefix); the services then run with
  ``kafka.create_topics: false``.

Every principal may DESCRIBE the topics under the prefix: the broker watch lists them to see
that the system's topics exist (names and partitions only; no data). No producer needs
``IDEMPOTENT_WRITE`` on the cluster: since Kafka 3.0 (KIP-679) ``WRITE`` on any topic allows an
idempotent producer. No consumer but the datamanager's uses a group (the others ``assign()``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from shared.config import AppConfig, KafkaSettings
from shared.kafka_security import security_options
from shared.topics import Topics

Resource = Literal["topic", "group", "cluster"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "describe", "create"]

ROLES = ("gateway", "datamanager", "tasktimer", "operator", "strategy", "admin")
FORMATS = ("kafka-acls", "json", "table")

# Kafka protocol codes (org.apache.kafka.common.acl / resource)
_RESOURCE_CODES = {"topic": 2, "group": 3, "cluster": 4}
_PATTERN_CODES = {"literal": 3, "prefixed": 4}
_OPERATION_CODES = {"read": 3, "write": 4, "create": 5, "describe": 8}
_ALLOW = 3


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``principal`` may ``operation`` on ``resource`` ``name`` (any host)."""

    role: str
    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation


def principal_of(prefix: str, role: str) -> str:
    return f"User:{prefix}{role}"


def system_acls(config: AppConfig, principal_prefix: str) -> list[Acl]:
    """Every ACL the system's principals need under ``config``'s topic prefix, job topics and group id."""
    live = config.livedata
    t = Topics(live.topics.prefix)
    job_topics = sorted({t.named(job.topic) for job in config.task_timer.jobs} | {t.control_commands})
    group = live.datamanager.group_id
    reads: dict[str, list[str]] = {
        "gateway": [t.subscriptions, t.control_commands],
        "datamanager": [t.interest_updates, t.control_commands, t.market_data, t.system_events],
        "tasktimer": [],
        "operator": [t.system_events],
        "strategy": [t.market_data],
        "admin": [],
    }
    writes: dict[str, list[str]] = {
        "gateway": [t.market_data, t.system_events, t.deadletter],
        "datamanager": [t.market_data, t.subscriptions, t.control_commands, t.system_events, t.deadletter],
        "tasktimer": [*job_topics, t.system_events],
        "operator": job_topics,
        "strategy": [t.interest_updates],
        "admin": [],
    }
    acls: list[Acl] = []
    for role in ROLES:
        p = principal_of(principal_prefix, role)
        acls.append(Acl(role, p, "topic", f"{t.prefix}.", "prefixed", "describe"))
        acls += [Acl(role, p, "topic", name, "literal", "read") for name in reads[role]]
        acls += [Acl(role, p, "topic", name, "literal", "write") for name in writes[role]]
        if role == "datamanager":  # offsets of its consumers {group_id}.bars, {group_id}.commands
            acls.append(Acl(role, p, "group", f"{group}.", "prefixed", "read"))
        if role == "admin":
            acls.append(Acl(role, p, "topic", f"{t.prefix}.", "prefixed", "create"))
    return acls


def for_role(acls: list[Acl], role: str) -> list[Acl]:
    return [a for a in acls if a.role == role]


def render(acls: list[Acl], fmt: str) -> str:
    """``kafka-acls``: one kafka-acls.sh command per rule; ``json``: a list of rules; ``table``."""
    if fmt == "json":
        return json.dumps([{**asdict(a), "permission": "allow", "host": "*"} for a in acls], indent=2)
    if fmt == "table":
        rows = [f"{'principal':<28}{'operation':<10}{'resource':<9}{'pattern':<9}name"]
        rows += [f"{a.principal:<28}{a.operation:<10}{a.resource:<9}{a.pattern:<9}{a.name}" for a in acls]
        return "\n".join(rows)
    if fmt != "kafka-acls":
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    lines = [
        "# apply as the cluster admin; admin.properties holds its security.protocol, sasl.* and ssl.*",
        'BOOTSTRAP="${BOOTSTRAP:?set BOOTSTRAP to the brokers}"',
    ]
    role = None
    for a in acls:
        if a.role != role:
            role = a.role
            lines.append(f"# {role}")
        target = {"topic": f"--topic '{a.name}'", "group": f"--group '{a.name}'", "cluster": "--cluster"}[a.resource]
        lines.append(
            'kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config admin.properties --add'
            f" --allow-principal '{a.principal}' --operation {a.operation.capitalize()} {target}"
            f" --resource-pattern-type {a.pattern}"
        )
    return "\n".join(lines)


class AclError(Exception):
    """The broker refused to create an ACL."""


async def apply_acls(kafka: KafkaSettings, acls: list[Acl]) -> None:
    """Create ``acls`` on the cluster through the Kafka protocol (CreateAcls), as the
    principal in ``kafka.security`` (one with ALTER on the cluster, e.g. a super user)."""
    client = AIOKafkaClient(
        bootstrap_servers=kafka.bootstrap_servers, client_id="livedata-acls", **security_options(kafka)
    )
    await client.bootstrap()
    try:
        node = client.get_random_node()
        for a in acls:
            request = CreateAclsRequest(
                resource_type=_RESOURCE_CODES[a.resource],
                resource_name="kafka-cluster" if a.resource == "cluster" else a.name,
                resource_pattern_type_filter=_PATTERN_CODES[a.pattern],
                principal=a.principal,
                host="*",
                operation=_OPERATION_CODES[a.operation],
                permission_type=_ALLOW,
            )
            response = await client.send(node, request)
            for code, message in response.creation_responses:
                if code:
                    raise AclError(f"{a}: {for_code(code).__name__}: {message}")
    finally:
        await client.close()


def run_acls(config_dir: Path | None, principal_prefix: str, fmt: str, role: str | None = None) -> int:
    """``livedata acls``: print the ACLs of the config directory's topics and group id."""
    from services.ops.common import UsageError, config_for

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if role is not None and role not in ROLES:
        raise UsageError(f"--role {role}: one of {', '.join(ROLES)}")
    acls = system_acls(config_for(config_dir), principal_prefix)
    print(render(for_role(acls, role) if role else acls, fmt))
    return 0
