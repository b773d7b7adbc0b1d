"""Every stage, by name: the one list that drives the CLI commands, the recipe runner and docs/options.md.

Training stages (stages.base.Stage) are commands of their own (`posttrain sft ...`) and recipe
stages taking `model`, `data` and `config`. Recipe-only stages (world, tokenizer, eval, preferences,
bon) take their options as keys of the stage entry itself.
"""

from __future__ import annotations

from pathlib import Path


def training_stages() -> dict:
    """name -> Stage, in command order."""
    from posttrain.stages.dpo import STAGE as dpo
    from posttrain.stages.grpo import STAGE as grpo
    from posttrain.stages.ppo import STAGE as ppo
    from posttrain.stages.pretrain import STAGE as pretrain
    from posttrain.stages.reward import STAGE as reward
    from posttrain.stages.sft import STAGE as sft

    return {s.name: s for s in sorted((pretrain, sft, reward, dpo, ppo, grpo), key=lambda s: s.order)}


def stage_configs() -> dict[str, type]:
    """Stages whose options are set with --config/--set (a recipe's `config:` section)."""
    return {name: s.config for name, s in training_stages().items()}


def recipe_stage_configs() -> dict[str, type]:
    """Recipe stages whose options are keys of the stage entry itself."""
    from posttrain.bon import BestOfNConfig
    from posttrain.evals.config import EvalConfig
    from posttrain.feedback.config import PreferencesConfig
    from posttrain.stages.tokenizer import TokenizerConfig
    from posttrain.world.build import WorldConfig

    return {"world": WorldConfig, "tokenizer": TokenizerConfig, "eval": EvalConfig, "preferences": PreferencesConfig,
            "bon": BestOfNConfig}


class RecipeStep:
    """How the recipe runner checks and runs one kind of stage."""

    def __init__(self, kind: str, entry_keys: tuple[str, ...], run, trains: bool = False, options: type | None = None,
                 policy: bool = False):
        self.kind, self.entry_keys, self.run, self.trains, self.options = kind, entry_keys, run, trains, options
        self.policy = policy  # its output is the model the following stages start from


def _training_step(stage) -> RecipeStep:
    def run(runner, spec, model, data, out, resume: bool):
        cfg = runner.stage_config(spec, stage.config)
        stage.run(model, data, out, cfg, resume="auto" if resume else False, progress=runner.progress, overwrite=True,
                  ledger=runner.ledger, recipe={"recipe": runner.recipe.name, "name": spec.name}, gates=spec.gates)
    return RecipeStep(stage.name, ("model", "data", "config"), run, trains=True, policy=stage.policy)


def _world(runner, spec, model, data, out, resume):
    from posttrain.governance.ledger import append_facts
    from posttrain.governance.record import world_facts
    from posttrain.world.build import build_world

    o = spec.options
    manifest = build_world(o.seed, out, o.scale, probe_n=o.probe_n, records=o.records)
    append_facts(runner.ledger, world_facts(out, manifest))  # the generated data and its written policies


def _tokenizer(runner, spec, model, data, out, resume):
    from posttrain.stages.tokenizer import train_tokenizer

    o = spec.options
    train_tokenizer(data, out, o.vocab_size, o.min_frequency, split_digits=o.split_digits, overwrite=True)


