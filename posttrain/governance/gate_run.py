"""What a recipe run does with gates (governance.gates defines and evaluates them).

- at load: the recipe's `gates: {fatal: ...}` default and each stage's `gates:`, checked (stage_gates);
- an eval stage: its gates on the report, against the parent's evals and earlier eval stages (eval_gates),
  written into eval_report.json and, as `gate` entries, into the run's ledger and the evaluated model's own;
- a training stage: its gates on its own metrics go into provenance.json and its ledger (stages.base);
- after every stage, run or skipped: its outcomes printed, and a failed fatal gate stops the run
  (after_stage), so that nothing later runs and nothing is published or released;
- `posttrain release` and the card read the latest outcome of each gate about a model (latest).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import ConfigError, PosttrainError
from posttrain.governance.gates import describe, evaluate_report, failed, goal, parse_gates, show_number


class GateFailed(PosttrainError):
    """A fatal gate failed: the run stops after the stage that recorded it."""


def parent_results(model_path, run_ledger=None, itself: bool = False) -> tuple[dict | None, str | None]:
    """(merged probe results of the model's parent, its id) from the model's lineage ledger and the run's ledger;
    itself: of the model itself (a best-of-n eval's reference is the model it samples from)."""
    from posttrain.artifacts import parent_record, read_provenance
    from posttrain.governance import ledger
    from posttrain.governance.card import Lineage

    prov = read_provenance(model_path)
    target = parent_record(model_path) if itself else (prov or {}).get("parent")
    if not target:
        return None, None
    entries = []
    for path in (Path(model_path) / ledger.LEDGER, Path(run_ledger) if run_ledger else None):
        if path is not None and path.is_file():
            entries += [e for e in ledger.read(path) if e["kind"] == "eval"]
    fake = {"artifact_id": "-", "stage": "-", "parent": None, "weights_sha256": "-"}
    results = Lineage(fake, entries).results(target)
    return results or None, target.get("artifact_id") or target.get("path")


def raise_if_fatal(stage: str, results: list[dict], not_done: list[str]) -> None:
    """GateFailed naming every fatal gate of `stage` that failed, with both numbers; nothing when none did."""
    bad = failed(results, fatal_only=True)
    if bad:
        listed = "; ".join(describe(r) for r in bad)
        skipped = f"; not done: {', '.join(not_done)}" if not_done else ""
        raise GateFailed(f"{len(bad)} gate{'s' * (len(bad) > 1)} of stage '{stage}' failed: {listed}. The run stopped "
                         f"after this stage{skipped}. Improve the model, or mark the gate `fatal: false` to report it "
                         f"without stopping.")


def gate_facts(results: list[dict], model_path, *, stage: str, recipe: str | None, system: str = "model",
               record: dict | None = None) -> list[dict]:
    """Gate outcomes as ledger entries about the model at `model_path` (record: its parent_record, if known)."""
    from posttrain.artifacts import parent_record

    rec = record or parent_record(model_path)
    return [{"kind": "gate", "artifact_id": rec["artifact_id"], "weights_sha256": rec["weights_sha256"],
             "model": rec["path"], "system": system, "stage": stage, "recipe": recipe, "gate": r["name"],
             "passed": bool(r.get("passed")), **{k: v for k, v in r.items() if k not in ("name", "passed")}}
            for r in results]


def latest(entries: list[dict], artifact_id: str, weights: str) -> list[dict]:
    """The latest outcome of each gate (by stage, name, probe and metric) recorded about this model itself (not
    about best-of-n of it)."""
    out: dict = {}
    for e in entries:
        if e["kind"] == "gate" and e.get("artifact_id") == artifact_id and e.get("weights_sha256") == weights \
                and e.get("system", "model") == "model":
            out[(e.get("stage"), e.get("gate"), e.get("probe"), e.get("metric"))] = e
    return list(out.values())


def card_section(prov: dict, entries: list[dict]) -> list[str]:
    """The model card's gate section: the latest outcome of each gate recorded about this artifact."""
    gates = latest(entries, prov["artifact_id"], prov["weights_sha256"])
    if not gates:
        return []
    bad = failed([{**g, "name": g.get("gate")} for g in gates])
    out = ["## Release gates", "",
           f"{len(gates) - len(bad)} of {len(gates)} gates passed (the latest outcome of each, from the ledger). "
           "`posttrain release` refuses a model with a failed gate unless forced, and records the force.", "",
           "| stage | gate | measured | goal | result |", "|---|---|---|---|---|"]
    for g in gates:
        r = {**g, "name": g.get("gate")}
        what = " ".join(x for x in (g.get("probe"), g.get("metric")) if x)
        result = "passed" if g.get("passed") else "**FAILED**" + ("" if g.get("fatal", True) else " (not fatal)")
        name = str(g.get("gate")).replace("|", "/")
        out.append(f"| {g.get('stage')} | {name} | {what} {show_number(g.get('value'))} | {goal(r)} | {result} |")
    return out


# ---------------------------------------------------------------- a recipe's gates


def recipe_default_fatal(path, value) -> bool:
    """The recipe-level `gates: {fatal: ...}`: whether a failed gate stops the run unless the gate says otherwise."""
    if value is None:
        return True
    if not isinstance(value, dict) or set(value) - {"fatal"} or not isinstance(value.get("fatal", True), bool):
        raise ConfigError(f"recipe '{path}': the top-level 'gates' takes only 'fatal' (true or false), e.g. gates: "
                          f"{{fatal: false}} to report failed gates without stopping; declare gates on the stages. "
                          f"Got {value!r}.")
    return value.get("fatal", True)


def stage_gates(path, name: str, kind: str, entry: dict, options, earlier: list, default_fatal: bool) -> list:
    """A recipe stage's gates, checked (earlier: the StageSpecs before it)."""
    from posttrain.stages.registry import training_stages

    where = f"recipe '{path}', stage '{name}' ({kind})"
    if kind == "eval":
        evals = {s.name: s.options.probes for s in earlier if s.kind == "eval"}
        return parse_gates(where, entry.get("gates"), kind=kind, probes=options.probes, earlier=evals,
                           default_fatal=default_fatal)
    if "gates" in entry and kind not in training_stages():
        raise ConfigError(f"{where}: gates are for eval stages (probe results) and training stages (their metrics).")
    metrics = training_stages()[kind].gate_metrics if kind in training_stages() else ()
    return parse_gates(where, entry.get("gates"), kind=kind, metrics=metrics, default_fatal=default_fatal)


def eval_gates(runner, spec, model, report: dict, system: str | None) -> list[dict]:
    """An eval stage's gate outcomes on its report: against the parent's evals in the ledgers (for best-of-n,
    the model it samples from) and the earlier eval stages' reports."""
    parent, label = parent_results(model, runner.ledger, itself=system is not None)
    reports = {}
    for name, out in runner.outputs.items():
        if name != spec.name and (out / "eval_report.json").is_file():
            reports[name] = json.loads((out / "eval_report.json").read_text(encoding="utf-8"))
    return evaluate_report(spec.gates, report, parent, label, reports)


def record_gates(runner, spec, model, results: list[dict], system: str | None) -> None:
    """Gate outcomes into the run's ledger and, for a model of this run evaluated as itself, into its own
    ledger, whose card is then regenerated."""
    from posttrain.governance import ledger
    from posttrain.governance.card import write_model_card

    facts = gate_facts(results, model, stage=spec.name, recipe=runner.recipe.name, system=system or "model")
    ledger.append_facts(runner.ledger, facts)
    own = Path(model) / ledger.LEDGER
    if system is None and runner.run_dir.resolve() in Path(model).resolve().parents and own.is_file():
        ledger.append_facts(own, facts)
        write_model_card(model)


def recorded(out: Path) -> list:
    """The gate outcomes a stage's output records (eval_report.json or provenance.json)."""
    for marker in ("eval_report.json", "provenance.json"):
        if (out / marker).is_file():
            return json.loads((out / marker).read_text(encoding="utf-8")).get("gates") or []
    return []


def after_stage(runner, spec, out: Path, ran: bool) -> None:
    """Print a stage's gate outcomes (when it ran), and stop the run on a failed fatal gate (also when skipped:
    a rerun does not slip past a gate that failed before)."""
    from posttrain.console import notice

    if not spec.gates:
        return
    results = recorded(out)
    for r in results if ran else []:
        if r.get("passed"):
            runner._say(f"[{spec.name}] {describe(r)}")
        else:
            notice(f"[{spec.name}] {describe(r)}")
    recipe = runner.recipe
    later = [s.name for s in recipe.stages[recipe.stages.index(spec) + 1:]]
    skipped = [f"stages {', '.join(later)}" if later else "",
               f"releasing {recipe.release['name']}@{recipe.release['version']}" if recipe.release else "",
               f"publishing {recipe.publish['stage']}" if recipe.publish else ""]
    raise_if_fatal(spec.name, results, [x for x in skipped if x])
