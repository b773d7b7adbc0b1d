"""What goes into the ledgers, and when.

- A training stage (stages.base.Stage.run) writes its artifact's lineage ledger: the parent's ledger copied
  as is (chain intact), or, for a parent without one, a `model` entry from its provenance; then this stage's
  facts: where its data came from (the world's build and written policies, a preference-sampling run and its
  labeller), every data file by hash, the reward models and judges its config names, and its `stage_run`.
  The same new facts go to the run's ledger (a recipe's RUN_DIR/ledger.jsonl).
- A recipe's `world` and `preferences` steps record the data they generate; an `eval` step records the
  report (and, for a model of this run, appends it to the model's own ledger and regenerates its card).
- `posttrain eval ARTIFACT` records its report in the artifact's ledger, when the artifact has one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.artifacts import parent_record, read_provenance, sha256_file
from posttrain.governance import ledger
from posttrain.governance.ledger import LEDGER, LedgerError

POLICY_FILES = {"hazard_policy": "policy/hazard_policy.md", "constitution": "policy/constitution.md"}


def config_sha256(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_lineage(model_path) -> None:
    """Refuse a starting model whose lineage ledger fails verification: checked before any work is done."""
    path = Path(model_path) / LEDGER if model_path else None
    if path is None or not path.is_file():
        return
    problems = ledger.verify(path)
    if problems:
        raise LedgerError(f"{path}: the lineage ledger of the starting model fails verification ({len(problems)} "
                          f"problem{'s' * (len(problems) > 1)}: {'; '.join(problems[:3])}). A model whose audit trail "
                          f"was altered is not trained on: restore its ledger.jsonl from a copy (the run's ledger, or "
                          f"the model it was copied from), or remove it to start a new lineage from its provenance.")


# ---------------------------------------------------------------- where data came from


def world_of(path) -> tuple[Path, dict] | None:
    """(world directory, manifest) when `path` is a file of a world from `posttrain world build`, unchanged."""
    path = Path(path)
    if not path.is_file():
        return None
    for folder in (path.parent, path.parent.parent):
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rel = path.relative_to(folder).as_posix()
        listed = (manifest.get("files") or {}).get(rel) if isinstance(manifest, dict) else None
        if str(manifest.get("generator", "")).startswith("world-") and listed and listed.get("sha256") == sha256_file(path):
            return folder, manifest
    return None


def world_facts(folder: Path, manifest: dict) -> list[dict]:
    """The world build as synthetic data, and its written policies by hash and in full."""
    out, policies = [], {}
    for name, rel in POLICY_FILES.items():
        p = folder / rel
        listed = manifest.get("files", {}).get(rel, {})
        if not p.is_file() or sha256_file(p) != listed.get("sha256"):
            continue  # missing or changed since the build: not what the data was made against
        text = p.read_text(encoding="utf-8")
        policies[name] = listed["sha256"]
        out.append({"kind": "policy", "name": name, "file": rel, "file_sha256": listed["sha256"],
                    "version": manifest.get("generator"), "text": text})
    out.insert(0, {"kind": "synthetic_data", "source": "posttrain world build", "generator": manifest.get("generator"),
                   "seed": manifest.get("seed"), "scale": manifest.get("scale"), "probe_n": manifest.get("probe_n"),
                   "world": folder.name, "output_sha256": sha256_file(folder / "manifest.json"),
                   "policies": policies, "filters": None})
    return out


def _model_facts(kind: str, path, **extra) -> dict:
    rec = parent_record(path)
    prov = read_provenance(path) or {}
    return {"kind": kind, "name": rec["path"], "artifact_id": rec["artifact_id"], "stage": prov.get("stage"),
            "weights_sha256": rec["weights_sha256"], **extra}


def labeller_facts(spec: str, used_by: str | None) -> list[dict]:
    """The labeller of preference data as a reward model or judge entry."""
    if spec == "gold":
        return [{"kind": "judge", "name": "gold", "type": "programmatic", "used_by": used_by}]
    if spec.startswith("ai:"):
        path = spec[3:]
        if Path(path).is_dir():
            return [_model_facts("judge", path, type="ai", used_by=used_by)]
        return [{"kind": "judge", "name": spec, "type": "ai", "used_by": used_by}]
    if Path(spec).is_dir():
        return [_model_facts("reward_model", spec, role="labeller", used_by=used_by)]
    return [{"kind": "judge", "name": spec, "type": "function", "used_by": used_by}]


def preference_facts(path) -> list[dict]:
    """A preferences file written by `posttrain preferences sample` (its summary beside it) as synthetic data."""
    from posttrain.feedback.sampling import summary_path

    path = Path(path)
    side = summary_path(path)
    if not path.is_file() or not side.is_file():
        return []
    try:
        summary = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(summary, dict) or "labeller" not in summary:
        return []
    policy = Path(str(summary.get("policy", "")))
    prompts = Path(str(summary.get("prompts", "")))
    policy_id = (read_provenance(policy) or {}).get("artifact_id") if policy.is_dir() else None
    out = [{"kind": "synthetic_data", "source": "posttrain preferences sample",
            "generator": policy_id or policy.name, "labeller": summary["labeller"],
            "prompts": prompts.name, "prompts_sha256": sha256_file(prompts) if prompts.is_file() else None,
            "constitution_sha256": summary.get("constitution_sha256"),
            "output": path.name, "output_sha256": sha256_file(path), "pairs": summary.get("pairs"),
            "filters": {k: summary.get(k) for k in ("n", "margin", "temperature", "max_new_tokens", "seed",
                                                      "dropped_ties", "dropped_identical")}}]
    out += labeller_facts(str(summary["labeller"]), used_by=f"preferences {path.name}")
    world = world_of(prompts) if prompts.is_file() else None
    return (world_facts(*world) if world else []) + out


def source_facts(paths) -> list[dict]:
    """Where the data files came from: world builds and preference-sampling runs."""
    out = []
    for p in paths:
        if not p:
            continue
        world = world_of(p)
        out += world_facts(*world) if world else []
        out += preference_facts(p)
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_model_facts(config: dict, used_by: str) -> list[dict]:
    """The reward models, judges, verifiers and reference models a stage's config names."""
    out = []
    for key, value in _flatten(config).items():
        leaf = key.rsplit(".", 1)[-1]
        if key.endswith("reward.model") and isinstance(value, str) and value:
            if Path(value).is_dir():
                out.append(_model_facts("reward_model", value, role="reward", used_by=used_by))
            else:
                out.append({"kind": "judge", "name": value, "type": "programmatic" if value == "gold" else "function",
                            "used_by": used_by})
        elif key.endswith("reward.verifiers") and isinstance(value, list):
            out += [{"kind": "judge", "name": v, "type": "verifier", "used_by": used_by} for v in value]
        elif leaf in ("ref_model", "value_init") and isinstance(value, str) and Path(value).is_dir():
            out.append(_model_facts("model", value, role="reference" if leaf == "ref_model" else "value_init"))
    return out


