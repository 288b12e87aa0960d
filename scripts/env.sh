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
  "$VENV/bin/python" -m pip install -q --upgrade "pip<26" "setuptools<81" wheel
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$VENV/.installed"
fi
