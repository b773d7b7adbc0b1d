"""Named releases: `posttrain release ARTIFACT --name NAME --version V` (and a recipe's `release:`).

A release is allowed only for an artifact whose audit trail holds: its lineage ledger verifies, records
the artifact's own stage run, and the weights on disk still have the hash provenance.json records. It is
refused when NAME@V is taken (a release is never replaced), and when any gate recorded about the model
failed, unless forced with a reason. A release writes, in one transaction of the registry: the registry
row, a `release` entry in the artifact's ledger (with the weights hash, the gate outcome, the force and
the deployment configuration), and then regenerates the artifact's card, which lists its releases.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from posttrain.errors import PosttrainError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
GENERATION = ("max_new_tokens", "temperature", "top_p", "top_k", "stop_strings", "seed")


def check_name(name, version, where: str = "--name ", version_where: str = "--version ") -> None:
    if not isinstance(name, str) or not NAME.match(name) or "//" in name or name.endswith("/"):
        raise PosttrainError(f"{where}{name!r} is not a release name: use letters, digits and . _ - / (no spaces, "
                             f"no @), starting with a letter or digit, e.g. world-assistant.")
    if version is None:
        raise PosttrainError(f"{version_where}is missing: give a version, e.g. 1.0.0.")
    if not isinstance(version, str) or not VERSION.match(version):
        raise PosttrainError(f"{version_where}{version!r} is not a version: use letters, digits and . _ + - (no "
                             f"spaces), starting with a letter or digit, e.g. 1.0.0.")


def generation_settings(values: dict, where: str = "--set") -> dict:
    """Deployment generation settings, checked as the engine's SamplingParams would take them."""
    from posttrain.engine import SamplingParams

    for key, value in values.items():
        if key not in GENERATION:
            raise PosttrainError(f"{where} generation.{key}: unknown generation setting; known: "
                                 f"{', '.join('generation.' + k for k in GENERATION)}.")
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value) if key == "stop_strings" else \
            isinstance(value, int) and not isinstance(value, bool) if key in ("max_new_tokens", "top_k", "seed") else \
            isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        if not ok:
            kind = "a list of strings" if key == "stop_strings" else "an integer" if key in (
                "max_new_tokens", "top_k", "seed") else "a finite number"
            raise PosttrainError(f"{where} generation.{key}={value!r}: must be {kind}.")
    try:
        SamplingParams(**{k: tuple(v) if k == "stop_strings" else v for k, v in values.items()})
    except (PosttrainError, ValueError) as e:
        raise PosttrainError(f"{where} generation: {e}") from None
    return dict(values)


def parse_sets(items: list[str]) -> dict:
    """--set generation.KEY=VALUE pairs (values as YAML) -> {KEY: value}."""
    import yaml

    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.startswith("generation.") or key == "generation.":
            raise PosttrainError(f"--set expects generation.KEY=VALUE (a deployment generation setting, e.g. "
                                 f"--set generation.temperature=0.7), got {item!r}.")
        try:
            out[key.removeprefix("generation.")] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PosttrainError(f"--set {item!r}: the value is not valid YAML.") from None
    return generation_settings(out)


def check_artifact(path) -> tuple[Path, dict, list[dict]]:
    """(artifact directory, provenance, ledger entries) of a releasable artifact; an error naming what is wrong."""
    from posttrain.artifacts import read_provenance
    from posttrain.governance import ledger
    from posttrain.governance.audit import artifact_problems
    from posttrain.outputs import resolved

    d = resolved(path, "ARTIFACT")
    if not d.is_dir() or not (d / "provenance.json").is_file():
        raise PosttrainError(f"{path} is not an artifact: it holds no provenance.json. Give an artifact directory "
                             f"written by a posttrain stage (e.g. runs/demo/sft).")
    prov = read_provenance(d) or {}
    own = d / ledger.LEDGER
    if not own.is_file():
        raise PosttrainError(f"{path} has no lineage ledger ({ledger.LEDGER}): its history cannot be shown, so it is "
                             f"not released. Retrain it with this version of posttrain to get one.")
    problems = ledger.verify(own)
    entries = ledger.read(own, strict=False)
    problems += artifact_problems(d, entries)
    if problems:
        raise PosttrainError(f"{path}: its audit trail does not hold ({problems[0]}{'; ...' if len(problems) > 1 else ''}), "
                             f"so it is not released. Restore its ledger.jsonl and weights from a copy; `posttrain "
                             f"audit verify {path}` lists every problem.")
    return d, prov, entries


def gate_summary(prov: dict, entries: list[dict]) -> dict:
    from posttrain.governance.gate_run import latest
    from posttrain.governance.gates import describe

    gates = latest(entries, prov["artifact_id"], prov["weights_sha256"])
    bad = [g for g in gates if not g.get("passed")]
    return {"outcome": "none" if not gates else "failed" if bad else "passed", "total": len(gates),
            "passed": len(gates) - len(bad),
            "failed": [f"{g.get('stage')}: {describe({**g, 'name': g.get('gate')})}" for g in bad]}