def _eval(runner, spec, model, data, out, resume):
    from posttrain.evals.runner import run_probes
    from posttrain.governance.record import record_eval
    from posttrain.models import load_model_and_tokenizer

    o = spec.options
    m, tok = load_model_and_tokenizer(model)
    source = str(runner.resolve(o.source)) if o.source else None
    engine, name = None, runner.model_ref
    if o.best_of_n > 1:
        from posttrain.bon import BestOfNEngine
        from posttrain.engine import Engine
        from posttrain.errors import ConfigError
        from posttrain.rewards import load_reward

        if not o.reward:
            raise ConfigError(f"stage '{spec.name}': best_of_n {o.best_of_n} needs `reward` (the model that picks the "
                              f"best answer), e.g. reward: \"@reward\".")
        reward = load_reward(str(runner.resolve(o.reward)) if o.reward.startswith("@") else o.reward)
        engine = BestOfNEngine(Engine(m, tok, batch_size=o.batch_size), reward, o.best_of_n, o.temperature)
        name = f"best-of-{o.best_of_n} of {runner.model_ref} by {o.reward}"
    report = run_probes(m, tok, probes=o.probes, source=source, n=o.n, batch_size=o.batch_size,
                        progress=runner.progress, model_name=name, engine=engine)
    system = None if o.best_of_n == 1 else name
    if spec.gates:  # governance.gate_run: outcomes into the report, then the ledgers and the model's card
        from posttrain.governance.gate_run import eval_gates

        report.header["gates"] = eval_gates(runner, spec, model, report.to_json(), system)
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "eval_report.json")
    # A model of this run also gets the eval in its own ledger, and its card is regenerated with the results;
    # a model outside the run directory (the shipped base) is an input, never written to.
    inside = runner.run_dir.resolve() in Path(model).resolve().parents
    record_eval(out / "eval_report.json", model, run_ledger=runner.ledger, into_model=inside, name=spec.name,
                recipe=runner.recipe.name, system=system)
    if spec.gates:
        from posttrain.governance.gate_run import record_gates

        record_gates(runner, spec, model, report.header["gates"], system)


def _preferences(runner, spec, model, data, out, resume):
    """On-policy pairs: `model` (the current policy) samples the prompts of `data`; writes OUT/preferences.jsonl
    and OUT/preferences.summary.json, for a later stage's `data: "@NAME/preferences.jsonl"`."""
    from posttrain.artifacts import atomic_dir
    from posttrain.feedback.sampling import resolve_label, sample_preferences, write_preferences
    from posttrain.governance.ledger import append_facts
    from posttrain.governance.record import preference_facts

    o = spec.options
    rows, summary = sample_preferences(
        model, data, o.n, resolve_label(o.label, runner.resolve), limit=o.limit, seed=o.seed,
        temperature=o.temperature, max_new_tokens=o.max_new_tokens, margin=o.margin,
        constitution=str(runner.resolve(o.constitution)) if o.constitution else None, progress=runner.progress)
    with atomic_dir(out) as tmp:
        write_preferences(tmp / "preferences.jsonl", rows, summary)
    append_facts(runner.ledger, preference_facts(out / "preferences.jsonl"))


def _bon(runner, spec, model, data, out, resume):
    """Best-of-n from `model` against `reward` on the prompts of `data` (posttrain bon): OUT/bon.json and the curve."""
    import argparse

    from posttrain.commands import bon as command

    o = spec.options
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    reward = str(runner.resolve(o.reward)) if o.reward.startswith("@") else o.reward
    argv = [str(model), "--prompts", str(data), "--reward", reward, "--n", ",".join(map(str, o.n)), "--out", str(out),
            "--overwrite", "--temperature", str(o.temperature), "--max-new-tokens", str(o.max_new_tokens),
            "--seed", str(o.seed)]
    argv += (["--limit", str(o.limit)] if o.limit else []) + ([] if runner.progress else ["--no-progress"])
    command.run(parser.parse_args(argv))


def recipe_steps() -> dict[str, RecipeStep]:
    """Every kind of recipe stage, in order: recipe-only stages, then the training stages."""
    configs = recipe_stage_configs()
    steps = [RecipeStep("world", (), _world, options=configs["world"]),
             RecipeStep("tokenizer", ("data",), _tokenizer, options=configs["tokenizer"])]
    steps += [_training_step(s) for s in training_stages().values()]
    steps.append(RecipeStep("eval", ("model",), _eval, options=configs["eval"]))
    steps.append(RecipeStep("preferences", ("model", "data"), _preferences, options=configs["preferences"]))
    steps.append(RecipeStep("bon", ("model", "data"), _bon, options=configs["bon"]))
    return {s.kind: s for s in steps}


def options_page() -> str:
    """The text of docs/options.md."""
    from posttrain.config import options_markdown

    return options_markdown(stage_configs(), recipe_stage_configs())
