"""Options of an evaluation run as a recipe's `eval` stage gives them (the CLI: `posttrain eval --help`)."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import opt


@dataclass
class EvalConfig:
    """Probes on a model (a recipe's `eval` stage, which also takes `model`); writes eval_report.json."""

    probes: list[str] | None = opt(None, "Probe names to run, in order (null = every registered probe).")
    n: int | None = opt(None, "At most N prompts per probe set (null = all).", ge=1)
    source: str | None = opt(None, "World directory the probe sets come from, e.g. `@world` (null = the built-in world, seed 0).")
    batch_size: int = opt(64, "Prompts per generation batch.", ge=1)
    best_of_n: int = opt(1, "Answer each chat prompt with the best of this many samples by `reward` (1 = the model's own greedy answer).", ge=1)
    reward: str | None = opt(None, "The reward that picks the best of n: a reward model directory (`@stage` in a recipe) or module:function.")
    temperature: float = opt(1.0, "Sampling temperature of the n samples when best_of_n > 1.", gt=0)