def release(artifact, name: str, version: str, *, registry: Path, force: bool = False, reason: str | None = None,
            system_prompt: str | None = None, generation: dict | None = None, run_ledger=None,
            say=print) -> dict:
    """Record NAME@VERSION of `artifact` in the registry and its ledger; return the registry row."""
    from posttrain.console import notice
    from posttrain.governance import ledger, registry as reg
    from posttrain.governance.card import write_model_card

    check_name(name, version)
    if force and not (reason or "").strip():
        raise PosttrainError("--force needs --reason TEXT: why this artifact is released despite its failed gates "
                             "(the reason is recorded with the release).")
    if reason and not force:
        raise PosttrainError("--reason explains a --force; without --force there is nothing to explain. Drop --reason, "
                             "or add --force if the artifact has failed gates.")
    if registry.exists():  # a bad registry or a taken name is said before anything about the artifact
        with reg.reading(registry) as conn:
            _refuse_taken(conn, registry, name, version)
    d, prov, entries = check_artifact(artifact)
    gates = gate_summary(prov, entries)
    if gates["outcome"] == "failed" and not force:
        raise PosttrainError(f"{artifact} failed {len(gates['failed'])} of its {gates['total']} release gates: "
                             f"{'; '.join(gates['failed'])}. It is not released. Improve the model and evaluate it "
                             f"again, or pass --force --reason TEXT to release it anyway (in a recipe: force: true and "
                             f"reason on its release); the force and the reason are recorded in the registry, the "
                             f"ledger and the card.")
    overrides = bool(force and gates["outcome"] == "failed")  # a force is recorded only where it overrode a gate
    deployment = {"system_prompt": system_prompt, "generation": generation or {}}
    row = {"name": name, "version": version, "artifact_id": prov["artifact_id"],
           "weights_sha256": prov["weights_sha256"], "artifact_path": str(d),
           "released_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "gate_outcome": gates["outcome"],
           "gates": gates, "forced": overrides,
           "reason": reason if overrides else None, "deployment": deployment}
    with reg.writing(registry) as conn:
        _refuse_taken(conn, registry, name, version)  # again, inside the transaction: no two writers get the same name
        before = reg.find(conn, name)
        fact = {"kind": "release", **{k: row[k] for k in ("name", "version", "artifact_id", "weights_sha256",
                                                           "released_utc", "gate_outcome", "gates", "forced",
                                                           "reason", "deployment")},
                "registry": str(registry)}
        entry = ledger.append_facts(d / ledger.LEDGER, [fact])[0]
        row["ledger_entry_sha256"] = entry["sha256"]
        reg.insert(conn, row)
    if run_ledger is not None:
        ledger.append_facts(run_ledger, [fact])
    write_model_card(d)
    if before and before["weights_sha256"] != row["weights_sha256"]:
        notice(f"{name}@{before['version']} (the latest before) is weights sha256 {before['weights_sha256'][:16]}; "
               f"{name}@{version} is weights sha256 {row['weights_sha256'][:16]}: a different model under the same name")
    if overrides:
        notice(f"released despite {len(gates['failed'])} failed gate(s), forced: {reason}")
    elif force:
        notice("--force had nothing to override (no gate failed): the release is recorded as not forced")
    elif gates["outcome"] == "none":
        notice(f"{artifact} has no recorded release gates (declare `gates:` on the recipe's eval stages)")
    say(f"released {name}@{version}: {prov['artifact_id']} (weights sha256 {prov['weights_sha256']}), gates "
        f"{gates['outcome']}" + (f" ({gates['passed']} of {gates['total']} passed)" if gates["total"] else "") +
        f"; registry {registry}")
    return row


def _refuse_taken(conn, registry, name: str, version: str) -> None:
    from posttrain.governance import registry as reg

    taken = reg.find(conn, name, version)
    if taken:
        latest = reg.find(conn, name)
        raise PosttrainError(f"{name}@{version} is already released in {registry} (artifact {taken['artifact_id']}, "
                             f"weights sha256 {taken['weights_sha256'][:16]}, {taken['released_utc']}). A release is "
                             f"never replaced: give a new --version (the latest of {name} is {latest['version']}).")


# ---------------------------------------------------------------- a recipe's `release:`

RECIPE_KEYS = ("stage", "name", "version", "registry", "system_prompt", "generation", "force", "reason")


