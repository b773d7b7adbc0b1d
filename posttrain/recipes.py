"""Recipes: a YAML list of stages that `posttrain run` executes in order.

    name: demo
    base: ../models/base            # the first model (relative to this file)
    stages:
      - {name: world, stage: world, seed: 0}
      - {name: sft, stage: sft, data: "@world/sft.jsonl", config: {train: {max_steps: 300}}}
      - {name: eval_sft, stage: eval, probes: [instruction_following]}
    quick:                          # merged into stages by `posttrain run --quick`
      sft: {config: {train: {max_steps: 40}}}
    publish: {stage: sft, to: ../models/sft}   # optional: copy a stage's output there at the end
    release: {stage: sft, name: world-assistant, version: "1.0"}   # optional: a named release (governance)
    gates: {fatal: false}           # optional: stages' gates are reported, not fatal (default: fatal)

Each stage writes RUN_DIR/<name>. A stage's model defaults to the output of the
last policy-producing stage before it (or `base`; a reward model is not a policy); `@name/sub/path` refers to a
stage's output. A stage whose fingerprint (kind, options, inputs) matches the one
recorded when it last finished is skipped; an interrupted training stage resumes
from its checkpoint when rerun with the same fingerprint. A stage's `gates:` (governance.gates) are
checked after it; a failed fatal gate stops the run, so nothing is published or released.

The runner replaces only what it wrote: a stage folder it did not start, a run directory
that is not one, or a `publish.to` target that is not its unmodified last publication is
left alone unless `overwrite` (`posttrain run --overwrite`); see docs/safety.md.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from posttrain.artifacts import sha256_path, write_json_atomic
from posttrain.config import from_dict, load_config, read_yaml_mapping
from posttrain.errors import ConfigError, OutputError, PosttrainError
from posttrain.governance.gate_run import after_stage, recipe_default_fatal, stage_gates
from posttrain.governance.ledger import LEDGER
from posttrain.outputs import check_output, clean_stale_temporaries, describe, refuse_protected

STATE = "recipe_state.json"
TOP_KEYS = ("name", "base", "stages", "quick", "publish", "release", "gates")


def _steps():
    """Every stage kind a recipe may use (stages.registry): its entry keys, options and how it runs."""
    from posttrain.stages.registry import recipe_steps

    return recipe_steps()


@dataclass
class StageSpec:
    name: str
    kind: str
    raw: dict  # the stage entry as written
    options: Any = None  # world/tokenizer/eval: its typed options (pretrain/sft: loaded with references resolved)
    gates: list = field(default_factory=list)  # governance.gates.Gate: checked after the stage


@dataclass
class Recipe:
    name: str
    path: Path
    base: str | None
    stages: list[StageSpec]
    publish: dict | None = None
    release: dict | None = None


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _unknown_key(where: str, key, allowed) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'.{hint} Allowed here: {', '.join(allowed)}.")


def check_stage(path: Path, name: str, kind: str, entry: dict, has_model: bool):
    """Check one stage entry's keys and values before anything runs; return its typed options.

    world/tokenizer/eval: their options class (stages.registry.recipe_stage_configs) from the entry's keys;
    training stages: the stage config from `config:` (references stay unresolved strings until the stage runs).
    """
    from posttrain.stages.registry import stage_configs

    where = f"recipe '{path}', stage '{name}' ({kind})"
    step = _steps()[kind]
    cls = step.options
    option_keys = [f.name for f in fields(cls)] if cls else []
    allowed = ["name", "stage", *step.entry_keys, *option_keys, *(["gates"] if kind == "eval" or step.trains else [])]
    for key in entry:
        if key not in allowed:
            raise _unknown_key(where, key, allowed)
    for key in ("model", "data"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}: '{key}' must be a path (a string), got {entry[key]!r}.")
    if "data" in step.entry_keys and "data" not in entry:
        raise ConfigError(f"{where}: needs 'data' (a data file, or @STAGE/file for an earlier stage's output).")
    if "model" in step.entry_keys and not (has_model or entry.get("model")):
        raise ConfigError(f"stage '{name}' needs a model: set 'model' on it or 'base' on the recipe ({path}).")
    if not isinstance(entry.get("config", {}), dict):
        raise ConfigError(f"{where}: 'config' must be a mapping of options (docs/options.md), got {entry['config']!r}.")
    try:
        if cls is None:
            return load_config(stage_configs()[kind], overrides=_flatten(entry.get("config") or {}), stage=kind)
        options = from_dict(cls, {k: entry[k] for k in option_keys if k in entry})
        if kind == "eval" and options.probes:
            from posttrain.evals.probe import get_probes

            get_probes(options.probes)
        return options
    except PosttrainError as e:
        raise ConfigError(f"{where}: {'config: ' if cls is None else ''}{e}") from e


def load_recipe(path: str | Path, quick: bool = False) -> Recipe:
    path = Path(path)
    data = read_yaml_mapping(path, "recipe", "a mapping with a non-empty 'stages' list")
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown_key(f"recipe '{path}'", key, TOP_KEYS)
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"recipe '{path}' needs a non-empty 'stages' list.")
    quick_over = data.get("quick") or {}
    if not isinstance(quick_over, dict) or not all(isinstance(v, dict) for v in quick_over.values()):
        raise ConfigError(f"recipe '{path}': 'quick' must map stage names to options, "
                          f"e.g. quick: {{sft: {{config: ...}}}}.")
    stages, seen, steps = [], set(), _steps()
    default_fatal = recipe_default_fatal(path, data.get("gates"))
    kinds = ", ".join(steps)
    has_model = data.get("base") is not None
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"recipe '{path}', stage {i + 1}: needs a 'stage' key (one of {kinds}).")
        kind = entry["stage"]
        if kind not in steps:
            raise ConfigError(f"recipe '{path}', stage {i + 1}: unknown stage '{kind}'; choose one of {kinds}.")
        name = entry.get("name", kind)
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(f"recipe '{path}', stage {i + 1}: name {name!r} must be a plain folder name (no '/').")
        if name in seen:
            raise ConfigError(f"recipe '{path}': two stages are named '{name}'; give each a unique name.")
        seen.add(name)
        quick_entry = _merge(entry, quick_over[name]) if name in quick_over else entry
        options = check_stage(path, name, kind, quick_entry, has_model)
        if quick_entry is not entry:  # a typo in 'quick' must not wait for a --quick run
            plain = check_stage(path, name, kind, entry, has_model)
            entry, options = (quick_entry, options) if quick else (entry, plain)
        has_model = has_model or steps[kind].policy
        earlier = [s.name for s in stages]
        for ref in _refs(entry):  # a typo in the last stage must not wait for the first ones to finish
            if ref[1:].partition("/")[0] not in earlier:
                raise ConfigError(f"recipe '{path}', stage '{name}': reference '{ref}' names no earlier stage "
                                  f"(earlier: {', '.join(earlier) or 'none'}).")
        stages.append(StageSpec(name, kind, entry, None if steps[kind].trains else options,
                                stage_gates(path, name, kind, entry, options, stages, default_fatal)))
    unknown = set(quick_over) - seen
    if unknown:
        raise ConfigError(f"recipe '{path}': 'quick' names unknown stages: {', '.join(sorted(unknown))}.")
    publish = data.get("publish")
    if publish is not None and (not isinstance(publish, dict) or publish.get("stage") not in seen
                                or not isinstance(publish.get("to"), str) or not publish["to"]):
        raise ConfigError(f"recipe '{path}': 'publish' needs 'stage' (a stage name) and 'to' (a path).")
    for key in publish or {}:
        if key not in ("stage", "to"):
            raise _unknown_key(f"recipe '{path}', publish", key, ("stage", "to"))
    release = None
    if data.get("release") is not None:
        from posttrain.governance.release import check_recipe_release

        release = check_recipe_release(path, data["release"], {s.name: steps[s.kind].trains for s in stages})
    if quick:
        publish = release = None  # a smoke run never overwrites a published artifact, nor releases one
    return Recipe(data.get("name", path.stem), path, data.get("base"), stages, publish, release)


def tree_stamp(path: Path) -> str | None:
    """Cheap fingerprint of a folder (names, sizes, modification times): changes when anyone edits it."""
    if not path.is_dir():
        return None
    items = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


class Runner:
    def __init__(self, recipe: Recipe, run_dir: str | Path, progress: bool = True, overwrite: bool = False):
        self.recipe, self.run_dir, self.progress, self.overwrite = recipe, Path(run_dir), progress, overwrite
        refuse_protected(self.run_dir)
        found = describe(self.run_dir)
        if found and not (self.run_dir / STATE).is_file() and not overwrite:
            raise OutputError(f"--out {self.run_dir} {found}, and is not a run directory of `posttrain run` (no {STATE}); "
                              f"the recipe would write its stage folders into it. Choose a new --out, or pass --overwrite "
                              f"to use it anyway (only the recipe's stage folders are replaced).")
        self.state_path = self.run_dir / STATE
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"done": {}, "started": {}}
        self.ledger = self.run_dir / LEDGER  # the run's audit trail (governance.ledger): every stage appends to it
        self.fingerprints: dict[str, str] = {}
        self.outputs: dict[str, Path] = {}
        self.reused: list[str] = []  # stages this run skipped as unchanged or resumed: not all their work ran now

    # -------------------------------------------------------------- references

    def resolve(self, ref: str) -> Path:
        if ref.startswith("@"):
            name, _, sub = ref[1:].partition("/")
            if name == "run" and name not in self.outputs:  # @run/...: a path inside the run directory
                return self.run_dir / sub if sub else self.run_dir
            if name not in self.outputs:
                raise ConfigError(f"reference '{ref}' names no earlier stage (earlier: {', '.join(self.outputs) or 'none'}).")
            return self.outputs[name] / sub if sub else self.outputs[name]
        p = Path(ref)
        return p if p.is_absolute() else (self.recipe.path.parent / p).resolve()

    def _input_fingerprint(self, ref: str) -> str:
        if ref.startswith("@"):
            name = ref[1:].partition("/")[0]
            return f"{ref}:{self.fingerprints.get(name)}"
        return f"{ref}:{sha256_path(self.resolve(ref))}"

    # -------------------------------------------------------------- running

    def run(self) -> dict[str, Path]:
        from posttrain.world import build as world_build

        current_model = self.recipe.base
        if self.recipe.publish:  # a refused target is reported before hours of training, not after
            self._check_publish(self.recipe.publish)
        if self.recipe.release:
            from posttrain.governance.release import check_run_release

            check_run_release(self)
        self._check_ledger()
        self.run_dir.mkdir(parents=True, exist_ok=True)  # only once the checks passed: a refused run writes nothing
        for spec in self.recipe.stages:
            model_ref = spec.raw.get("model", current_model)
            fp_inputs = {"stage": spec.raw, "model": self._input_fingerprint(model_ref) if model_ref and spec.kind not in ("world", "tokenizer") else None}
            if "data" in spec.raw:
                fp_inputs["data"] = self._input_fingerprint(spec.raw["data"])
            if spec.kind in ("world", "eval"):  # data the world generator writes (an eval's probes, by default):
                fp_inputs["generator"] = world_build.WORLD_VERSION  # a new generator's world is a new input
            other_refs = sorted(set(_refs(spec.raw)) - {model_ref, spec.raw.get("data")})
            if other_refs:  # e.g. an eval `source` or a `replay_data` inside config
                fp_inputs["refs"] = [self._input_fingerprint(r) for r in other_refs]
            fp = hashlib.sha256(json.dumps(fp_inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
            self.fingerprints[spec.name] = fp
            out = self.run_dir / spec.name
            self.outputs[spec.name] = out
            skipped = self.state["done"].get(spec.name) == fp and out.exists()
            if skipped:
                self._say(f"[{spec.name}] unchanged since its last run: skipped")
                self.reused.append(spec.name)
            else:
                resume = self.state["started"].get(spec.name) == fp
                if resume:
                    self.reused.append(spec.name)
                if spec.name not in self.state["started"] and describe(out) and not self.overwrite:
                    raise OutputError(f"{out} {describe(out)}, but this run did not write it (it is not in {self.state_path}); "
                                      f"stage '{spec.name}' would replace it. Move it away, or pass --overwrite.")
                if not resume:
                    shutil.rmtree(out.parent / f"{out.name}.checkpoints", ignore_errors=True)
                self.state["started"][spec.name] = fp
                self._save_state()
                t0 = time.perf_counter()
                self._say(f"[{spec.name}] running stage '{spec.kind}'" + (" (resuming)" if resume else ""))
                self._run_stage(spec, model_ref, out, resume)
                self.state["done"][spec.name] = fp
                self._save_state()
                self._say(f"[{spec.name}] done in {time.perf_counter() - t0:.1f}s")
            after_stage(self, spec, out, ran=not skipped)  # a failed fatal gate stops the run here
            if _steps()[spec.kind].policy:
                current_model = f"@{spec.name}"
        if self.recipe.release:  # before publishing: a published copy carries the release in its ledger and card
            from posttrain.governance.release import run_release

            run_release(self)
        if self.recipe.publish:
            self._publish(self.recipe.publish)
        return self.outputs

    def _check_ledger(self) -> None:
        """Refuse to add to a run ledger that fails verification: its trail would no longer prove anything."""
        from posttrain.governance.ledger import LedgerError, verify

        problems = verify(self.ledger) if self.ledger.is_file() else []
        if problems:
            raise LedgerError(f"{self.ledger}: the run's ledger fails verification ({len(problems)} problem"
                              f"{'s' * (len(problems) > 1)}: {'; '.join(problems[:3])}). Restore it from a copy (each "
                              f"artifact's ledger.jsonl holds its lineage), or move it away to start a new trail; "
                              f"`posttrain audit verify {self.ledger}` lists every problem.")

    def _inputs(self) -> dict:
        """Paths the recipe reads or writes that a publish target must stay clear of."""
        inputs = {"the recipe": self.recipe.path, "the run directory (--out)": self.run_dir}
        if self.recipe.base and not self.recipe.base.startswith("@"):
            inputs["base"] = self.resolve(self.recipe.base)
        for spec in self.recipe.stages:
            values = {k: spec.raw.get(k) for k in ("model", "data", "source")}
            values.update({k: v for k, v in _flatten(spec.raw.get("config") or {}).items()
                           if k.rsplit(".", 1)[-1] in ("eval_data", "replay_data", "chat_template")})
            for key, value in values.items():
                if isinstance(value, str) and not value.startswith("@") and value not in ("auto", "own", "default"):
                    inputs[f"stage '{spec.name}' {key}"] = self.resolve(value)
        return inputs

    def _publish_may_replace(self, publish: dict, dest: Path) -> bool:
        """Replace `dest` only when asked, or when it is this run's own unmodified last publication."""
        mine = self.state.get("published") or {}
        return self.overwrite or (mine.get("to") == publish["to"] and mine.get("stamp") == tree_stamp(dest))

    def _check_publish(self, publish: dict) -> Path:
        dest = self.resolve(publish["to"])
        src = self.run_dir / publish["stage"]
        same = dest.is_dir() and tree_stamp(dest) == tree_stamp(src)
        clean_stale_temporaries(dest.parent, dest.name)
        return check_output(dest, inputs=self._inputs(), overwrite=same or self._publish_may_replace(publish, dest),
                            option=f"publish.to ({self.recipe.path})")

    def _publish(self, publish: dict) -> None:
        from posttrain.artifacts import atomic_dir

        src, dest = self.outputs[publish["stage"]], self.resolve(publish["to"])
        if dest.is_dir() and tree_stamp(dest) == tree_stamp(src):
            self._say(f"{publish['stage']} is already published to {dest} (identical): nothing to copy")
            return
        self._check_publish(publish)
        with atomic_dir(dest) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        self.state["published"] = {"to": publish["to"], "stamp": tree_stamp(dest)}
        self._save_state()
        self._say(f"published {publish['stage']} to {dest}")

    def _save_state(self):
        write_json_atomic(self.state_path, self.state)

    def _say(self, msg: str):
        if self.progress:
            print(msg, flush=True)

    def stage_config(self, spec: StageSpec, cls):
        """A training stage's options from its `config:`, with @stage references resolved to paths."""
        options = {k: str(self.resolve(v)) if isinstance(v, str) and v.startswith("@") else v
                   for k, v in _flatten(spec.raw.get("config") or {}).items()}
        return load_config(cls, overrides=options, stage=spec.kind)

    def _run_stage(self, spec: StageSpec, model_ref, out: Path, resume: bool) -> None:
        step = _steps()[spec.kind]
        if "model" in step.entry_keys and model_ref is None:
            raise ConfigError(f"stage '{spec.name}' needs a model: set 'model' on it or 'base' on the recipe.")
        model = self.resolve(model_ref) if "model" in step.entry_keys else None
        self.model_ref = str(model_ref)  # as the recipe names it (reports say "@sft", not a path)
        data = self.resolve(spec.raw["data"]) if "data" in spec.raw else None
        step.run(self, spec, model, data, out, resume)


def _refs(value) -> list[str]:
    """Every `@stage/...` reference in a stage entry, nested options included; also one behind a `kind:` prefix
    (a preferences label `ai:@judge`), so that it is checked and fingerprinted like the others."""
    if isinstance(value, str):
        prefixed = re.match(r"^\w+:(@.*)$", value)
        return [value] if value.startswith("@") else [prefixed.group(1)] if prefixed else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
