#!/usr/bin/env bash
# Install what the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
POSTTRAIN_EXTRAS=test,bench bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
