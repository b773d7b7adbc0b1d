#!/usr/bin/env bash
# Create .venv (if missing) and install posttrain with what it needs.
# CPU by default: torch is pinned to the CPU build 2.13.0. GPU users: install
# your own torch into .venv first, or set POSTTRAIN_KEEP_TORCH=1 to keep the one there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${POSTTRAIN_KEEP_TORCH:-0}" != "1" ] && ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[${POSTTRAIN_EXTRAS:-test}]"