# ---------------------------------------------------------------- evals


def eval_facts(report: dict, report_sha256: str, model_path, *, name: str | None = None, recipe: str | None = None,
               system: str | None = None, report_file: str | None = None) -> dict:
    """An eval report as a ledger entry: which weights, which probes, every metric with its 95% interval."""
    rec = parent_record(model_path)
    probes = {}
    for probe, p in (report.get("probes") or {}).items():
        probes[probe] = {"metric": p.get("metric"), "value": p.get("value"), "ci95": p.get("ci95"), "n": p.get("n"),
                         "higher_is_better": p.get("higher_is_better"), "version": p.get("version"),
                         "secondary": {m: {"value": e.get("value"), "ci95": e.get("ci95"), "n": e.get("n")}
                                       for m, e in (p.get("secondary") or {}).items()}}
    return {"kind": "eval", "name": name, "recipe": recipe, "model": rec["path"], "artifact_id": rec["artifact_id"],
            "weights_sha256": rec["weights_sha256"], "system": system or "model", "report": report_file,
            "report_sha256": report_sha256, "source": report.get("source"), "n": report.get("n"), "probes": probes}


def report_eval_facts(report_path, model_path, **kw) -> dict:
    report_path = Path(report_path)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return eval_facts(report, sha256_file(report_path), model_path, report_file=report_path.name, **kw)


def record_eval(report_path, model_path, *, run_ledger=None, into_model: bool = True, **kw) -> dict:
    """Record an eval report in the run ledger and, for a model with a ledger (into_model), in its own; then
    regenerate that model's card so that it carries the results."""
    fact = report_eval_facts(report_path, model_path, **kw)
    if run_ledger is not None:
        ledger.append_facts(run_ledger, [fact])
    own = Path(model_path) / LEDGER
    if into_model and fact["system"] == "model" and own.is_file() and read_provenance(model_path):
        ledger.append_facts(own, [fact])
        from posttrain.governance.card import write_model_card

        write_model_card(model_path)
    return fact


