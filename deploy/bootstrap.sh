#!/usr/bin/env bash
# Creates .venv and installs the project with its dev tools. As root on Debian it first
# installs what is missing from Debian's packages: python3-venv, and the servers the tests
# and `livedata up` start themselves (a headless JRE >= 17 and Maven for Apache Kafka,
# redis-server, clickhouse-server) and the deploy tests' tools (promtool, docker-compose).
# Then it resolves the pinned Apache Kafka jars into the cache (~/.cache/ginkgo-livedata).
# Idempotent and quiet when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$c; break
    fi
  done
fi

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: apt-get install $*"
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
      apt-get update -qq  # stale package lists: refresh once and retry
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
  else
    echo "bootstrap: please install: $* (needs root)" >&2
    return 1
  fi
}

if [ -z "$PY" ]; then
  apt_install python3 python3-venv python3-pip
  PY=python3
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
fi

STAMP=$VENV/.installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "bootstrap: installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$STAMP"
fi

# Servers the tests and `livedata up` start as processes (never as system services).
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
missing=()
java_ok || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null 2>&1 || missing+=(clickhouse-server clickhouse-client)
# tools the deploy tests run: promtool (Debian ships it in `prometheus`; on a systemd host
# that package also enables a Prometheus service, `systemctl disable --now prometheus` if
# unwanted) and docker-compose (validates deploy/docker-compose.yml; no engine needed)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" || echo "bootstrap: without ${missing[*]} the tests that need them fail" >&2
fi
if java_ok && command -v mvn >/dev/null 2>&1; then
  "$VENV/bin/python" -c 'from services.ops.servers.kafka import jars_resolved, resolve_jars, kafka_version
if not jars_resolved():
    print(f"bootstrap: resolving Apache Kafka {kafka_version()} jars with Maven (once)", flush=True)
    resolve_jars()'
fi
