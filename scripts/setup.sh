#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with the project and its test tools, plus the Debian
# programs the tests drive (chromium for the web UI tests, redis-server for the job-queue tests).
# torch==2.13.0 (the CPU wheel) goes in first so nothing pulls a multi-GB CUDA build; on a GPU machine,
# install your CUDA build of torch into .venv before running this and it is kept.
# Non-interactive and CI-friendly: every step prints one "setup: [i/n]" line with its duration, and pip shows
# what it collects and installs (its progress bars only on a terminal, so CI logs stay plain).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=5
step=0
started=$SECONDS

say() { echo "setup: $*"; }
step() {
  step=$((step + 1))
  say "[$step/$STEPS] $* (${SECONDS}s elapsed)"
}

# pip: no prompts, no self-update nag; progress bars only where someone watches a terminal. pip prints
# nothing while it unpacks a large set of wheels, so a heartbeat line every 30 s shows the step is alive
# (and keeps CI systems that stop silent jobs from stopping this one).
PIP=(.venv/bin/python -m pip --no-input --disable-pip-version-check)
pip_install() {
  local heartbeat status=0
  (while sleep 30 >/dev/null 2>&1; do say "      ... still installing (${SECONDS}s elapsed)"; done) &
  heartbeat=$!
  if [ -t 1 ]; then
    "${PIP[@]}" install "$@" || status=$?
  else
    "${PIP[@]}" install --progress-bar off "$@" || status=$?
  fi
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  return "$status"
}

step "virtual environment .venv"
if [ -x .venv/bin/python ]; then
  say "      .venv exists; reusing it"
else
  "$PY" -m venv .venv
fi
pip_install -q --upgrade pip

step "PyTorch (CPU wheel torch==2.13.0 unless a torch is already installed)"
if .venv/bin/python -c "import torch" 2>/dev/null; then
  say "      keeping $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
else
  pip_install "torch==2.13.0"
fi

step "the project, its dev tools and ComfyUI's dependencies (pip install -e .[dev,comfyui]; a few minutes on a fresh machine)"
pip_install -e ".[dev,comfyui]"

# Debian programs for the tests: installed where we may (root with apt-get), skipped quietly when present.
step "Debian packages for the tests (chromium, redis-server)"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
  say "      chromium and redis-server already installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "      apt-get install ${missing[*]}"
  if ! (export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null)
  then
    say "${missing[*]} could not be installed; the browser and queue tests will be skipped" >&2
  fi
else
  say "${missing[*]} not found and not root: install them (apt-get install ${missing[*]}) for the browser and queue tests" >&2
fi

step "checking the installed packages (pip check)"
"${PIP[@]}" check || say "pip check reports conflicts (above); the project may still work" >&2

say "ready (.venv) in $((SECONDS - started))s; run the tests with: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q"
