#!/usr/bin/env bash
# One prepared GPU session (see README, "How the shipped base model was built"):
# rebuild the base model with recipes/base.yaml, then sweep the demo's SFT settings on it.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 scripts/device_sweep.py recipes/base.yaml base '{"base": {}}' "$OUT" --pack base,eval_base,tokenizer
mkdir -p /tmp/newbase && cp -r /tmp/runs/base/base/. /tmp/newbase/
sed -i "s#^base: .*#base: /tmp/newbase#" recipes/demo.yaml
python3 scripts/device_sweep.py recipes/demo.yaml sft "$SFT_VARIANTS" "$OUT"
