#!/usr/bin/env bash
# The test command: set up .venv if needed, lint and format-check with ruff, type-check src/ with mypy, then run
# the whole test suite (unit, end-to-end, reliability, web UI in a real browser).
# Usage: bash scripts/test.sh [pytest args], e.g. bash scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "ruff ..."
ruff check src tests benchmarks examples
ruff format --check src tests benchmarks examples
echo "mypy ..."
mypy src/tuneforge
exec python -m pytest "$@"
