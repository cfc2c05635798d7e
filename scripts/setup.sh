#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with the project and its test tools.
# torch==2.13.0 (the CPU wheel) goes in first so nothing pulls a multi-GB CUDA build; on a GPU machine,
# install your CUDA build of torch into .venv before running this and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# The web UI tests drive Debian's chromium headless; install it where we may (root with apt-get).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium could not be installed; browser tests will be skipped" >&2
  else
    echo "setup: chromium not found (install it for the browser tests)" >&2
  fi
fi
echo "setup: ready (.venv)"
