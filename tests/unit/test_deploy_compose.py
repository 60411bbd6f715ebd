"""deploy/docker-compose.yml: docker-compose validates it; every part of the stack is there
with health checks, restart policies and named volumes; configuration is mounted and
secure.yml is a secret that never enters the image; deploy/config/compose/ points at it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import load_config

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
CONFIG = ROOT / "deploy" / "config" / "compose"
DAEMONS = {
    "feeder-gateway": "services.feeder_gateway",
    "datamanager": "services.datamanager",
    "tasktimer": "services.tasktimer",
}
NEEDS = {"feeder-gateway": ["kafka"], "datamanager": ["kafka", "redis", "clickhouse"], "tasktimer": ["kafka", "redis"]}
STATEFUL = {"kafka": "/var/lib/kafka/data", "redis": "/data", "clickhouse": "/var/lib/clickhouse",
            "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}  # fmt: skip


def tool(name: str) -> str:
    """The tool's path; missing, a skip on a developer machine and a failure in CI."""
    path = shutil.which(name)
    if path is None:
        hint = f"{name} not found (Debian: deploy/bootstrap.sh installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(hint)
        pytest.skip(hint)
    return path


def compose_env() -> dict[str, str]:
    """The environment without the variables the compose file reads, so its defaults count."""
    drop = {"LIVEDATA_TAG", "LIVEDATA_SECURE_FILE", "CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "KAFKA_CLUSTER_ID"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, paths absolute)."""
    r = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, env=compose_env(), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = yaml.safe_load(r.stdout)
    return doc


def test_docker_compose_validates_the_file() -> None:
    r = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=60, env=compose_env(), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""  # no warning either (an unset variable, an unknown key)


def test_the_stack_has_every_part_with_health_checks_and_restart_policies() -> None:
    services = resolved()["services"]
    assert set(services) >= {"kafka", "redis", "clickhouse", *DAEMONS, "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for name, svc in services.items():
        assert svc.get("restart") == "unless-stopped", name
        if name != "kafka-exporter":  # stateless; its scrape failing is visible in Prometheus
            assert svc["healthcheck"]["test"], name


def test_stateful_services_keep_their_data_in_named_volumes() -> None:
    doc = resolved()
    for name, path in STATEFUL.items():
        mounts = dict(reversed(v.split(":")[:2]) for v in doc["services"][name]["volumes"])
        assert mounts[path] in doc["volumes"], f"{name}: {path} is not on a named volume"


def test_the_three_daemons_run_one_image_with_the_config_mounted_and_the_secret() -> None:
    services = resolved()["services"]
    images = {services[d]["image"] for d in DAEMONS}
    assert len(images) == 1
    for name, module in DAEMONS.items():
        svc = services[name]
        assert svc["command"] == ["python", "-m", module]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["volumes"] == [f"{CONFIG}:/config:ro"]  # mounted read-only, not baked in
        assert svc["environment"]["GINKGO_DIR"] == "/config"
        assert [s["target"] for s in svc["secrets"]] == ["/config/secure.yml"]
        assert {dep: c["condition"] for dep, c in svc["depends_on"].items()} == dict.fromkeys(
            NEEDS[name], "service_healthy"
        )
        # liveness on /healthz at the port the config gives (not /readyz: a standby is not ready)
        probe = " ".join(svc["healthcheck"]["test"])
        assert "/healthz" in probe and "/readyz" not in probe


def test_secure_yml_is_a_secret_read_from_outside_the_image() -> None:
    secrets = resolved()["secrets"]
    assert Path(secrets["livedata-secure"]["file"]) == CONFIG / "secure.yml"
    env = {**compose_env(), "LIVEDATA_SECURE_FILE": "/etc/ginkgo/secure.yml"}
    r = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["secrets"]["livedata-secure"]["file"] == "/etc/ginkgo/secure.yml"


def test_the_dockerfile_bakes_in_no_config_and_the_context_holds_no_secret() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = re.findall(r"^(?:COPY|ADD)\s+(.+?)\s+\S+$", dockerfile, re.MULTILINE)
    assert copied and all("config" not in src and "secure" not in src for src in copied), copied
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**/secure.yml" in ignore and "deploy/config/" in ignore
    # what the builder would be sent, by docker-py's own .dockerignore matcher (docker-compose's)
    python = Path(tool("docker-compose")).read_text().splitlines()[0].removeprefix("#!").split()
    script = (
        "import sys; from docker.utils.build import exclude_paths\n"
        "root = sys.argv[1]; lines = open(root + '/.dockerignore').read().splitlines()\n"
        "pats = [p.strip() for p in lines if p.strip() and not p.startswith('#')]\n"
        "print('\\n'.join(sorted(exclude_paths(root, pats, dockerfile='deploy/Dockerfile'))))"
    )
    r = subprocess.run([*python, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    context = r.stdout.split()
    assert "shared/config.py" in context and "pyproject.toml" in context
    leaked = [p for p in context if p.endswith("secure.yml") or p.startswith(("deploy/config/", ".venv/", ".git/"))]
    assert leaked == []


def test_the_compose_config_dir_points_at_the_compose_services() -> None:
    cfg = load_config(CONFIG, env={"CLICKHOUSE_PASSWORD": "pw"})
    live = cfg.livedata
    assert live.kafka.bootstrap_servers == "kafka:9092"
    assert live.redis.url is not None and live.redis.url.get_secret_value() == "redis://redis:6379/0"
    assert live.clickhouse.url is not None
    assert live.clickhouse.url.get_secret_value() == "clickhouse://livedata:pw@clickhouse:9000/default"
    services = resolved()["services"]
    ports = {
        "feeder-gateway": live.gateway.http,
        "datamanager": live.datamanager.http,
        "tasktimer": live.tasktimer.http,
    }
    for name, http in ports.items():
        assert http.host == "0.0.0.0"
        assert f"127.0.0.1:{http.port}/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
    # the daemons and the ClickHouse server get the same password
    assert services["clickhouse"]["environment"]["CLICKHOUSE_USER"] == "livedata"
    assert (
        services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]
        == services["datamanager"]["environment"]["CLICKHOUSE_PASSWORD"]
    )
