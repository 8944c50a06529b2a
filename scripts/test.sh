#!/usr/bin/env bash
# The test command: set up .venv if needed, lint with ruff, run the whole test suite (unit + end-to-end).
# Usage: bash scripts/test.sh [pytest args], e.g. bash scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "ruff ..."
ruff check src tests benchmarks examples
exec python -m pytest "$@"
