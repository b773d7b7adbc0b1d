#!/usr/bin/env bash
# One prepared GPU session: base-model sweep, then the CUDA paths of SFT, the engine and evals.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 scripts/device_base_sweep.py "$OUT"
B=/tmp/runs/A_h256_l4_e12
python3 -m posttrain.cli sft --model $B/base --data $B/world/sft.jsonl --out /tmp/sft_cuda --set train.max_steps=150 --set train.batch_size=16 --set train.lr=1e-3 --set model.device=cuda --no-progress 2>&1 | tail -15
python3 -m posttrain.cli eval /tmp/sft_cuda --probes instruction_following,knowledge_exposure,cloze_recall,harmful_refusal --n 100 --device cuda 2>&1 | tail -15
