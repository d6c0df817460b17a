#!/usr/bin/env bash
# The README's test command: installs what is missing, then lint, type-check and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${PYTHON:-python3}"
echo "== ruff"
"$PY" -m ruff check echopanel tests examples benchmarks
echo "== mypy"
"$PY" -m mypy
echo "== pytest"
"$PY" -m pytest "$@"
