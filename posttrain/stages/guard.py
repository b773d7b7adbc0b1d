"""The safety envelope of a training stage: where it may write, and whether it may resume.

A stage calls, in order:
  check_stage_output  first, before reading anything large: --out must not destroy data,
                      must be writable and have room (posttrain.outputs);
  start_run           once the data is read, before the model loads: fresh start, or the
                      checkpoint to resume and proof that it is the same run (training.resume);
  resume_trainer      after building the trainer: load that checkpoint and say where it resumes.
See docs/safety.md.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import asdict
from pathlib import Path

from posttrain.console import notice
from posttrain.errors import PosttrainError, ResumeError
from posttrain.outputs import check_output, clean_stale_temporaries, refuse_protected
from posttrain.stages.common import checkpoint_dir
from posttrain.training.resume import plan_resume, run_identity

# Data roles of provenance records -> the identity key the resume check lists them under.
DATA_KEYS = {"train": "data", "eval": "data.eval_data", "replay": "data.replay_data"}


def stage_inputs(model_path, data_path, cfg, reads: dict | None = None) -> dict:
    """Every path a stage reads, by the option that names it: none of them may be written over."""
    inputs = {"--model": model_path, "--data": data_path}
    data = getattr(cfg, "data", None)
    for key in ("eval_data", "replay_data"):
        if getattr(data, key, None):
            inputs[f"data.{key}"] = getattr(data, key)
    lora = getattr(getattr(cfg, "model", None), "lora", None)
    if getattr(lora, "trainable_tokens_from", None):
        inputs["model.lora.trainable_tokens_from"] = lora.trainable_tokens_from
    template = getattr(data, "chat_template", None)
    if template and template not in ("auto", "own", "default"):
        inputs["data.chat_template"] = template
    inputs.update({k: v for k, v in (reads or {}).items() if v})
    return inputs


def check_stage_output(out, inputs: dict, *, overwrite: bool, need_bytes: int | None) -> Path:
    """Clean what killed saves left, then refuse an --out that would destroy data or cannot be written."""
    out = Path(out)
    refuse_protected(out)
    resolved = out.expanduser().resolve()
    clean_stale_temporaries(resolved.parent, resolved.name)
    clean_stale_temporaries(checkpoint_dir(resolved), "step-*")
    return check_output(out, inputs=inputs, overwrite=overwrite, need_bytes=need_bytes,
                        also={"the checkpoint folder": checkpoint_dir(resolved)})


def start_run(out, cfg, *, model_id: str | None, data_records: list[dict], resume, allow_change=(),
              overwrite: bool = False) -> tuple[Path | None, dict]:
    """(checkpoint to resume or None, run record to write into checkpoints). See training.resume.plan_resume."""
    data = {DATA_KEYS[r.get("role", "train")]: r["sha256"] for r in data_records if r.get("role", "train") in DATA_KEYS}
    identity = run_identity(asdict(cfg), model_id, data)
    return plan_resume(checkpoint_dir(Path(out)), identity, resume, allow_change, overwrite)


def resume_trainer(trainer, ckpt: Path | None) -> int:
    if ckpt is None:
        return 0
    try:
        step = trainer.resume(ckpt)
    except PosttrainError:
        raise
    except Exception as e:  # torch.load, safetensors, json: what a damaged or foreign checkpoint raises
        raise ResumeError(unloadable_checkpoint(ckpt, e)) from e
    if step > trainer.end_step:
        raise ResumeError(f"the checkpoint {ckpt} is at step {step}, past train.stop_at_step={trainer.end_step}: "
                          f"resuming cannot give the model at step {trainer.end_step}. Raise train.stop_at_step to "
                          f"at least {step}, or start the run again with --overwrite.")
    notice(f"resuming from step {step} of {trainer.total_steps} (checkpoint {ckpt})")
    return step


def unloadable_checkpoint(ckpt: Path, e: Exception) -> str:
    """Why `ckpt` cannot be resumed, and what to do, in one paragraph.

    torch's own message for a pickle it refuses suggests `weights_only=False`: that would run whatever code the
    file holds, so it is never repeated here. Only the name of what was refused is kept.
    """
    text = str(e)
    refused = re.search(r"(?:Unsupported global|unsupported GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)", text)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or refused:
        why = (f"it holds a pickled object posttrain does not load ({refused.group(1)})" if refused
               else "it holds pickled objects posttrain does not load")
        why += ", so it is not a checkpoint posttrain wrote; loading it could run code"
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        first = first.split(". ")[0].rstrip(".")[:200]
        why = f"it is damaged or was not written by posttrain ({type(e).__name__}{': ' + first if first else ''})"
    return (f"--resume: the checkpoint {ckpt} cannot be loaded safely: {why}. Delete {ckpt} (an earlier "
            f"checkpoint, if any, is then resumed), or start over with --overwrite.")
