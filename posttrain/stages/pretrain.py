"""Pretraining: causal-LM loss on a packed text corpus, from a fresh model or a checkpoint.

`--model` is either a full model directory (continued pretraining) or a tokenizer
directory alone, in which case a new Llama-architecture model is initialised from
`arch`. Same trainer, checkpoints and resume as SFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.artifacts import data_record, parent_record, sha256_path
from posttrain.config import opt
from posttrain.data.formats import load_dataset_rows
from posttrain.data.packing import pack_examples
from posttrain.data.sft import split_documents
from posttrain.errors import ConfigError
from posttrain.models import load_tokenizer, resolve_device, resolve_dtype
from posttrain.outputs import model_bytes
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import split_rows
from posttrain.training.config import ModelConfig, TrainConfig
from posttrain.training.objectives import NextToken


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


class Pretrain(Stage):
    name = "pretrain"
    order = 12
    help = "Pretrain a Llama-architecture model (new, from a tokenizer dir, or continued) on a text corpus."
    description = """Causal-LM loss on every token of a packed text corpus (JSONL rows {"text": ...}).
--model is a tokenizer directory (a new model is built from the arch.* options) or a model
directory (continued pretraining). Checkpoints every train.save_every steps; --resume continues.

  posttrain pretrain --model runs/tokenizer --data world/corpus.jsonl --out runs/base \\
      --set train.max_steps=3000 --set arch.num_layers=4

All options: docs/options.md (section pretrain)."""
    data_help = "Corpus: JSONL rows with a 'text' field."
    config = PretrainConfig

    @staticmethod
    def fresh(model_path) -> bool:
        """A directory with a tokenizer but no model: a new model is built from `arch`."""
        return not (Path(model_path) / "config.json").exists()

    def output_bytes(self, model_path, cfg: PretrainConfig) -> int:
        if not self.fresh(model_path):
            return model_bytes(model_path)
        n = llama_parameter_count(len(load_tokenizer(model_path, cfg.model.trust_remote_code)), cfg.arch)
        return n * (2 if cfg.model.save_dtype == "bf16" else 4)

    def tokenizer(self, model_path, cfg):
        if self.fresh(model_path):
            return load_tokenizer(model_path, cfg.model.trust_remote_code)
        return super().tokenizer(model_path, cfg)

    def parent(self, model_path):
        return None if self.fresh(model_path) else parent_record(model_path)

    def model_id(self, model_path, parent):
        return f"tokenizer {sha256_path(model_path)}" if parent is None else parent["weights_sha256"]

    def read_data(self, tok, data_path, cfg: PretrainConfig) -> StageData:
        _, rows = load_dataset_rows(data_path, allowed=("text",))
        record = data_record(data_path, len(rows)) | {"format": "text", "role": "train"}
        if cfg.data.limit:
            rows = rows[: cfg.data.limit]
        train_docs, eval_docs = split_rows(rows, cfg.data.eval_fraction, cfg.train.seed)
        train_ex, stats = split_documents(tok, train_docs, cfg.data.seq_len)
        eval_ex, _ = split_documents(tok, eval_docs, cfg.data.seq_len) if eval_docs else ([], None)
        return StageData(pack_examples(train_ex, cfg.data.seq_len), pack_examples(eval_ex, cfg.data.seq_len), [record],
                         metrics={"corpus_tokens": stats.tokens}, summary={"corpus tokens": stats.tokens})

    def load(self, model_path, cfg: PretrainConfig, tok):
        if not self.fresh(model_path):
            return super().load(model_path, cfg, tok)
        device = resolve_device(cfg.model.device, "model.device")
        return new_model(tok, cfg.arch, cfg.train.seed).to(device), device, resolve_dtype(cfg.model.dtype, device)

    def objective(self, model, tok, data, cfg, device, dtype, progress: bool = True):
        return NextToken(tok.pad_token_id)

    def result_metrics(self, model, result, data, objective, device, dtype):
        return {"parameters": sum(p.numel() for p in model.parameters())}


STAGE = Pretrain()


def run_pretrain(model_path, data_path, out, cfg: PretrainConfig, **kw) -> dict:
    """Train and write the artifact to `out` (Stage.run's options); return its provenance."""
    return STAGE.run(model_path, data_path, out, cfg, **kw)
