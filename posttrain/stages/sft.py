"""Supervised fine-tuning: next-token loss on assistant turns, packed, with checkpoints and provenance."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.artifacts import data_record
from posttrain.config import opt
from posttrain.data.chat import ensure_chat_template, stop_generation_at_end_of_turn
from posttrain.data.formats import load_dataset_rows
from posttrain.data.packing import pack_examples, unpacked_rows
from posttrain.data.sft import build_examples, replay_examples
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import finalize_model, split_rows
from posttrain.training.config import DataConfig, ModelConfig, TrainConfig
from posttrain.training.objectives import NextToken

SFT_FORMATS = ("conversational", "prompt_completion")


@dataclass
class SFTConfig:
    """Supervised fine-tuning (instruction tuning) on chats or prompt-completion pairs."""

    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: DataConfig = opt(help="Data options.", factory=DataConfig)
    train: TrainConfig = opt(help="Optimisation options.", factory=TrainConfig)


def prepare_sft_rows(tok, data_path, cfg: SFTConfig):
    """Data file -> (train rows, eval rows, stats, format, records of the other files read)."""
    fmt, rows = load_dataset_rows(data_path, allowed=SFT_FORMATS)
    if cfg.data.limit:
        rows = rows[: cfg.data.limit]
    records = []
    if cfg.data.eval_data:
        efmt, eval_rows = load_dataset_rows(cfg.data.eval_data, allowed=SFT_FORMATS)
        records.append(data_record(cfg.data.eval_data, len(eval_rows)) | {"role": "eval"})
    else:
        rows, eval_rows = split_rows(rows, cfg.data.eval_fraction, cfg.train.seed)
        efmt = fmt
    kw = dict(max_length=cfg.data.max_length, overlength=cfg.data.overlength, assistant_only=cfg.data.assistant_only_loss,
              cut_turns=cfg.data.cut_turns)
    train_ex, stats = build_examples(tok, rows, fmt, path=data_path, **kw)
    if cfg.data.replay_data and cfg.data.replay_ratio > 0:
        _, text_rows = load_dataset_rows(cfg.data.replay_data, allowed=("text",))
        replay = replay_examples(tok, text_rows, cfg.data.max_length, int(cfg.data.replay_ratio * stats.tokens), cfg.train.seed)
        records.append(data_record(cfg.data.replay_data, len(text_rows)) | {"role": "replay", "examples": len(replay)})
        train_ex = train_ex + replay
    eval_ex = build_examples(tok, eval_rows, efmt, path=cfg.data.eval_data or data_path, **kw)[0] if eval_rows else []
    shape = (lambda ex: pack_examples(ex, cfg.data.max_length)) if cfg.data.packing else unpacked_rows
    return shape(train_ex), shape(eval_ex), stats, fmt, records


class SFT(Stage):
    name = "sft"
    order = 20
    help = "Supervised fine-tuning on chats (assistant-only loss) or prompt-completion pairs."
    description = """Supervised fine-tuning: next-token loss on assistant turns only (or all tokens with
--set data.assistant_only_loss=false), examples packed per row without attention crossing
example boundaries, AdamW with warmup + cosine decay, gradient clipping, held-out eval loss,
checkpoints every train.save_every steps (resume with --resume), and a NaN guard.

Data: JSONL/JSON/Parquet/datasets dir with rows {"messages": [...]} or {"prompt", "completion"}.
Example:
  posttrain sft --model models/base --data world/sft.jsonl --out runs/sft --set train.max_steps=100
All options: docs/options.md (section sft)."""
    data_help = "Training data: .jsonl/.json/.parquet or a datasets directory (conversational or prompt-completion rows)."
    config = SFTConfig

    def read_data(self, tok, data_path, cfg: SFTConfig) -> StageData:
        template = ensure_chat_template(tok, cfg.data.chat_template)
        train, eval_rows, stats, fmt, records = prepare_sft_rows(tok, data_path, cfg)
        cut = f"cut turns ({'dropped' if cfg.data.cut_turns == 'drop' else 'kept'})"
        return StageData(
            train, eval_rows, [data_record(data_path, stats.rows) | {"format": fmt, "role": "train"}, *records],
            stats=stats.as_dict(), metrics={"packed_rows": len(train), "chat_template": template},
            summary={"examples": stats.examples, "truncated": stats.truncated, "dropped": stats.dropped,
                     cut: stats.cut_turns, "target tokens": stats.target_tokens})

    def objective(self, model, tok, data, cfg, device, dtype, progress: bool = True):
        return NextToken(tok.pad_token_id)

    def finish(self, model, tok, cfg):
        model = finalize_model(model, cfg.model)
        stop_generation_at_end_of_turn(model, tok)  # plain `generate` stops at <|im_end|>, not at the token limit
        return model


STAGE = SFT()


def run_sft(model_path, data_path, out, cfg: SFTConfig, **kw) -> dict:
    """Train and write the artifact to `out` (Stage.run's options); return its provenance."""
    return STAGE.run(model_path, data_path, out, cfg, **kw)
