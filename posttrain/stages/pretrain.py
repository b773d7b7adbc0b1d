"""Pretraining: causal-LM loss on a packed text corpus, from a fresh model or a checkpoint.

`--model` is either a full model directory (continued pretraining) or a tokenizer
directory alone, in which case a new Llama-architecture model is initialised from
`arch`. Same trainer, checkpoints and resume as SFT.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from posttrain.artifacts import data_record, parent_record, save_artifact, sha256_path
from posttrain.config import opt
from posttrain.console import summary
from posttrain.data.formats import load_dataset_rows
from posttrain.data.packing import pack_examples
from posttrain.data.sft import split_documents
from posttrain.errors import ConfigError
from posttrain.models import check_model_dir, load_tokenizer, resolve_device, resolve_dtype
from posttrain.outputs import model_bytes
from posttrain.stages.common import checkpoint_dir, finalize_model, prepare_model, split_rows
from posttrain.stages.guard import check_stage_output, resume_trainer, stage_inputs, start_run
from posttrain.training.config import ModelConfig, TrainConfig
from posttrain.training.loop import Trainer


@dataclass
class ArchConfig:
    """Architecture of a new Llama-family model (used when --model holds only a tokenizer)."""

    hidden_size: int = opt(256, "Width of the residual stream (a multiple of num_heads).", ge=1)
    num_layers: int = opt(4, "Transformer blocks.", ge=1)
    num_heads: int = opt(4, "Attention heads.", ge=1)
    num_kv_heads: int = opt(4, "Key/value heads (a divisor of num_heads; fewer gives grouped-query attention).", ge=1)
    intermediate_size: int = opt(768, "Width of the MLP.", ge=1)
    max_position: int = opt(512, "Longest context the model is built for.", ge=1)
    rope_theta: float = opt(10000.0, "RoPE base.", gt=0)
    tie_embeddings: bool = opt(True, "Share the input embedding and the output head.")

    def check(self, prefix: str = "") -> None:
        """Rules between the fields (called by config.from_dict)."""
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{prefix}hidden_size ({self.hidden_size}) must be a multiple of {prefix}num_heads "
                              f"({self.num_heads}); change one of them.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{prefix}num_kv_heads ({self.num_kv_heads}) must divide {prefix}num_heads "
                              f"({self.num_heads}); change one of them.")


@dataclass
class PretrainDataConfig:
    """How the corpus is cut into rows."""

    seq_len: int = opt(256, "Tokens per packed row; longer documents are cut into chunks.", ge=2)
    eval_fraction: float = opt(0.01, "Fraction of documents held out for eval loss (0 = none).", ge=0, lt=1)
    limit: int | None = opt(None, "Use only the first N documents; null = all.", ge=1)


def _pretrain_train() -> TrainConfig:
    return TrainConfig(lr=3e-3, warmup_ratio=0.02, weight_decay=0.1, batch_size=16, min_lr_ratio=0.05, log_every=25)


@dataclass
class PretrainConfig:
    """Pretraining (causal-LM loss on every token) of a new or existing model."""

    arch: ArchConfig = opt(help="Architecture of a new model.", factory=ArchConfig)
    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: PretrainDataConfig = opt(help="Data options.", factory=PretrainDataConfig)
    train: TrainConfig = opt(help="Optimisation options.", factory=_pretrain_train)


def new_model(tok, arch: ArchConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position, rope_theta=arch.rope_theta, tie_word_embeddings=arch.tie_embeddings,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def llama_parameter_count(vocab_size: int, arch: ArchConfig) -> int:
    """Parameters of the model `new_model` builds (no biases; RMSNorm weights; tied or separate head)."""
    h, kv = arch.hidden_size, arch.hidden_size // arch.num_heads * arch.num_kv_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * arch.intermediate_size + 2 * h
    return vocab_size * h * (1 if arch.tie_embeddings else 2) + arch.num_layers * per_layer + h


def run_pretrain(model_path, data_path, out, cfg: PretrainConfig, *, resume: bool | str = False, progress: bool = True,
                 overwrite: bool = False, allow_change=(), reads: dict | None = None) -> dict:
    """Train and write the artifact to `out`; resume/overwrite/allow_change/reads as in run_sft (docs/safety.md)."""
    t0 = time.perf_counter()
    resolve_device(cfg.model.device, "model.device")  # cuda on a machine without one: say so before any work
    fresh = not (Path(model_path) / "config.json").exists()
    if not fresh:
        check_model_dir(model_path)  # config.json and whole weights, before the tokenizer loads
    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    bytes_per_weight = 2 if cfg.model.save_dtype == "bf16" else 4
    need = llama_parameter_count(len(tok), cfg.arch) * bytes_per_weight if fresh else model_bytes(model_path)
    check_stage_output(out, stage_inputs(model_path, data_path, cfg, reads), overwrite=overwrite, need_bytes=need)
    _, rows = load_dataset_rows(data_path, allowed=("text",))
    data = [data_record(data_path, len(rows)) | {"format": "text", "role": "train"}]
    parent = None if fresh else parent_record(model_path)
    model_id = f"tokenizer {sha256_path(model_path)}" if fresh else parent["weights_sha256"]
    ckpt, run_record = start_run(out, cfg, model_id=model_id, data_records=data, resume=resume,
                                 allow_change=allow_change, overwrite=overwrite)
    if fresh:
        device = resolve_device(cfg.model.device, "model.device")
        dtype = resolve_dtype(cfg.model.dtype, device)
        model = new_model(tok, cfg.arch, cfg.train.seed).to(device)
    else:
        model, tok, device, dtype = prepare_model(model_path, cfg.model, tok)
    if cfg.data.limit:
        rows = rows[: cfg.data.limit]
    train_docs, eval_docs = split_rows(rows, cfg.data.eval_fraction, cfg.train.seed)
    train_ex, stats = split_documents(tok, train_docs, cfg.data.seq_len)
    eval_ex, _ = split_documents(tok, eval_docs, cfg.data.seq_len) if eval_docs else ([], None)
    train_rows, eval_rows = pack_examples(train_ex, cfg.data.seq_len), pack_examples(eval_ex, cfg.data.seq_len)
    trainer = Trainer(model, train_rows, cfg.train, device=device, dtype=dtype, pad_id=tok.pad_token_id,
                      eval_rows=eval_rows, ckpt_dir=checkpoint_dir(out), desc="pretrain", progress=progress,
                      run_record=run_record)
    resume_trainer(trainer, ckpt)
    result = trainer.fit()
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"train_loss": result.train_loss, "eval_loss": result.eval_loss, "steps": result.steps,
               "tokens": result.tokens, "tokens_per_s": round(result.tokens_per_s, 1), "parameters": n_params,
               "corpus_tokens": stats.tokens, "dtype": dtype, "device": str(device)}
    prov = save_artifact(out, stage="pretrain", model=finalize_model(model, cfg.model), tokenizer=tok, config=asdict(cfg), parent=parent,
                         data=data, seeds={"init": cfg.train.seed, "train": cfg.train.seed}, metrics=metrics,
                         metrics_lines=result.metrics_lines, wall_time_s=time.perf_counter() - t0,
                         resumes=run_record["history"])
    import shutil

    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    print(summary(f"pretraining finished: {out} ({prov['artifact_id']})", {
        "parameters": n_params, "steps": result.steps, "train loss": result.train_loss,
        "eval loss": result.eval_loss, "tokens seen": result.tokens, "tokens/s": round(result.tokens_per_s, 1),
        "dtype": dtype, "wall time (s)": round(time.perf_counter() - t0, 1)}))
    return prov
