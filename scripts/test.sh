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
# mypy 2.4.1 once stopped with an INTERNAL ERROR on a fresh clone that passed when rerun: retry that case once
if ! mypy_output="$(mypy src/tuneforge 2>&1)"; then
    echo "$mypy_output"
    grep -q "INTERNAL ERROR" <<<"$mypy_output" || exit 1
    echo "mypy crashed (its own error, not a type error); retrying once with a fresh cache"
    rm -rf .mypy_cache
    mypy src/tuneforge
else
    echo "$mypy_output"
fi
exec python -m pytest "$@"
