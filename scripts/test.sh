#!/usr/bin/env bash
# The test command of the README (and of .ci/run): set up, then run the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIDEOKV_SETUP_BROWSER=1          # chromium + chromium-driver for the web page's test
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# Tests get their own VIDEOKV_HOME (per test, see tests/conftest.py); converted model
# weights are shared across runs in this cache so they are converted once.
export VIDEOKV_MODEL_CACHE="${VIDEOKV_MODEL_CACHE:-$ROOT/.venv/videokv-models}"
exec python -m pytest -q "$@"
