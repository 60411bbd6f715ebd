"""``livedata tail``: the decoded messages of any topic, like kcat (dead letters with their
reasons, undecodable values shown raw)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec

from services.ops.common import NOT_READY, OK, USAGE, config_for, err, start_consumer
from shared.dto import DeadLetter, DecodeError, Message, decode
from shared.topics import Topics

SUFFIXES = (
    "market.data",
    "interest.updates",
    "control.commands",
    "feeder.subscriptions",
    "system.events",
    "deadletter",
)


def topic_names(topics: Topics, wanted: list[str]) -> list[str]:
    """Full topic names from suffixes (``deadletter``) or full names; all six by default."""
    if not wanted:
        return [topics.named(s) for s in SUFFIXES]
    return [w if w.startswith(topics.prefix + ".") else topics.named(w) for w in wanted]


def describe(msg: Message) -> str:
    """A message's fields on one line (a dead letter leads with its reason)."""
    if isinstance(msg, DeadLetter):
        raw = msg.raw if len(msg.raw) <= 200 else msg.raw[:200] + "..."
        return (
            f"reason={msg.reason!r} from={msg.source_topic}[{msg.partition}]@{msg.offset}"
            f" service={msg.service} key={msg.key} raw={raw!r}"
        )
    doc = msgspec.to_builtins(msg)
    doc.pop("type", None)
    doc.pop("v", None)
    return " ".join(f"{k}={v}" for k, v in doc.items() if v not in (None, False, {}, []))


async def run_tail(
    config_dir: Path | None,
    topic: list[str],
    types: list[str],
    symbol: str | None,
    from_beginning: bool,
    count: int,
    duration_s: float | None,
    as_json: bool,
) -> int:
    from shared.kafka import assign_all
    from shared.symbols import normalize

    config = config_for(config_dir)
    topics = Topics(config.livedata.topics.prefix)
    names = topic_names(topics, topic)
    want_symbol = normalize(symbol) if symbol else None
    consumer = await start_consumer(config, "livedata-tail")
    shown = 0
    try:
        tps = []
        for name in names:
            try:
                tps += await assign_all(consumer, name, wait_s=2.0)
            except Exception:
                err(f"no topic {name} on {config.livedata.kafka.bootstrap_servers}")
                return USAGE
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        deadline = time.monotonic() + duration_s if duration_s else None
        while deadline is None or time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, recs in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
                for rec in recs:
                    line = _line(rec, tp.topic, topics, types, want_symbol, as_json)
                    if line is None:
                        continue
                    print(line, flush=True)
                    shown += 1
                    if count and shown >= count:
                        return OK
    finally:
        await consumer.stop()
    return OK if shown or not count else NOT_READY


def _line(rec: Any, topic: str, topics: Topics, types: list[str], symbol: str | None, as_json: bool) -> str | None:
    key = rec.key.decode("utf-8", errors="replace") if rec.key else None
    short = topic.removeprefix(topics.prefix + ".")
    try:
        msg: Message | None = decode(rec.value or b"")
        kind = msg.__struct_config__.tag if msg is not None else "undecodable"
    except DecodeError as e:
        msg, kind = None, "undecodable"
        error = str(e)
    if types and kind not in types:
        return None
    if symbol is not None:
        msg_symbol = getattr(msg, "symbol", None) or getattr(msg, "key", None)
        if symbol not in (key, msg_symbol) and symbol not in getattr(msg, "symbols", ()):
            return None
    if as_json:
        doc: dict[str, Any] = {"topic": topic, "partition": rec.partition, "offset": rec.offset, "key": key}
        doc["message"] = msgspec.to_builtins(msg) if msg is not None else None
        if msg is None:
            doc["error"] = error
            doc["raw"] = (rec.value or b"")[:2000].decode("utf-8", errors="replace")
        return json.dumps(doc, separators=(",", ":"))
    where = f"{short}[{rec.partition}]@{rec.offset}"
    if msg is None:
        raw = (rec.value or b"")[:200].decode("utf-8", errors="replace")
        return f"{where} key={key} undecodable: {error} raw={raw!r}"
    return f"{where} key={key} {kind} {describe(msg)}"
