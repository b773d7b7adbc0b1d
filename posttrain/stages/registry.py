"""Every stage's config class, by stage name: the source of docs/options.md and of recipe validation."""

from __future__ import annotations


def stage_configs() -> dict[str, type]:
    from posttrain.stages.pretrain import PretrainConfig
    from posttrain.stages.sft import SFTConfig

    return {"pretrain": PretrainConfig, "sft": SFTConfig}
