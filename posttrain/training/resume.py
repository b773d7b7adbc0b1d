"""Resuming a run only when it is the same run.

Every checkpoint holds `run.json`: the run's identity (its resolved options, the content
hashes of its data and of the model it started from) and its history of resumes. `--resume`
compares that identity with the current one and stops on any difference, listing each as
`key: checkpoint value -> now value`, unless each differing key is named in `--allow-change`;
accepted changes are recorded with the step they took effect at, and end up in provenance.json.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from posttrain.console import notice
from posttrain.errors import OutputError, ResumeError

RUN_FILE = "run.json"
# Options that change how a run is watched or where it ends, not what any step computes: they may differ
# on resume. train.stop_at_step is one: a checkpoint at step k is the same whatever step the run stops at
# (resuming from one past the stop is refused in stages/guard.py).
OPERATIONAL = ("model.device", "train.log_every", "train.eval_every", "train.save_every", "train.report_to",
               "train.contamination_n", "train.contamination_threshold", "train.stop_at_step")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_identity(config: dict, model: str | None, data: dict[str, str | None]) -> dict:
    """What makes two runs the same run: options (paths replaced by content hashes), model and data hashes.

    `data` maps a key ('data', 'data.eval_data', ...) to the sha256 of that input (None when unused).
    """
    ident = {k: v for k, v in flatten(config).items() if k not in OPERATIONAL}
    ident.update(data)
    ident["model"] = model
    return ident


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _show(v) -> str:
    if isinstance(v, str) and _HASH.match(v):
        return f"sha256 {v[:12]}"
    return json.dumps(v) if not isinstance(v, str) else v


def format_differences(diffs) -> str:
    return "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in diffs)


def resolve_allowed(names, keys) -> set[str]:
    """--allow-change names -> identity keys: an exact key, or a unique dotted suffix (`lr` -> `train.lr`)."""
    out = set()
    for name in names:
        if name in keys:
            out.add(name)
            continue
        matches = [k for k in keys if k.endswith("." + name)]
        if len(matches) != 1:
            hint = f"it matches {', '.join(matches)}" if matches else "no such key"
            raise ResumeError(f"--allow-change {name}: {hint}. Name a key as the resume check lists it, e.g. "
                              f"--allow-change train.lr (keys: model, data, data.eval_data, data.replay_data, "
                              f"or any option of docs/options.md).")
        out.add(matches[0])
    return out


def completed_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").exists())


def _foreign_entries(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if not re.match(r"^\.?step-\d+", p.name)) if ckpt_dir.is_dir() else []


def plan_resume(ckpt_dir, identity: dict, resume, allow_change=(), overwrite: bool = False) -> tuple[Path | None, dict]:
    """Decide where the run starts: (checkpoint to load or None, run record for new checkpoints).

    resume: True (a checkpoint must exist), False (start fresh), or "auto" (resume when one exists;
    the recipe runner). Raises ResumeError / OutputError with the fix.
    """
    ckpt_dir = Path(ckpt_dir)
    foreign = _foreign_entries(ckpt_dir)
    if foreign:
        raise OutputError(f"{ckpt_dir} (the checkpoint folder of this --out) holds files posttrain did not write "
                          f"({', '.join(foreign[:3])}); posttrain will not delete them. Move them away or choose "
                          f"another --out.")
    done = completed_checkpoints(ckpt_dir)
    fresh = {"identity": identity, "history": []}
    if not resume:
        if done and not overwrite:
            raise OutputError(f"{ckpt_dir} holds checkpoints of an unfinished run (latest {done[-1].name}); "
                              f"starting over would delete them. Pass --resume to continue that run, or --overwrite "
                              f"to start over.")
        for old in done:
            shutil.rmtree(old)
        if done:
            notice(f"removed {len(done)} checkpoint(s) of an earlier run in {ckpt_dir} (--overwrite)")
        return None, fresh
    if not done:
        if resume == "auto":
            return None, fresh
        raise ResumeError(f"--resume: there is no checkpoint in {ckpt_dir}, so there is nothing to resume (the run "
                          f"finished, or stopped before its first checkpoint at train.save_every steps). Run without "
                          f"--resume to start from scratch.")
    ckpt = done[-1]
    try:
        saved = json.loads((ckpt / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise ResumeError(f"--resume: {ckpt} has no readable {RUN_FILE} (written by an older posttrain), so it cannot "
                          f"be shown to belong to this run. Start over with --overwrite.") from None
    step = json.loads((ckpt / "state.json").read_text()).get("step")
    diffs = differences(saved["identity"], identity)
    allowed = resolve_allowed(allow_change, set(saved["identity"]) | set(identity))
    refused = [d for d in diffs if d[0] not in allowed]
    if refused:
        keys = " ".join(f"--allow-change {k}" for k, _, _ in refused)
        raise ResumeError(f"--resume: the checkpoint {ckpt} (step {step}) was written by a different run: "
                          f"{format_differences(refused)}. Resume with the checkpoint's settings; or accept the "
                          f"change with {keys} (recorded in provenance.json with the step it took effect); or start "
                          f"over with --overwrite.")
    changes = [{"key": k, "from": a, "to": b} for k, a, b in diffs]
    history = saved.get("history", []) + [{"resumed_at_step": step, "checkpoint": ckpt.name, "changes": changes}]
    if changes:
        notice(f"resume accepts changed settings (--allow-change): {format_differences(diffs)}")
    return ckpt, {"identity": identity, "history": history}
