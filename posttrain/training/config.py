"""Config sections shared by the training stages (model, data, optimisation)."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import opt


@dataclass
class LoraConfig:
    """Low-rank adapters through `peft`."""

    enabled: bool = opt(False, "Train LoRA adapters instead of all weights.")
    r: int = opt(16, "Adapter rank.", ge=1)
    alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).", ge=1)
    dropout: float = opt(0.0, "Dropout on the adapter input.", ge=0, lt=1)
    target_modules: str = opt("all-linear", "Modules to adapt: `all-linear` or a comma list such as `q_proj,v_proj`.")
    merge_on_save: bool = opt(True, "Merge adapters into the weights when saving, so the artifact is a plain model.")
    trainable_tokens: str | None = opt(None, "Text whose tokens' embedding rows train with the adapters (peft trainable_token_indices): tokens the base rarely saw, e.g. a tool-call format `<tool_call>{\"name\": \"arguments\"}</tool_call>`. null = none.")
    trainable_tokens_from: str | None = opt(None, "The base's pretraining text (JSONL rows with 'text'): every token that never occurs in it trains its embedding row with the adapters. Such rows are still at their initial values, yet a chat dataset uses many of them (in the shipped base, 299 tokens and 19% of assistant tokens, e.g. the 'or' of ' s' 'or' 'ry'). null = none.")


@dataclass
class ModelConfig:
    """Which hardware, dtype and adapters a stage uses."""

    device: str = opt("auto", "Where to run: `auto` is cuda if present, else cpu; `cuda` and `cuda:N` need a CUDA GPU.",
                      pattern=r"auto|cpu|cuda(:[0-9]+)?", allowed="`auto`, `cpu`, `cuda` or `cuda:N`")
    dtype: str = opt("auto", "`auto` picks bf16 where the CPU/GPU runs it fast, else fp32. bf16 means autocast over fp32 master weights.", choices=("auto", "fp32", "bf16"))
    trust_remote_code: bool = opt(False, "Allow model code shipped inside the model directory to run. Off unless you trust it.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass to save memory.")
    save_dtype: str = opt("fp32", "dtype of the saved weights (bf16 halves the artifact size).", choices=("fp32", "bf16"))
    lora: LoraConfig = opt(help="LoRA options.", factory=LoraConfig)


@dataclass
class DataConfig:
    """How a stage reads and shapes its data."""

    chat_template: str = opt("auto", "`auto` (the tokenizer's own, else posttrain's ChatML), `own` (error if missing), `default`, or a path to a .jinja file.")
    max_length: int = opt(1024, "Longest example in tokens (a single token has nothing to predict).", ge=2)
    overlength: str = opt("truncate", "What to do with longer examples (both are counted and reported).", choices=("truncate", "drop"))
    cut_turns: str = opt("drop", "What to do with an example whose truncation cuts a trained turn (an assistant reply) before its end-of-turn token: `drop` it, or `keep` it with a warning (the model then learns a reply that never ends). Counted either way.", choices=("drop", "keep"))
    assistant_only_loss: bool = opt(True, "Loss on assistant tokens only (false: every token of the chat).")
    packing: bool = opt(True, "Pack several examples per row; attention never crosses example boundaries.")
    eval_data: str | None = opt(None, "Held-out data file; when unset, `eval_fraction` of the training data is held out.")
    eval_fraction: float = opt(0.05, "Fraction of the data held out for eval loss when `eval_data` is unset (0 = none).", ge=0, lt=1)
    limit: int | None = opt(None, "Use only the first N training rows (for quick runs); null = all.", ge=1)
    replay_data: str | None = opt(None, "Pretraining-style text (JSONL rows with 'text') mixed into training with full loss, to limit forgetting (as InstructGPT's pretraining mix).")
    replay_ratio: float = opt(0.0, "Replay tokens per training token when `replay_data` is set (e.g. 0.5).", ge=0)


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging."""

    lr: float = opt(2e-4, "Peak learning rate (AdamW); at most 1e30, so that its step size fits in float32.", gt=0, le=1e30)
    min_lr_ratio: float = opt(0.1, "Cosine decay ends at lr * min_lr_ratio.", ge=0, le=1)
    warmup_ratio: float = opt(0.05, "Fraction of the steps spent in linear warmup.", ge=0, le=1)
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and norms).", ge=0)
    beta1: float = opt(0.9, "AdamW beta1.", ge=0, lt=1)
    beta2: float = opt(0.95, "AdamW beta2.", ge=0, lt=1)
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this (0 = off).", ge=0)
    max_abs_weight: float = opt(1e4, "Stop training when an update leaves a trained weight non-finite or larger in magnitude than this (or than 10x the largest initial weight, if that is larger); checkpoints are written only when every weight passes.", gt=0)
    batch_size: int = opt(8, "Rows per micro-batch.", ge=1)
    grad_accum: int = opt(1, "Micro-batches per optimizer step.", ge=1)
    epochs: float = opt(1.0, "Passes over the data (used when max_steps is -1); 0.5 is half a pass.", gt=0)
    max_steps: int = opt(-1, "Optimizer steps; -1 derives them from epochs.", ge=1, also=(-1,))
    stop_at_step: int = opt(0, "End the run after this optimizer step (0 = run to the end) while keeping the learning-rate schedule of the whole run (max_steps or epochs): the artifact is the model as a checkpoint at that step holds it.", ge=0)
    seed: int = opt(0, "Seed for shuffling and initialisation.", ge=0)
    eval_every: int = opt(0, "Evaluate held-out loss every N steps (0 = only at the end).", ge=0)
    save_every: int = opt(200, "Write a resumable checkpoint every N steps (0 = none); `--resume` continues from the latest.", ge=0)
    log_every: int = opt(10, "Write a metrics line every N steps.", ge=1)
    report_to: str = opt("none", "Also write every metrics line's numbers as TensorBoard scalars: live to OUT.tensorboard/ while training, and into the artifact's tensorboard/ folder (`tensorboard --logdir runs/`). Needs no extra package.", choices=("none", "tensorboard"))
    contamination_n: int = opt(13, "Before training, measure the n-gram overlap (this n; 0 = off) between the training data (and replay data) and every probe set (the world's next to the data, else the built-in world's): provenance metrics.contamination and the card (docs/governance.md).", ge=0)
    contamination_threshold: float = opt(0.01, "Warn when more than this share of a probe set's rows overlap the training data.", ge=0, le=1)
