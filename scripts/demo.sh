#!/usr/bin/env bash
# The main job: set up .venv if needed, then fine-tune the embedded default model (SmolLM2-135M-Instruct)
# on the bundled sample data and print generations before and after, and where the adapter is.
# Usage: bash scripts/demo.sh [--output-dir runs/demo] [--max-steps N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec tuneforge demo "$@"