def check_recipe_release(path, value, stages: dict) -> dict:
    """A recipe's `release:` mapping, checked at load: stages maps stage name -> whether it writes an artifact."""
    from posttrain.recipes import _unknown_key

    where = f"recipe '{path}', release"
    if not isinstance(value, dict):
        raise PosttrainError(f"{where}: needs a mapping with 'stage', 'name' and 'version', e.g. release: {{stage: sft, "
                             f"name: world-assistant, version: '1.0'}}.")
    for key in value:
        if key not in RECIPE_KEYS:
            raise _unknown_key(where, key, RECIPE_KEYS)
    if not stages.get(value.get("stage")):
        names = ", ".join(k for k, v in stages.items() if v) or "none"
        raise PosttrainError(f"{where}: 'stage' must name a training stage of the recipe (its artifact is released; "
                             f"these write one: {names}), got {value.get('stage')!r}.")
    version = value.get("version")
    check_name(value.get("name"), str(version) if isinstance(version, (str, int, float)) else version,
               where=f"{where}: 'name' ", version_where=f"{where}: 'version' ")
    for key in ("system_prompt", "registry", "reason"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise PosttrainError(f"{where}: '{key}' must be a string, got {value[key]!r}.")
    if not isinstance(value.get("force", False), bool):
        raise PosttrainError(f"{where}: 'force' must be true or false, got {value['force']!r}.")
    if value.get("force") and not (value.get("reason") or "").strip():
        raise PosttrainError(f"{where}: 'force: true' needs 'reason' (why the model is released despite failed gates).")
    if value.get("reason") and not value.get("force"):
        raise PosttrainError(f"{where}: 'reason' explains 'force: true'; without it there is nothing to explain.")
    gen = value.get("generation") or {}
    if not isinstance(gen, dict):
        raise PosttrainError(f"{where}: 'generation' must be a mapping of settings, e.g. {{temperature: 0.7}}.")
    generation_settings(gen, where=f"{where}:")
    return {**value, "version": str(value["version"])}


def card_section(prov: dict, entries: list[dict]) -> list[str]:
    releases = [e for e in entries if e["kind"] == "release" and e.get("artifact_id") == prov["artifact_id"]]
    if not releases:
        return []
    out = ["## Releases", "", "Named releases of these weights (the weights hash tells apart two models released "
           "under one name):", "", "| release | released | weights sha256 | gates | forced | deployment |",
           "|---|---|---|---|---|---|"]
    for e in releases:
        dep = e.get("deployment") or {}
        shown = "; ".join(x for x in (f"system prompt: {json.dumps(dep['system_prompt'])}" if dep.get("system_prompt")
                                      else "", f"generation: {json.dumps(dep.get('generation'), sort_keys=True)}"
                                      if dep.get("generation") else "") if x) or "defaults"
        forced = f"yes: {e.get('reason')}" if e.get("forced") else "no"
        out.append(f"| `{e['name']}@{e['version']}` | {e.get('released_utc')} | `{e['weights_sha256']}` | "
                   f"{e.get('gate_outcome')} | {forced} | {shown.replace('|', '/')} |")
    return out


def _run_registry(runner) -> Path:
    from posttrain.governance.registry import registry_path

    value = runner.recipe.release.get("registry")
    return runner.resolve(value) if value else registry_path(None)


def check_run_release(runner) -> None:
    """Before any work: refuse a recipe release whose name@version is taken by a release this run did not make."""
    from posttrain.governance import registry as reg

    r, path = runner.recipe.release, _run_registry(runner)
    if not path.exists():
        return
    with reg.reading(path) as conn:
        taken = reg.find(conn, r["name"], r["version"])
    mine = runner.state.get("released") or {}
    if taken and (mine.get("name"), mine.get("version"), mine.get("weights_sha256")) != (
            r["name"], r["version"], taken["weights_sha256"]):
        raise PosttrainError(f"recipe '{runner.recipe.path}', release: {r['name']}@{r['version']} is already released in "
                             f"{path} (artifact {taken['artifact_id']}, {taken['released_utc']}), not by this run. A "
                             f"release is never replaced: give the recipe's release a new version.")


def run_release(runner) -> dict | None:
    """A recipe's release of a stage's output, after its stages and before its publication (so that a published
    copy carries the release). Rerunning an unchanged recipe does not release again."""
    from posttrain.artifacts import read_provenance
    from posttrain.governance import registry as reg

    r, path = runner.recipe.release, _run_registry(runner)
    artifact = runner.outputs[r["stage"]]
    prov = read_provenance(artifact) or {}
    if path.exists():
        with reg.reading(path) as conn:
            taken = reg.find(conn, r["name"], r["version"])
        if taken and taken["weights_sha256"] == prov.get("weights_sha256"):
            runner._say(f"{r['name']}@{r['version']} is already released ({taken['artifact_id']}): nothing to do")
            return None
        if taken:
            raise PosttrainError(f"recipe '{runner.recipe.path}', release: {r['name']}@{r['version']} was released by an "
                                 f"earlier run of this recipe with other weights ({taken['weights_sha256'][:16]}; stage "
                                 f"'{r['stage']}' has changed since). Give the recipe's release a new version.")
    row = release(artifact, r["name"], r["version"], registry=path, force=r.get("force", False), reason=r.get("reason"),
                  system_prompt=r.get("system_prompt"), generation=r.get("generation") or {},
                  run_ledger=runner.ledger, say=runner._say)
    runner.state["released"] = {k: row[k] for k in ("name", "version", "weights_sha256")}
    runner._save_state()
    return row
