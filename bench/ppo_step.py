"""Where a PPO step's time goes: generation, reward, policy and reference log-probs, values, and the update.

Runs `posttrain ppo` for a few iterations on the built-in world's prompts and prints, per iteration,
the seconds of each phase as the stage logs them (metrics.jsonl `time_*`), their medians over the
steady-state iterations (the first is warm-up), each phase's share of the step, and its share of the
measured matrix peak (2·N FLOPs per token for a forward pass, 6·N for forward + backward).

    python bench/ppo_step.py                           # the shipped base model (or: --model runs/demo/sft)
    python bench/ppo_step.py --model /tmp/smol135 --prompts-per-step 8 --max-new-tokens 32 --iterations 3

The reward is the world's gold judge (it needs no model, so the split shows the policy's costs);
pass --reward DIR to time a reward model as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import matmul_peak_flops  # noqa: E402

PHASES = ("generate", "reward", "policy", "reference", "value", "update")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "base"), help="policy directory (default: the shipped base)")
    p.add_argument("--reward", default="gold", help="reward: gold (default), a reward model directory or module:function")
    p.add_argument("--iterations", type=int, default=4, help="PPO iterations; the first is not counted (default 4)")
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per rollout batch (default 2)")
    p.add_argument("--value-model", default="shared", choices=("shared", "separate"))
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (r 16) instead of all weights")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import torch

    from posttrain.config import load_config
    from posttrain.models import device_name, resolve_dtype
    from posttrain.stages.ppo import STAGE, PPOConfig
    from posttrain.world.build import build_world

    dtype = resolve_dtype(args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        build_world(0, world, scale=0.2, probe_n=1)
        sets = {"reward.model": args.reward, "train.max_steps": args.iterations,
                "rollout.prompts_per_step": args.prompts_per_step, "rollout.max_new_tokens": args.max_new_tokens,
                "rollout.temperature": 0.7, "rl.epochs": args.epochs, "rl.value_model": args.value_model,
                "train.batch_size": args.prompts_per_step, "track.every": 0, "model.dtype": dtype,
                "train.save_every": 0, "model.lora.enabled": args.lora, "model.lora.r": 16, "model.lora.alpha": 32}
        cfg = load_config(PPOConfig, None, [f"{k}={v}" for k, v in sets.items()])
        out = Path(tmp) / "ppo"
        STAGE.run(args.model, world / "prompts.jsonl", out, cfg, progress=True)
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        n_params = sum(t.numel() for t in _weights(out))
    steady = lines[1:] or lines
    peak = matmul_peak_flops(dtype)
    med = {ph: statistics.median(x.get(f"time_{ph}", 0.0) for x in steady) for ph in PHASES}
    step = sum(med.values())
    # The trainer counts the tokens of every update pass: per rollout batch, epochs x (prompt + response tokens).
    per_step = [b["tokens"] - a["tokens"] for a, b in zip(lines, lines[1:])] or [lines[0]["tokens"]]
    tokens = statistics.median(per_step) / args.epochs
    passes = {"generate": 2, "policy": 2, "reference": 2, "value": 2 if args.value_model == "separate" else 0,
              "update": 6 * args.epochs}
    print(f"\n{device_name(torch.device('cpu'))} | dtype {dtype} | matmul peak {peak / 1e9:,.1f} GFLOP/s | torch "
          f"{torch.__version__} | model {args.model} ({n_params / 1e6:,.1f}M parameters)")
    print(f"{args.prompts_per_step} prompts per step, up to {args.max_new_tokens} new tokens, {args.epochs} PPO epochs, "
          f"value model {args.value_model}; {tokens:,.0f} tokens (prompt + response) per step\n")
    print("| iteration | " + " | ".join(PHASES) + " | step s |")
    print("|---" * (len(PHASES) + 2) + "|")
    for x in lines:
        cells = [f"{x.get(f'time_{ph}', 0.0):.2f}" for ph in PHASES]
        print(f"| {x['step']} | " + " | ".join(cells) + f" | {sum(x.get(f'time_{ph}', 0.0) for ph in PHASES):.2f} |")
    print(f"\nmedian of iterations 2-{len(lines)} (the first warms up):\n")
    print("| phase | seconds | share of the step | share of matmul peak |")
    print("|---|---|---|---|")
    result = {"device": device_name(torch.device("cpu")), "dtype": dtype, "peak_flops": peak, "phases": {}}
    for ph in PHASES:
        flops = passes.get(ph, 0) * n_params * tokens
        mfu = flops / med[ph] / peak if med[ph] > 0 and flops else None
        result["phases"][ph] = {"seconds": med[ph], "share": med[ph] / step if step else 0.0, "mfu": mfu}
        print(f"| {ph} | {med[ph]:.2f} | {med[ph] / step:.0%} | {'-' if mfu is None else f'{mfu:.1%}'} |")
    print(f"| whole step | {step:.2f} | 100% | |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _weights(artifact: Path):
    from safetensors.torch import load_file

    return load_file(str(artifact / "model.safetensors")).values()


if __name__ == "__main__":
    sys.exit(main())
