#!/usr/bin/env bash
# Install Tandem with its test dependencies and run the whole test suite against real
# PostgreSQL and Redis. Starts them (and installs headless Chromium for the browser tests)
# when they are missing, creates the test databases, then runs lint, types, the import
# contracts and pytest.
#
# pytest runs on TANDEM_TEST_WORKERS pytest-xdist workers (2 by default; 0 runs serially).
# Each worker has its own PostgreSQL database (tandem_test_gw0, tandem_test_gw1, or the name in
# TANDEM_TEST_DATABASE_URL plus _gwN) and its own Redis database (15, 14, or the index in
# TANDEM_TEST_REDIS_URL minus N); tests/conftest.py derives them.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# --- services -------------------------------------------------------------------------
# A bare Debian/Ubuntu machine gets PostgreSQL and Redis from its own packages, as the
# browser below; a machine that already runs them is left as it is.
if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "cannot install $* here (no apt-get): install it and re-run" >&2; exit 1; }
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: installing Debian's postgresql for the tests" >&2
    apt_install postgresql
    # A server installed just now for the tests: let the local test user in without a
    # password on the loopback address only (what this machine's CI image does too).
    HBA=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust' "$HBA"
  fi
  if ! pg_up; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "PostgreSQL is not running on 127.0.0.1:5432 and could not be started" >&2; exit 1; }
fi
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
if ! command -v redis-cli >/dev/null 2>&1 || ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "Redis is not installed: installing Debian's redis-server for the tests" >&2
    apt_install redis-server
  fi
  if ! redis_up; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/tandem-test-redis.log
  fi
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  redis_up || { echo "Redis is not running on 127.0.0.1:6379 and could not be started" >&2; exit 1; }
fi
WORKERS=${TANDEM_TEST_WORKERS:-2}
case "$WORKERS" in ''|*[!0-9]*) echo "TANDEM_TEST_WORKERS must be a whole number, not '$WORKERS'" >&2; exit 2 ;; esac
PGUSER=${PGUSER:-postgres}
create_db() {
  if ! psql -h 127.0.0.1 -U "$PGUSER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$1'" | grep -q 1; then
    psql -h 127.0.0.1 -U "$PGUSER" -d postgres -qc "CREATE DATABASE $1"
  fi
}
# The default databases, one per worker, made here one after the other (the test fixtures
# create a missing one too, as for a TANDEM_TEST_DATABASE_URL of the developer's own).
if [ -z "${TANDEM_TEST_DATABASE_URL:-}" ]; then
  if [ "$WORKERS" = "0" ]; then
    create_db tandem_test
  else
    for i in $(seq 0 $((WORKERS - 1))); do create_db "tandem_test_gw$i"; done
  fi
fi

# --- browser for the UI tests (Debian's Chromium; Playwright never downloads one) -----------
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

# --- checks ------------------------------------------------------------------------------
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# the layering contracts in pyproject.toml ([tool.importlinter]; docs/architecture.md)
.venv/bin/lint-imports
if [ "$WORKERS" = "0" ]; then
  exec .venv/bin/pytest -q -p no:cacheprovider "$@"
fi
# loadgroup: the tests that drive Chromium share one worker (tests/conftest.py says why).
exec .venv/bin/pytest -q -p no:cacheprovider -n "$WORKERS" --dist loadgroup "$@"
