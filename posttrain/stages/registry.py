"""Every stage's config class, by stage name: the source of docs/options.md and of recipe validation."""

from __future__ import annotations


def stage_configs() -> dict[str, type]:
    """Stages whose options are set with --config/--set (a recipe's `config:` section)."""
    from posttrain.stages.pretrain import PretrainConfig
    from posttrain.stages.sft import SFTConfig

    return {"pretrain": PretrainConfig, "sft": SFTConfig}


def recipe_stage_configs() -> dict[str, type]:
    """Recipe stages whose options are keys of the stage entry itself."""
    from posttrain.evals.config import EvalConfig
    from posttrain.stages.tokenizer import TokenizerConfig
    from posttrain.world.build import WorldConfig

    return {"world": WorldConfig, "tokenizer": TokenizerConfig, "eval": EvalConfig}


def options_page() -> str:
    """The text of docs/options.md."""
    from posttrain.config import options_markdown

    return options_markdown(stage_configs(), recipe_stage_configs())
