"""What every ``livedata`` command shares: exit codes, the config it works on, one-line
errors, the broker's clients and ``key=value`` parameters.

Exit codes scripts can rely on (README "Operating it"):

- 0: done / everything ready
- 1: not ready, failed, or nothing found (a command_result with ok=false, no bars)
- 2: usage or configuration error (bad flag, bad config file, bad parameter)
- 3: the broker or a store (Redis, ClickHouse, a daemon's HTTP port) is unreachable
- 130: interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.config import AppConfig, ConfigError, load_config

OK, NOT_READY, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 not ready/failed, 2 usage or config error, 3 broker or store unreachable."


class Unreachable(Exception):
    """The broker or a store did not answer; the message names which and where."""


class UsageError(Exception):
    """A bad argument the command itself found (exit 2)."""


def resolve_config_dir(config_dir: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """--config-dir, else $GINKGO_DIR, else ~/.ginkgo if it exists, else the running local
    stack's (``livedata demo``/``up``), else None (load_config then says what is missing)."""
    from services.ops.runfile import running_stack

    env = os.environ if env is None else env
    if config_dir is not None:
        return config_dir
    if env.get("GINKGO_DIR"):
        return Path(env["GINKGO_DIR"])
    home = Path.home() / ".ginkgo"
    if home.is_dir():
        return home
    stack = running_stack()
    return Path(stack["config_dir"]) if stack else None


def config_for(config_dir: Path | None) -> AppConfig:
    """The config a command works on (see resolve_config_dir)."""
    d = resolve_config_dir(config_dir)
    if d is None:
        raise ConfigError(
            f"{Path.home() / '.ginkgo'}: config directory does not exist"
            " (--config-dir, else $GINKGO_DIR, else ~/.ginkgo, else a running `livedata demo` or `livedata up`)"
        )
    return load_config(d)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` words into a dict, values parsed as YAML scalars (``n=3`` is 3)."""
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad parameter {item!r}: expected key=value")
        params[key] = yaml.safe_load(value) if value else ""
    return params


def err(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr, flush=True)


def describe_broker_error(config: AppConfig, e: BaseException) -> str:
    return f"broker {config.livedata.kafka.bootstrap_servers} unreachable ({type(e).__name__}: {e})"


async def start_consumer(config: AppConfig, client_id: str, **extra: Any) -> Any:
    """A started AIOKafkaConsumer (no group unless ``group_id`` is given); Unreachable if
    the broker does not answer."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from shared.kafka import consumer_options

    consumer = AIOKafkaConsumer(**consumer_options(config.livedata.kafka, client_id, **extra))
    try:
        await consumer.start()
    except (KafkaError, OSError) as e:
        await consumer.stop()
        raise Unreachable(describe_broker_error(config, e)) from None
    return consumer


async def start_publisher(config: AppConfig, client_id: str) -> Any:
    """A started KafkaPublisher; Unreachable if the broker does not answer."""
    from aiokafka.errors import KafkaError

    from shared.kafka import KafkaPublisher

    await ensure_reachable(config)  # a publisher whose start failed cannot be closed cleanly
    pub = KafkaPublisher(config.livedata.kafka, client_id)
    try:
        await pub.start()
    except (KafkaError, OSError) as e:
        await pub.stop()
        raise Unreachable(describe_broker_error(config, e)) from None
    return pub


def client_options(config: AppConfig, client_id: str) -> dict[str, Any]:
    """What a plain client or an admin client takes: the connection and its security."""
    from shared.kafka_security import security_options

    k = config.livedata.kafka
    return {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": client_id,
        "request_timeout_ms": k.request_timeout_ms,
        **security_options(k),
    }


async def ensure_reachable(config: AppConfig) -> None:
    """Unreachable unless the broker answers a bootstrap (a plain client: a consumer
    stopped right after its start trips over its own cancelled task)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(**client_options(config, "livedata-cli-probe"))
    try:
        await client.bootstrap()
    except (KafkaError, OSError) as e:
        raise Unreachable(describe_broker_error(config, e)) from None
    finally:
        await client.close()
