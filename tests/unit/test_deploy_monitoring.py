"""deploy/prometheus and deploy/grafana: promtool checks the config, the rules and their unit
tests; the dashboard's queries parse and name only metrics the daemons export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.datamanager.service import DataManager
from services.feeder_gateway.service import FeederGateway
from services.tasktimer.service import TaskTimer
from shared.config import load_config

ROOT = Path(__file__).parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "livedata.rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.test.yml"))
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "livedata.json"

# metrics that come from elsewhere than the daemons: Prometheus itself, kafka-exporter
EXTERNAL_METRICS = {"up", "ALERTS", "kafka_consumergroup_lag"}
# what the issue asks the dashboard to show, as words of its panel titles
DASHBOARD_TOPICS = ("ticks", "latency", "conflat", "dead letters", "reconnects", "failover", "lag", "bars", "timer")
DAEMONS = {"feeder-gateway": "gateway", "datamanager": "datamanager", "tasktimer": "tasktimer"}


def tool(name: str) -> str:
    """The tool's path; missing, a skip on a developer machine and a failure in CI."""
    path = shutil.which(name)
    if path is None:
        hint = f"{name} not found (Debian: deploy/bootstrap.sh installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(hint)
        pytest.skip(hint)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return d


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_prometheus_config_is_valid() -> None:
    r = run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr  # the rules glob finds the rules file


def test_alert_rules_are_valid() -> None:
    r = run(tool("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    assert RULE_TESTS
    r = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout + r.stderr


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["runbook"]) > 80, f"{name}: a runbook says what to look at and do"


def test_every_alert_fires_in_a_unit_test() -> None:
    fired: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert {r["alert"] for r in rules()} - fired == set()


def test_the_alerts_the_issue_asks_for_exist() -> None:
    names = {r["alert"] for r in rules()}
    assert {
        "FeedStaleInSession",
        "TicksConflated",
        "DeadLetters",
        "ConsumerLagHigh",
        "DatamanagerNoActive",
        "TimerFireFailed",
        "CalendarUnconfirmed",
    } <= names


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    # promtool parses PromQL only inside rule files: check them as recording rules
    recording = {
        "groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    f = tmp_path / "dashboard.rules.yml"
    f.write_text(yaml.safe_dump(recording))
    r = run(tool("promtool"), "check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


# the series a metric family of each type is scraped as
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


async def exported_series() -> set[str]:
    """Every series name the three daemons serve, from their own registries (built with the
    compose config, ClickHouse included, so the store's metrics are registered too)."""
    config = load_config(ROOT / "deploy" / "config" / "compose", env={"CLICKHOUSE_PASSWORD": "unused"})
    names: set[str] = set()
    for cls in (FeederGateway, DataManager, TaskTimer):
        service = cls(config)  # builds its parts; nothing connects before run()
        try:
            for family in service.metrics.registry.collect():
                names |= {family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
        finally:  # built, never started: close the producer (stop() skips an unstarted one)
            await service.publisher._producer.stop()
    return names


@pytest.mark.parametrize("source", ["dashboard", "rules"])
async def test_queries_name_only_series_the_daemons_serve(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in rules()]
    used = {m for e in exprs for m in re.findall(r"\b(livedata_[a-z0-9_]+|kafka_[a-z_]+|up|ALERTS)\b", e)}
    served = await exported_series()
    assert "livedata_datamanager_bars_stored_total" in served  # the ClickHouse store's metrics counted
    unknown = used - served - EXTERNAL_METRICS
    assert unknown == set(), f"{source} names series no daemon serves: {sorted(unknown)}"


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] == "ginkgo-livedata"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("description"), f"{p['title']}: say what the panel shows"
    titles = " ".join(p["title"].lower() for p in d["panels"])
    assert "datamanager role" in titles
    for topic in DASHBOARD_TOPICS:
        assert topic in titles, topic


def test_grafana_provisioning_matches_the_compose_stack() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    default_ds = dashboard()["templating"]["list"][0]["current"]["value"]
    assert ds["uid"] == default_ds
    assert ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "livedata.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_scrape_targets_match_the_compose_services_and_ports() -> None:
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    live = yaml.safe_load((ROOT / "deploy" / "config" / "compose" / "livedata.yml").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    for service, section in DAEMONS.items():
        sd = jobs[service]["dns_sd_configs"][0]
        assert sd["names"] == [service] and service in compose["services"]
        assert sd["port"] == live[section]["http"]["port"]
        assert live[section]["http"]["host"] == "0.0.0.0"  # reachable from the prometheus container
    assert jobs["kafka-exporter"]["static_configs"][0]["targets"] == ["kafka-exporter:9308"]
    assert "kafka-exporter" in compose["services"]
