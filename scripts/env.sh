#!/usr/bin/env bash
# Create the project's virtual environment in .venv if it is missing (idempotent).
# torch==2.13.0 (CPU) is installed FIRST: otherwise a dependency would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REASEQ_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.installed" ] || [ setup.py -nt "$VENV/.installed" ]; then
  echo "[env] creating $VENV with $($PY --version)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip_install() {  # quiet pip; on failure show its log (minus this machine's index-path noise)
    local log; log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q "$@" >"$log" 2>&1; then
      grep -v "is ignored: it is neither" "$log" >&2; exit 1
    fi
    grep -v "is ignored: it is neither" "$log" >&2 || true
  }
  pip_install --upgrade "pip<26" "setuptools<81" wheel
  pip_install torch==2.13.0
  pip_install -e ".[test]"
  "$VENV/bin/python" -c "import torch, recbole, recbole_reaseq" || { echo "[env] install failed" >&2; exit 1; }
  touch "$VENV/.installed"
fi