def parent_evals(model_path, run_ledger=None) -> list[dict]:
    """Eval entries about the starting model: its own eval_report.json, and evals of it in the run's ledger."""
    out = []
    report = Path(model_path) / "eval_report.json"
    if report.is_file():
        try:
            out.append(report_eval_facts(report, model_path))
        except (OSError, ValueError):
            pass
    if run_ledger is not None and Path(run_ledger).is_file():
        weights = parent_record(model_path)["weights_sha256"]
        out += [ledger.facts(e) for e in ledger.read(run_ledger)
                if e["kind"] == "eval" and e.get("weights_sha256") == weights and e.get("system") == "model"]
    return out


# ---------------------------------------------------------------- a training stage


def write_lineage(artifact_dir, prov: dict, *, model_path, data_paths, run_ledger=None, name: str | None = None,
                  recipe: str | None = None) -> list[dict]:
    """Write ARTIFACT/ledger.jsonl (the parent's lineage, then this stage's entries); return the new entries.

    Called on the artifact's temporary directory, before it is renamed into place.
    """
    dst = Path(artifact_dir) / LEDGER
    parent_ledger = Path(model_path) / LEDGER if model_path and prov.get("parent") else None
    new: list[dict] = []
    if parent_ledger is not None and parent_ledger.is_file():
        ledger.copy_lineage(parent_ledger, dst)
    elif prov.get("parent"):
        parent_prov = read_provenance(model_path) or {}
        start = _model_facts("model", model_path, role="start", parent_id=(parent_prov.get("parent") or {}).get(
            "artifact_id"), created_unix=parent_prov.get("created_unix"), license=parent_prov.get("license"))
        new.append(start)
        new += [{"kind": "data", "file": r.get("path"), "file_sha256": r.get("sha256"), "rows": r.get("rows"),
                 "role": r.get("role", "train"), "used_by": start["artifact_id"] or start["name"]}
                for r in parent_prov.get("data") or []]
    if prov.get("parent"):
        new += parent_evals(model_path, run_ledger)
    aid = prov["artifact_id"]
    sources = source_facts(data_paths)
    new += sources
    new += [{"kind": "data", "file": r.get("path"), "file_sha256": r.get("sha256"), "rows": r.get("rows"),
             "role": r.get("role", "train"), "format": r.get("format"), "used_by": aid} for r in prov.get("data") or []]
    new += config_model_facts(prov.get("config") or {}, used_by=aid)
    parent = prov.get("parent") or {}
    metrics = prov.get("metrics") or {}
    contamination = metrics.get("contamination") or {}
    new.append({"kind": "stage_run", "stage": prov["stage"], "recipe": recipe, "name": name, "artifact_id": aid,
                "weights_sha256": prov["weights_sha256"], "parent": parent.get("path"), "parent_id": parent.get("artifact_id"),
                "parent_weights_sha256": parent.get("weights_sha256"), "config_sha256": config_sha256(prov["config"]),
                "data": [f"{r.get('path')}@{str(r.get('sha256'))[:12]}" for r in prov.get("data") or []],
                "policies": {e["name"]: e["file_sha256"] for e in sources if e["kind"] == "policy"},
                "contamination": {k: contamination.get(k) for k in ("n", "probes", "max_share", "flagged")}
                if contamination else None,
                "metrics": {k: metrics.get(k) for k in ("steps", "train_loss", "eval_loss") if k in metrics},
                "posttrain_version": prov.get("posttrain_version"), "git_commit": prov.get("git_commit"),
                "wall_time_s": prov.get("wall_time_s")})
    if prov.get("gates"):  # a recipe's gates on the stage's own metrics
        from posttrain.governance.gate_run import gate_facts

        record = {"artifact_id": aid, "weights_sha256": prov["weights_sha256"], "path": name}
        new += gate_facts(prov["gates"], None, stage=name or prov["stage"], recipe=recipe, record=record)
    return ledger.append_facts(dst, new)


def record_run(run_ledger, entries: list[dict]) -> None:
    """Append a finished stage's new lineage entries to the run's ledger (what it already holds is skipped)."""
    if run_ledger is not None and entries:
        ledger.append_facts(run_ledger, entries)
