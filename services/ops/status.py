"""``livedata status``: the whole system on one screen (like ``kubectl get``): each daemon's
health, readiness and role (its /healthz, /readyz, /metrics at the port livedata.yml
gives it), each market's active source and connection, the gateway's queue depth and
conflated count, dead letters, the datamanager's consumer lag, the last alerts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from services.ops.common import NOT_READY, OK, UNREACHABLE, Unreachable, client_options, config_for, start_consumer
from shared.config import AppConfig, HttpSettings

SERVICES = ("gateway", "datamanager", "tasktimer")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: each sample's name summed over its labels (``_total`` kept)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def probe(session: aiohttp.ClientSession, name: str, http: HttpSettings) -> dict[str, Any]:
    doc: dict[str, Any] = {"service": name, "url": f"http://{http.host}:{http.port}"}
    if not http.enabled or http.port == 0:
        doc.update(reachable=False, ready=False, error=f"{name}.http.port is {http.port}: no fixed port to ask")
        return doc
    try:
        async with session.get(doc["url"] + "/healthz") as r:
            doc["health"] = await r.json(content_type=None)
        async with session.get(doc["url"] + "/readyz") as r:
            doc["ready"] = r.status == 200
            doc["readiness"] = await r.json(content_type=None)
        async with session.get(doc["url"] + "/metrics") as r:
            doc["metrics"] = parse_metrics(await r.text())
        doc["reachable"] = True
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        doc.update(reachable=False, ready=False, error=f"{type(e).__name__}: {e}".strip(": "))
    return doc


async def consumer_lag(config: AppConfig) -> dict[str, Any]:
    """Per datamanager group: committed offset vs end offset, summed over partitions."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.kafka import consumer_options
    from shared.topics import Topics

    kafka = config.livedata.kafka
    topics = Topics(config.livedata.topics.prefix)
    base = config.livedata.datamanager.group_id
    groups = {f"{base}.bars": topics.market_data, f"{base}.commands": topics.control_commands}
    opts = consumer_options(kafka, "livedata-status")
    admin = AIOKafkaAdminClient(**client_options(config, "livedata-status"))
    consumer = AIOKafkaConsumer(**opts)
    await admin.start()
    try:
        await consumer.start()
        out: dict[str, Any] = {}
        for group, topic in groups.items():
            committed = {
                tp: meta.offset
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
                if tp.topic == topic and meta.offset >= 0
            }
            if not committed:
                out[group] = {"topic": topic, "lag": None, "note": "no committed offsets"}
                continue
            ends = await consumer.end_offsets(list(committed))
            lag = sum(max(0, ends[tp] - off) for tp, off in committed.items())
            out[group] = {"topic": topic, "lag": lag, "partitions": len(committed)}
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def last_alerts(config: AppConfig, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts on system.events (of its last few hundred events)."""
    import msgspec

    from shared.dto import Alert, DecodeError, decode
    from shared.kafka import assign_all, at_end
    from shared.topics import Topics

    consumer = await start_consumer(config, "livedata-status")
    try:
        tps = await assign_all(consumer, Topics(config.livedata.topics.prefix).system_events, wait_s=2.0)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - 500))
        alerts: list[Alert] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for recs in batches.values():
                for rec in recs:
                    try:
                        msg = decode(rec.value or b"")
                    except DecodeError:
                        continue
                    if isinstance(msg, Alert):
                        alerts.append(msg)
            if not batches and await at_end(consumer, tps):
                break
        alerts.sort(key=lambda a: a.timestamp)
        return [msgspec.to_builtins(a) for a in alerts[-limit:]]
    finally:
        await consumer.stop()


async def gather_status(config: AppConfig, alerts: int) -> dict[str, Any]:
    from aiokafka.errors import KafkaError

    live = config.livedata
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        daemons = await asyncio.gather(*(probe(session, n, getattr(live, n).http) for n in SERVICES))
    doc: dict[str, Any] = {"config_dir": str(config.directory), "broker": live.kafka.bootstrap_servers}
    doc["daemons"] = {d["service"]: d for d in daemons}
    gw = doc["daemons"]["gateway"]
    doc["markets"] = (gw.get("readiness") or {}).get("feeds", {})
    metrics = [d.get("metrics", {}) for d in daemons]
    doc["queue_depth"] = (gw.get("health") or {}).get("queue_depth")
    doc["conflated"] = (gw.get("health") or {}).get("conflated")
    doc["dead_lettered"] = sum(m.get("livedata_dead_lettered_total", 0.0) for m in metrics)
    try:
        doc["alerts"] = await last_alerts(config, alerts)
        doc["broker_reachable"] = True
    except (KafkaError, OSError, Unreachable) as e:
        doc["broker_reachable"] = False
        doc["broker_error"] = str(e) if isinstance(e, Unreachable) else f"{type(e).__name__}: {e}"
    if doc["broker_reachable"]:
        try:
            doc["consumer_lag"] = await consumer_lag(config)
        except (KafkaError, OSError) as e:  # e.g. a broker without the group offsets API (Tansu)
            doc["consumer_lag_error"] = f"{type(e).__name__}: {e}"
    doc["ready"] = doc["broker_reachable"] and all(d["ready"] for d in daemons)
    return doc


def render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    reach = "" if doc["broker_reachable"] else f"  [red]UNREACHABLE: {doc.get('broker_error')}[/red]"
    console.print(f"[bold]config[/bold] {doc['config_dir']}   [bold]broker[/bold] {doc['broker']}{reach}")
    t = Table(title="daemons", title_justify="left", header_style="bold")
    for c in ("service", "url", "health", "ready", "role", "detail"):
        t.add_column(c)
    for name, d in doc["daemons"].items():
        health = (d.get("health") or {}).get("status", "-") if d["reachable"] else "[red]unreachable[/red]"
        ready = "[green]ready[/green]" if d["ready"] else "[red]NOT READY[/red]"
        readiness = d.get("readiness") or {}
        role = str(readiness.get("role") or (d.get("health") or {}).get("role") or "-")
        detail = d.get("error") or ", ".join(
            f"{k}={v}"
            for k, v in readiness.items()
            if k not in ("ready", "role", "feeds", "instance") and v is not True
        )
        t.add_row(name, d["url"], health, ready, role, detail or "")
    console.print(t)
    if doc["markets"]:
        m = Table(title="markets", title_justify="left", header_style="bold")
        for c in ("market", "active source", "connection", "symbols"):
            m.add_column(c)
        for market, f in doc["markets"].items():
            conn = "[green]connected[/green]" if f.get("connected") else "[yellow]disconnected[/yellow]"
            m.add_row(market, str(f.get("source")), conn, str(f.get("symbols")))
        console.print(m)
    console.print(
        f"queue depth {_n(doc['queue_depth'])}   conflated {_n(doc['conflated'])}"
        f"   dead-lettered {_n(doc['dead_lettered'])}"
    )
    for group, lag in (doc.get("consumer_lag") or {}).items():
        value = lag["lag"] if lag["lag"] is not None else f"- ({lag.get('note')})"
        console.print(f"consumer lag {group} ({lag['topic']}): {value}")
    if doc.get("consumer_lag_error"):
        console.print(f"consumer lag: unavailable from this broker ({doc['consumer_lag_error']})")
    alerts = doc.get("alerts") or []
    console.print(f"[bold]last alerts[/bold] ({len(alerts)})" + ("" if alerts else ": none"))
    for a in alerts:
        sym = f" {a['symbol']}" if a.get("symbol") else ""
        console.print(f"  {a['timestamp']} {a['severity']:<8} {a['service']} {a['code']}{sym}: {a['message']}")
    console.print("[green]all ready[/green]" if doc["ready"] else "[red]something is not ready[/red]")


def _n(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if isinstance(v, int | float) else str(v)


async def run_status(config_dir: Path | None, as_json: bool, alerts: int) -> int:
    config = config_for(config_dir)
    doc = await gather_status(config, alerts)
    if as_json:
        print(json.dumps(doc, default=str))
    else:
        render(doc)
    if not doc["broker_reachable"]:
        return UNREACHABLE
    return OK if doc["ready"] else NOT_READY
