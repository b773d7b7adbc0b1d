"""Supervised fine-tuning: next-token loss on assistant turns, packed, with checkpoints and provenance."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.artifacts import data_record, parent_record, save_artifact
from posttrain.config import opt
from posttrain.console import summary
from posttrain.data.chat import ensure_chat_template, stop_generation_at_end_of_turn
from posttrain.data.formats import load_dataset_rows
from posttrain.data.packing import pack_examples, unpacked_rows
from posttrain.data.sft import build_examples, replay_examples
from posttrain.models import check_model_dir, load_tokenizer, resolve_device
from posttrain.outputs import model_bytes
from posttrain.stages.common import checkpoint_dir, finalize_model, prepare_model, split_rows
from posttrain.stages.guard import check_stage_output, resume_trainer, stage_inputs, start_run
from posttrain.training.config import DataConfig, ModelConfig, TrainConfig
from posttrain.training.loop import Trainer

SFT_FORMATS = ("conversational", "prompt_completion")


@dataclass
class SFTConfig:
    """Supervised fine-tuning (instruction tuning) on chats or prompt-completion pairs."""

    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: DataConfig = opt(help="Data options.", factory=DataConfig)
    train: TrainConfig = opt(help="Optimisation options.", factory=TrainConfig)


def prepare_sft_rows(tok, data_path, cfg: SFTConfig):
    """Data file -> (train rows, eval rows, stats, records) ready for the trainer."""
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


def run_sft(model_path, data_path, out, cfg: SFTConfig, *, resume: bool | str = False, progress: bool = True,
            overwrite: bool = False, allow_change=(), reads: dict | None = None) -> dict:
    """Train and write the artifact to `out`. resume: True, False or "auto" (see training.resume.plan_resume);
    `reads`: other inputs to protect (e.g. {"--config": path}); see docs/safety.md."""
    t0 = time.perf_counter()
    resolve_device(cfg.model.device, "model.device")  # cuda on a machine without one: say so before any work
    # Output first, data next: a bad --out or a bad line is reported before a (possibly large) model is loaded.
    check_stage_output(out, stage_inputs(model_path, data_path, cfg, reads), overwrite=overwrite,
                       need_bytes=model_bytes(model_path))
    check_model_dir(model_path)  # config.json and whole weights, before the tokenizer loads
    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    template = ensure_chat_template(tok, cfg.data.chat_template)
    train_rows, eval_rows, stats, fmt, records = prepare_sft_rows(tok, data_path, cfg)
    parent = parent_record(model_path)
    data = [data_record(data_path, stats.rows) | {"format": fmt, "role": "train"}, *records]
    ckpt, run_record = start_run(out, cfg, model_id=parent["weights_sha256"], data_records=data, resume=resume,
                                 allow_change=allow_change, overwrite=overwrite)
    model, tok, device, dtype = prepare_model(model_path, cfg.model, tok)
    trainer = Trainer(model, train_rows, cfg.train, device=device, dtype=dtype, pad_id=tok.pad_token_id,
                      eval_rows=eval_rows, ckpt_dir=checkpoint_dir(out), desc="sft", progress=progress,
                      run_record=run_record)
    resume_trainer(trainer, ckpt)
    result = trainer.fit()
    metrics = {
        "train_loss": result.train_loss, "eval_loss": result.eval_loss, "steps": result.steps,
        "tokens": result.tokens, "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_memory_mb": round(result.peak_memory_mb, 1), "data": stats.as_dict(),
        "packed_rows": len(train_rows), "dtype": dtype, "device": str(device), "chat_template": template,
    }
    model = finalize_model(model, cfg.model)
    stop_generation_at_end_of_turn(model, tok)  # plain `generate` stops at <|im_end|>, not at the token limit
    prov = save_artifact(
        out, stage="sft", model=model, tokenizer=tok, config=asdict(cfg),
        parent=parent, data=data, seeds={"train": cfg.train.seed}, metrics=metrics, metrics_lines=result.metrics_lines,
        wall_time_s=time.perf_counter() - t0, resumes=run_record["history"],
    )
    _remove_checkpoints(out)
    print(summary(f"SFT finished: {out} ({prov['artifact_id']})", {
        "steps": result.steps, "train loss": result.train_loss, "eval loss": result.eval_loss,
        "examples": stats.examples, "truncated": stats.truncated, "dropped": stats.dropped,
        f"cut turns ({'dropped' if cfg.data.cut_turns == 'drop' else 'kept'})": stats.cut_turns,
        "target tokens": stats.target_tokens, "tokens/s": round(result.tokens_per_s, 1),
        "dtype": dtype, "wall time (s)": round(time.perf_counter() - t0, 1),
    }))
    return prov


def _remove_checkpoints(out) -> None:
    import shutil

    shutil.rmtree(checkpoint_dir(Path(out)), ignore_errors=True)
