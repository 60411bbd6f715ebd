"""Structured logging: one line per event, naming the service and the component."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_json = msgspec.json.Encoder(enc_hook=str)  # anything unusual in a log field becomes its str()


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        fields = getattr(record, "fields", None)
        extra = "".join(f" {k}={v}" for k, v in fields.items()) if fields else ""
        line = f"{ts}.{ms:03d}Z {record.levelname:<7} {self.service} {record.name}: {record.getMessage()}{extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(_TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "service": self.service,
            "component": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _json.encode(doc).decode()


def setup_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service) if fmt == "json" else _TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every retried connection at ERROR; our own code reports those.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("connected", extra=kv(url=u))``."""
    return {"fields": fields}
