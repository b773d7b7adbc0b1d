"""`posttrain sft`: supervised fine-tuning."""

from posttrain.stages.common import add_stage_arguments, config_from_args, run_stage_command
from posttrain.stages.sft import SFTConfig, run_sft

NAME = "sft"
ORDER = 20
HELP = "Supervised fine-tuning on chats (assistant-only loss) or prompt-completion pairs."
DESCRIPTION = """Supervised fine-tuning: next-token loss on assistant turns only (or all tokens with
--set data.assistant_only_loss=false), examples packed per row without attention crossing
example boundaries, AdamW with warmup + cosine decay, gradient clipping, held-out eval loss,
checkpoints every train.save_every steps (resume with --resume), and a NaN guard.

Data: JSONL/JSON/Parquet/datasets dir with rows {"messages": [...]} or {"prompt", "completion"}.
Example:
  posttrain sft --model models/base --data world/sft.jsonl --out runs/sft --set train.max_steps=100
All options: docs/options.md (section sft)."""


def add_arguments(parser):
    add_stage_arguments(parser, "Training data: .jsonl/.json/.parquet or a datasets directory (conversational or prompt-completion rows).")


def run(args) -> int:
    cfg = config_from_args(SFTConfig, args, "sft")
    return run_stage_command("sft", args, lambda: run_sft(
        args.model, args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress,
        overwrite=args.overwrite, allow_change=args.allow_change, reads={"--config": args.config}))
