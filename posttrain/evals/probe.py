"""The probe abstraction: a versioned, named measurement over a set of prompts.

A probe says which rows it reads, how to generate for them (chat or raw text,
with which sampling settings) and how to score the completions. The runner
batches every prompt of a probe into one engine call. Adding a probe:

    from posttrain.evals.probe import Probe, register_probe, proportion_result

    register_probe(Probe(
        name="capitals", version="1", description="accuracy on facts B",
        metric="accuracy", probe_set="knowledge_exposure",
        score=lambda rows, comps, ctx: proportion_result(
            "accuracy", [ctx.judge(r["meta"], c.text).correct for r, c in zip(rows, comps)]),
    ))

Bump `version` whenever the prompts, generation settings or scoring change, so
reports with different versions are never compared as if they were the same test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.evals.stats import mean_interval, wilson_interval
from posttrain.grading.judge import judge as gold_judge
from posttrain.grading.refusal import REFUSAL_CLASSIFIERS


@dataclass
class Metric:
    """One number with its 95% confidence interval (None where it has none, e.g. n == 0)."""

    name: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0

    def to_json(self) -> dict:
        ci = None if self.ci_low is None else [self.ci_low, self.ci_high]
        return {"value": self.value, "ci95": ci, "n": self.n}


@dataclass
class ProbeResult:
    """A probe's headline metric, any secondary metrics, and one record per sample."""

    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    per_sample: list[dict] = field(default_factory=list)
    secondary: list[Metric] = field(default_factory=list)

    @property
    def primary(self) -> Metric:
        return Metric(self.metric, self.value, self.ci_low, self.ci_high, self.n)


def proportion(name: str, flags: list[bool]) -> Metric:
    """The fraction of True flags, with a Wilson interval."""
    k, n = sum(bool(f) for f in flags), len(flags)
    ci = wilson_interval(k, n)
    return Metric(name, k / n if n else None, *(ci or (None, None)), n=n)


def mean(name: str, values: list[float], bounds: tuple[float, float] | None = None) -> Metric:
    """The mean of values, with a normal-approximation interval (clipped to `bounds` if given)."""
    n = len(values)
    ci = mean_interval(values)
    if ci is not None and bounds is not None:
        ci = (max(bounds[0], ci[0]), min(bounds[1], ci[1]))
    return Metric(name, sum(values) / n if n else None, *(ci or (None, None)), n=n)


def result_from(primary: Metric, per_sample: list[dict] | None = None, secondary: list[Metric] | None = None) -> ProbeResult:
    return ProbeResult(primary.name, primary.value, primary.ci_low, primary.ci_high, primary.n,
                       per_sample or [], secondary or [])


def proportion_result(name: str, flags: list[bool], per_sample: list[dict] | None = None) -> ProbeResult:
    """A ProbeResult whose headline is a proportion; per-sample records default to {name: flag}."""
    if per_sample is None:
        per_sample = [{name: bool(f)} for f in flags]
    return result_from(proportion(name, flags), per_sample)


@dataclass
class ProbeContext:
    """What a probe's scorer may use besides its rows and completions."""

    tokenizer: Any
    refusal_classifier: str = "xstest"
    facts_loader: Callable[[], list] | None = None

    @staticmethod
    def judge(meta: dict, response: str, first_response: str | None = None):
        """The world's gold judge (exact, programmatic)."""
        return gold_judge(meta, response, first_response=first_response)

    def is_refusal(self, text: str) -> bool:
        return self._refusal_fn()(text)

    def _refusal_fn(self) -> Callable[[str], bool]:
        if self.refusal_classifier not in REFUSAL_CLASSIFIERS:
            raise PosttrainError(
                f"unknown refusal classifier '{self.refusal_classifier}'; "
                f"choose one of: {', '.join(REFUSAL_CLASSIFIERS)}."
            )
        return REFUSAL_CLASSIFIERS[self.refusal_classifier]

    @functools.cached_property
    def facts(self) -> list:
        if self.facts_loader is None:
            from posttrain.evals.sources import builtin_facts

            return builtin_facts()
        return self.facts_loader()


def _default_generate(probe: "Probe", engine, rows: list[dict]) -> list:
    """One batched engine call: chat rows through the chat template, raw rows as plain text."""
    if probe.chat:
        return engine.chat([r["messages"] for r in rows], probe.sampling())
    return engine.generate([r["prompt"] for r in rows], probe.sampling())


@dataclass
class Probe:
    """A named, versioned measurement. See the module docstring for how to add one.

    Rows come from `load(source, n)` (default: the probe set `probe_set` of the world),
    completions from `generate(probe, engine, rows)` (default: one batched chat or raw
    call with `params`), and the result from `score(rows, completions, ctx)`.
    """

    name: str
    version: str
    description: str
    metric: str
    score: Callable[[list[dict], list, ProbeContext], ProbeResult]
    probe_set: str | None = None
    chat: bool = True
    params: dict = field(default_factory=lambda: {"max_new_tokens": 48})
    load: Callable[[Any, int | None], list[dict]] | None = None
    generate: Callable[["Probe", Any, list[dict]], list] = _default_generate
    higher_is_better: bool | None = True
    secondary: tuple[str, ...] = ()  # the names of its secondary metrics: a recipe's gates are checked against them

    def sampling(self):
        """The engine's SamplingParams for this probe (greedy unless `params` says otherwise)."""
        from posttrain.engine import SamplingParams

        return SamplingParams(**self.params)

    def rows(self, source, n: int | None) -> list[dict]:
        if self.load is not None:
            return self.load(source, n)
        if self.probe_set is None:
            raise PosttrainError(f"probe '{self.name}' has neither probe_set nor load; give it one.")
        return source.rows(self.probe_set, n)


PROBES: dict[str, Probe] = {}


def register_probe(probe: Probe) -> Probe:
    """Add `probe` to the registry under its name (replacing one of the same name)."""
    PROBES[probe.name] = probe
    return probe


def get_probes(names: list[str] | None) -> list[Probe]:
    """The probes called `names` in that order, or every registered probe when None."""
    import posttrain.evals.probes_builtin  # noqa: F401  (registers the built-in probes)

    if names is None:
        return list(PROBES.values())
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise PosttrainError(f"unknown probe(s): {', '.join(unknown)}. Known probes: {', '.join(PROBES)}.")
    return [PROBES[n] for n in names]
