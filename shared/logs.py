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


class RepeatLimiter(logging.Filter):
    """Lets one record per (logger, message template) through every ``window_s``; the next
    one that passes says how many were suppressed. A broker outage makes aiokafka and our
    retry loops log the same line many times a second, and a flood of bad frames or of
    dead letters does the same in the feeders and the ``kafka`` logger (their counts are
    in /metrics): this keeps one line per state change plus a periodic summary."""

    def __init__(self, window_s: float = 30.0, prefixes: tuple[str, ...] = ("aiokafka", "kafka", "feeder")) -> None:
        super().__init__()
        self.window_s = window_s
        self.prefixes = prefixes
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) > 1000:  # bound: templates are few, but never let it grow
            self._seen.clear()
        suppressed = last[1] if last else 0
        self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar suppressed in the last {self.window_s:.0f}s)"
        return True


def setup_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr, one line each; repeated broker errors rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service) if fmt == "json" else _TextFormatter(service))
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every retried connection at ERROR; our own code reports those.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("connected", extra=kv(url=u))``."""
    return {"fields": fields}
