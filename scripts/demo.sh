#!/usr/bin/env bash
# The main job of the README: set up, then make a toy-world video, ingest it, ask it
# its questions (embedded mode, no server). Extra arguments go to `videokv demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export VIDEOKV_HOME="${VIDEOKV_HOME:-$ROOT/runs/demo-home}"
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
exec videokv demo --workdir "$ROOT/runs/demo" --json "$ROOT/runs/demo/results.json" "$@"
