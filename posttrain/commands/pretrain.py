"""`posttrain pretrain`: causal-LM pretraining."""

from posttrain.stages.common import add_stage_arguments, config_from_args, run_stage_command

NAME = "pretrain"
ORDER = 12
HELP = "Pretrain a Llama-architecture model (new, from a tokenizer dir, or continued) on a text corpus."
DESCRIPTION = """Causal-LM loss on every token of a packed text corpus (JSONL rows {"text": ...}).
--model is a tokenizer directory (a new model is built from the arch.* options) or a model
directory (continued pretraining). Checkpoints every train.save_every steps; --resume continues.

  posttrain pretrain --model runs/tokenizer --data world/corpus.jsonl --out runs/base \\
      --set train.max_steps=3000 --set arch.num_layers=4

All options: docs/options.md (section pretrain)."""


def add_arguments(parser):
    add_stage_arguments(parser, "Corpus: JSONL rows with a 'text' field.")


def run(args) -> int:
    from posttrain.stages.pretrain import PretrainConfig, run_pretrain

    cfg = config_from_args(PretrainConfig, args, "pretrain")
    return run_stage_command("pretrain", args, lambda: run_pretrain(
        args.model, args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress,
        overwrite=args.overwrite, allow_change=args.allow_change, reads={"--config": args.config}))
