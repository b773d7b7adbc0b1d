"""Config sections shared by the training stages (model, data, optimisation)."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import opt


@dataclass
class LoraConfig:
    """Low-rank adapters through `peft`."""

    enabled: bool = opt(False, "Train LoRA adapters instead of all weights.")
    r: int = opt(16, "Adapter rank.")
    alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = opt(0.0, "Dropout on the adapter input.")
    target_modules: str = opt("all-linear", "Modules to adapt: `all-linear` or a comma list such as `q_proj,v_proj`.")
    merge_on_save: bool = opt(True, "Merge adapters into the weights when saving, so the artifact is a plain model.")


@dataclass
class ModelConfig:
    """Which hardware, dtype and adapters a stage uses."""

    device: str = opt("auto", "`auto` (cuda if present, else cpu), `cpu`, `cuda`, or `cuda:N`.")
    dtype: str = opt("auto", "`auto` picks bf16 where the CPU/GPU runs it fast, else fp32. bf16 means autocast over fp32 master weights.", choices=("auto", "fp32", "bf16"))
    trust_remote_code: bool = opt(False, "Allow model code shipped inside the model directory to run. Off unless you trust it.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass to save memory.")
    save_dtype: str = opt("fp32", "dtype of the saved weights (bf16 halves the artifact size).", choices=("fp32", "bf16"))
    lora: LoraConfig = opt(help="LoRA options.", factory=LoraConfig)


@dataclass
class DataConfig:
    """How a stage reads and shapes its data."""

    chat_template: str = opt("auto", "`auto` (the tokenizer's own, else posttrain's ChatML), `own` (error if missing), `default`, or a path to a .jinja file.")
    max_length: int = opt(1024, "Longest example in tokens.")
    overlength: str = opt("truncate", "What to do with longer examples (both are counted and reported).", choices=("truncate", "drop"))
    cut_turns: str = opt("drop", "What to do with an example whose truncation cuts a trained turn (an assistant reply) before its end-of-turn token: `drop` it, or `keep` it with a warning (the model then learns a reply that never ends). Counted either way.", choices=("drop", "keep"))
    assistant_only_loss: bool = opt(True, "Loss on assistant tokens only (false: every token of the chat).")
    packing: bool = opt(True, "Pack several examples per row; attention never crosses example boundaries.")
    eval_data: str | None = opt(None, "Held-out data file; when unset, `eval_fraction` of the training data is held out.")
    eval_fraction: float = opt(0.05, "Fraction of the data held out for eval loss when `eval_data` is unset.")
    limit: int | None = opt(None, "Use only the first N training rows (for quick runs).")
    replay_data: str | None = opt(None, "Pretraining-style text (JSONL rows with 'text') mixed into training with full loss, to limit forgetting (as InstructGPT's pretraining mix).")
    replay_ratio: float = opt(0.0, "Replay tokens per training token when `replay_data` is set (e.g. 0.5).")


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging."""

    lr: float = opt(2e-4, "Peak learning rate (AdamW).")
    min_lr_ratio: float = opt(0.1, "Cosine decay ends at lr * min_lr_ratio.")
    warmup_ratio: float = opt(0.05, "Fraction of the steps spent in linear warmup.")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and norms).")
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.95, "AdamW beta2.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this (0 = off).")
    max_abs_weight: float = opt(1e4, "Stop training when an update leaves a trained weight non-finite or larger in magnitude than this (or than 10x the largest initial weight, if that is larger); checkpoints are written only when every weight passes.")
    batch_size: int = opt(8, "Rows per micro-batch.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    epochs: float = opt(1.0, "Passes over the data (used when max_steps < 0).")
    max_steps: int = opt(-1, "Optimizer steps; -1 derives them from epochs.")
    seed: int = opt(0, "Seed for shuffling and initialisation.")
    eval_every: int = opt(0, "Evaluate held-out loss every N steps (0 = only at the end).")
    save_every: int = opt(200, "Write a resumable checkpoint every N steps (0 = none); `--resume` continues from the latest.")
    log_every: int = opt(10, "Write a metrics line every N steps.")
