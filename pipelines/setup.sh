#!/usr/bin/env bash
# Set up dpal-cache in ./.venv on a fresh machine (Python 3.11+): torch, then the package with its
# dev extras. Safe to re-run. Usage: bash pipelines/setup.sh
#
# torch 2.14.1 / torchvision 0.29.1 are pinned here because our machines install exactly those
# from local wheels; on your own GPU machine any torch in 2.11..2.14.1 works (see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/dpal-cache --version
