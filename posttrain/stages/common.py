"""What every gradient stage does the same way: CLI options, model preparation, data splits."""

from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path

from posttrain.config import load_config
from posttrain.models import load_model, load_tokenizer, resolve_device, resolve_dtype
from posttrain.training.config import ModelConfig


def add_stage_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The command-line contract shared by every stage command."""
    parser.add_argument("--model", required=True, help="Local model or artifact directory (transformers format, safetensors).")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help="Artifact directory to write (written atomically).")
    parser.add_argument("--config", help="YAML file of options (see docs/options.md).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one option, e.g. --set train.lr=1e-5 or --set max_steps=5 (repeatable).")
    parser.add_argument("--resume", action="store_true",
                        help="Continue from the latest checkpoint in OUT.checkpoints/; an error when there is none, or "
                             "when it was written with other settings, data or model (see --allow-change).")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="With --resume: accept that KEY (e.g. train.lr, data, model) differs from the checkpoint's "
                             "run; recorded in provenance.json with the step of the change (repeatable).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing --out (or checkpoints of an unfinished run). Never one that holds or "
                             "lies inside an input. See docs/safety.md.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs).")


def resume_command(name: str, args) -> str:
    """The command line that continues this stage's run: its own options (add_stage_arguments) plus --resume."""
    import shlex

    parts = ["posttrain", name, "--model", args.model, "--data", args.data, "--out", args.out]
    parts += ["--config", args.config] if args.config else []
    parts += [a for s in args.set for a in ("--set", s)]
    parts += ["--resume"] + [a for k in args.allow_change for a in ("--allow-change", k)]
    parts += ["--overwrite"] * args.overwrite + ["--no-progress"] * args.no_progress
    return shlex.join(str(p) for p in parts)


def run_stage_command(name: str, args, train) -> int:
    """Run `train()`; on Ctrl-C print where the run was saved and how to resume it (one paragraph), exit 130."""
    import sys

    from posttrain.errors import TrainingInterrupted

    try:
        train()
    except TrainingInterrupted as e:
        how = (f"To continue from there, run: {resume_command(name, args)}" if e.checkpoint is not None else
               "Run the same command again to start over.")
        print(f"posttrain {name}: {e} {how}", file=sys.stderr)
        return 130
    return 0


class StageCommand:
    """A training stage as a `posttrain` command: what cli.py reads from a command module."""

    def __init__(self, stage):
        self.stage = stage
        self.NAME, self.ORDER, self.HELP, self.DESCRIPTION = stage.name, stage.order, stage.help, stage.description

    def add_arguments(self, parser) -> None:
        add_stage_arguments(parser, self.stage.data_help)

    def run(self, args) -> int:
        cfg = config_from_args(self.stage.config, args, self.stage.name)
        return run_stage_command(self.stage.name, args, lambda: self.stage.run(
            args.model, args.data, args.out, cfg, resume=args.resume, progress=not args.no_progress,
            overwrite=args.overwrite, allow_change=args.allow_change, reads={"--config": args.config}))


def config_from_args(cls, args, stage: str):
    return load_config(cls, args.config, args.set, stage=stage)


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


def prepare_model(model_path, mcfg: ModelConfig, tok=None, head: str = "causal"):
    """Load tokenizer (unless given) + model on the configured device; wrap in LoRA when asked.

    head: "causal" or "score" (a scalar head: reward and value models; models.load_model).
    Returns (model, tok, device, dtype).
    """
    device = resolve_device(mcfg.device, "model.device")
    dtype = resolve_dtype(mcfg.dtype, device)
    tok = tok if tok is not None else load_tokenizer(model_path, mcfg.trust_remote_code)
    model = load_model(model_path, device, mcfg.trust_remote_code, head=head)
    if head == "score":
        model.config.pad_token_id = tok.pad_token_id  # transformers reads a score at the last non-padding token
    if mcfg.gradient_checkpointing:
        # transformers 5 calls it activation checkpointing; the old name warns and goes in v6
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if mcfg.lora.enabled:
        from peft import LoraConfig as PeftLora, get_peft_model

        targets = mcfg.lora.target_modules
        # Rows of the embedding (tied to the output layer in small models) that train too: a frozen row of a
        # token the base never saw keeps its logit near where initialisation left it, whatever the adapters do.
        tokens = mcfg.lora.trainable_tokens
        ids = set(tok(tokens, add_special_tokens=False)["input_ids"]) if tokens else set()
        if mcfg.lora.trainable_tokens_from:
            ids |= tokens_unseen_in(tok, mcfg.lora.trainable_tokens_from)
        extra = {"trainable_token_indices": sorted(ids)} if ids else {}
        with warnings.catch_warnings():
            # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning the user
            # cannot act on, printed at every LoRA stage.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, PeftLora(
                r=mcfg.lora.r, lora_alpha=mcfg.lora.alpha, lora_dropout=mcfg.lora.dropout,
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                task_type="CAUSAL_LM" if head == "causal" else "SEQ_CLS",  # SEQ_CLS also trains the new head
                **extra,
            ))
    return model, tok, device, dtype


def tokens_unseen_in(tok, path) -> set[int]:
    """Ids of the tokenizer's ordinary tokens that never occur in the text rows of `path` (a model's
    pretraining data): their embedding rows never received a gradient as a target or an input."""
    from posttrain.data.formats import load_dataset_rows
    from posttrain.errors import ConfigError, PosttrainError

    try:
        _, rows = load_dataset_rows(path, allowed=("text",))
    except PosttrainError as e:
        raise ConfigError(f"model.lora.trainable_tokens_from: {e} It names the base's pretraining text: "
                          "JSONL rows with a 'text' field.") from None
    seen = {i for ids in tok([r.data["text"] for r in rows], add_special_tokens=False)["input_ids"] for i in ids}
    return set(range(len(tok))) - seen - set(tok.all_special_ids)


def finalize_model(model, mcfg: ModelConfig):
    """The model to save: LoRA merged into the weights (or kept as an adapter on the parent), cast to save_dtype.

    An unmerged adapter is saved as peft writes it (adapter_config.json, adapter_model.safetensors); its
    base_model_name_or_path is the parent's absolute path, so `PeftModel.from_pretrained` on the parent and
    posttrain's own loader (models.load_model) both find it.
    """
    import torch

    if mcfg.lora.enabled and not mcfg.lora.merge_on_save:
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = str(Path(adapter.base_model_name_or_path).resolve())
        return model.to(torch.bfloat16) if mcfg.save_dtype == "bf16" else model
    if mcfg.lora.enabled:
        model = model.merge_and_unload()
    if mcfg.save_dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model


def split_rows(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic hold-out of `fraction` of rows (at least one row when fraction > 0 and rows > 1)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, int(round(fraction * len(rows))))
    held = set(idx[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
