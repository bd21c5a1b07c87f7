#!/usr/bin/env bash
# Installs everything the factory needs on a fresh Debian machine, idempotently:
# Debian packages (Redis, Prometheus, Alertmanager), the Python environment (.venv),
# the carrier of the tritonserver binary (.venv-triton) and the Kafka broker jars.
# Each missing prerequisite stops with one line saying what to do.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "setup: $*" >&2; exit 1; }

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
  || fail "Python 3.11 is required (found: $("$PYTHON" --version 2>&1)); install python3.11."
command -v java >/dev/null || fail "Java 17 is missing; install it (Debian: apt-get install openjdk-17-jre-headless)."
command -v mvn >/dev/null || fail "Maven is missing; install it (Debian: apt-get install maven)."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    fail "missing Debian packages: ${missing[*]}; install them (apt-get install ${missing[*]})."
  fi
  echo "setup: installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's packages may start system-wide daemons on the default ports; the factory
  # runs its own, so stop them where an init system started them.
  for service in redis-server prometheus prometheus-alertmanager prometheus-node-exporter; do
    (service "$service" stop >/dev/null 2>&1 || true)
  done
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the Python environment (.venv)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

if [ ! -x .venv-triton/bin/python ] || ! .venv-triton/bin/python -c 'import pytriton' 2>/dev/null; then
  echo "setup: installing the tritonserver carrier (.venv-triton)"
  "$PYTHON" -m venv .venv-triton
  .venv-triton/bin/python -m pip install -q --upgrade pip
  .venv-triton/bin/python -m pip install -q nvidia-pytriton==0.7.0
fi

if ! ls .factory/kafka/lib/kafka_2.13-*.jar >/dev/null 2>&1; then
  echo "setup: fetching the Kafka broker jars with Maven"
  mvn -q -B -f infra/kafka/pom.xml package
fi
