#!/usr/bin/env bash
# GPU sweep of the demo's SFT settings on the shipped base (see README).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 scripts/device_sweep.py recipes/demo.yaml sft "$SFT_VARIANTS" "$OUT" 2>&1 | grep -v -E "Loading weights|Writing model"
