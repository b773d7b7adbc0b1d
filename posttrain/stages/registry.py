"""Every stage, by name: the one list that drives the CLI commands, the recipe runner and docs/options.md.

Training stages (stages.base.Stage) are commands of their own (`posttrain sft ...`) and recipe
stages taking `model`, `data` and `config`. Recipe-only stages (world, tokenizer, eval) take their
options as keys of the stage entry itself.
"""

from __future__ import annotations


def training_stages() -> dict:
    """name -> Stage, in command order."""
    from posttrain.stages.dpo import STAGE as dpo
    from posttrain.stages.pretrain import STAGE as pretrain
    from posttrain.stages.reward import STAGE as reward
    from posttrain.stages.sft import STAGE as sft

    return {s.name: s for s in sorted((pretrain, sft, reward, dpo), key=lambda s: s.order)}


def stage_configs() -> dict[str, type]:
    """Stages whose options are set with --config/--set (a recipe's `config:` section)."""
    return {name: s.config for name, s in training_stages().items()}


def recipe_stage_configs() -> dict[str, type]:
    """Recipe stages whose options are keys of the stage entry itself."""
    from posttrain.evals.config import EvalConfig
    from posttrain.stages.tokenizer import TokenizerConfig
    from posttrain.world.build import WorldConfig

    return {"world": WorldConfig, "tokenizer": TokenizerConfig, "eval": EvalConfig}


class RecipeStep:
    """How the recipe runner checks and runs one kind of stage."""

    def __init__(self, kind: str, entry_keys: tuple[str, ...], run, trains: bool = False, options: type | None = None,
                 policy: bool = False):
        self.kind, self.entry_keys, self.run, self.trains, self.options = kind, entry_keys, run, trains, options
        self.policy = policy  # its output is the model the following stages start from


def _training_step(stage) -> RecipeStep:
    def run(runner, spec, model, data, out, resume: bool):
        cfg = runner.stage_config(spec, stage.config)
        stage.run(model, data, out, cfg, resume="auto" if resume else False, progress=runner.progress, overwrite=True)
    return RecipeStep(stage.name, ("model", "data", "config"), run, trains=True, policy=stage.policy)


def _world(runner, spec, model, data, out, resume):
    from posttrain.world.build import build_world

    o = spec.options
    build_world(o.seed, out, o.scale, probe_n=o.probe_n)


def _tokenizer(runner, spec, model, data, out, resume):
    from posttrain.stages.tokenizer import train_tokenizer

    o = spec.options
    train_tokenizer(data, out, o.vocab_size, o.min_frequency, overwrite=True)


def _eval(runner, spec, model, data, out, resume):
    from posttrain.evals.runner import run_probes
    from posttrain.models import load_model_and_tokenizer

    o = spec.options
    m, tok = load_model_and_tokenizer(model)
    source = str(runner.resolve(o.source)) if o.source else None
    report = run_probes(m, tok, probes=o.probes, source=source, n=o.n, batch_size=o.batch_size,
                        progress=runner.progress, model_name=runner.model_ref)
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "eval_report.json")


def recipe_steps() -> dict[str, RecipeStep]:
    """Every kind of recipe stage, in order: recipe-only stages, then the training stages."""
    configs = recipe_stage_configs()
    steps = [RecipeStep("world", (), _world, options=configs["world"]),
             RecipeStep("tokenizer", ("data",), _tokenizer, options=configs["tokenizer"])]
    steps += [_training_step(s) for s in training_stages().values()]
    steps.append(RecipeStep("eval", ("model",), _eval, options=configs["eval"]))
    return {s.kind: s for s in steps}


def options_page() -> str:
    """The text of docs/options.md."""
    from posttrain.config import options_markdown

    return options_markdown(stage_configs(), recipe_stage_configs())
