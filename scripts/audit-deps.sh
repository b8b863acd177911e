#!/usr/bin/env bash
# Audit the installed dependencies (the environment CI tests) for known vulnerabilities.
# Usage: scripts/audit-deps.sh [extra pip-audit args]   (exit status 1 when something is found)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  echo "pip-audit is not installed: $PY -m pip install pip-audit" >&2
  exit 2
fi
# --skip-editable: Tandem itself (tandem-hitl) is installed editable, not from the index.
# --strict: a dependency that could not be checked is a failure, not a silent pass.
exec "$PY" -m pip_audit --strict --skip-editable --progress-spinner off --desc on "$@"
