#!/usr/bin/env bash
# Install posttrain, then run the demo on the built-in world. Extra arguments go to
# `posttrain demo` (e.g. --quick, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
posttrain demo "$@"
