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
