"""Options of on-policy preference sampling: `posttrain preferences sample` and the recipe stage `preferences`."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import opt


@dataclass
class PreferencesConfig:
    """On-policy preference pairs: `model` samples the prompts of `data`, a labeller pairs the answers."""

    n: int = opt(4, "Responses sampled per prompt; pairs are drawn from them.", ge=2)
    label: str = opt("gold", "Who labels the pairs: `gold` (the world's exact judge; rows need `meta`), a reward "
                     "model directory (or `@stage`), `ai:JUDGE_DIR` (an AI judge; `ai:@stage` in a recipe), or "
                     "`module:function`.")
    limit: int | None = opt(None, "Use only the first N prompts (null = all).", ge=1)
    seed: int = opt(0, "Seed of sampling, of the pairs the AI judge compares and of its principles.", ge=0)
    temperature: float = opt(1.0, "Sampling temperature of the policy (0 = greedy: every sample the same).", ge=0)
    max_new_tokens: int = opt(128, "Most tokens per sampled response.", ge=1)
    constitution: str | None = opt(None, "Markdown file of principles for the AI judge, one per list item (null = "
                                   "the built-in world's constitution).")
    margin: float = opt(0.0, "Drop weaker labels: scores whose best - worst <= margin, or AI probabilities with "
                        "abs(p - 0.5) <= margin.", ge=0)
