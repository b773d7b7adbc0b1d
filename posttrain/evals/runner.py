"""Run probes through the shared generation engine and collect a report.

Each probe sends all its prompts to the engine in one call (the engine batches
them). Completions are cached by (prompt, sampling settings): decoding is greedy
by default, so a prompt two probes share is generated once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time

from posttrain import __version__
from posttrain.artifacts import git_commit
from posttrain.context_window import OverlongPromptError
from posttrain.errors import PosttrainError
from posttrain.evals.probe import ProbeContext, get_probes
from posttrain.evals.report import Report, probe_json, sha256_text
from posttrain.evals.sources import ProbeSource
from posttrain.grading.refusal import REFUSAL_CLASSIFIERS


class CachingEngine:
    """The Engine's chat/generate API, answering repeated (prompt, settings) pairs from a cache."""

    def __init__(self, engine):
        self.engine = engine
        self.cache: dict[tuple, object] = {}
        self.generated = 0  # prompts actually sent to the engine

    def chat(self, conversations, params):
        return self._run("chat", conversations, params, self.engine.chat)

    def generate(self, prompts, params):
        return self._run("raw", prompts, params, self.engine.generate)

    def _run(self, kind, prompts, params, call):
        settings = json.dumps(dataclasses.asdict(params), sort_keys=True, default=list)
        keys = [(kind, json.dumps(p, sort_keys=True, ensure_ascii=False), settings) for p in prompts]
        todo = {}
        for k, p in zip(keys, prompts):
            if k not in self.cache and k not in todo:
                todo[k] = p
        if todo:
            for k, c in zip(todo, call(list(todo.values()), params)):
                self.cache[k] = c
            self.generated += len(todo)
        return [self.cache[k] for k in keys]


def _check_refusal_classifier(name: str) -> None:
    if name not in REFUSAL_CLASSIFIERS:
        raise PosttrainError(f"unknown refusal classifier '{name}'; choose one of: {', '.join(REFUSAL_CLASSIFIERS)}.")


def run_probes(
    model,
    tokenizer,
    probes: list[str] | None = None,
    source: str | None = None,
    n: int | None = None,
    batch_size: int = 32,
    dtype: str = "auto",
    seed: int = 0,
    refusal_classifier: str = "xstest",
    progress: bool = False,
    model_name: str | None = None,
    engine=None,
    overlong_prompt: str = "error",
) -> Report:
    """Run `probes` (all registered ones when None) on `model` and return the report.

    source: a world directory, or None for the built-in world (seed 0).
    n: at most n prompts per probe set (None: all). seed: the sampling seed
    (it matters only for probes that sample; the built-in ones decode greedily).
    overlong_prompt: "error" or "truncate", for a prompt that leaves no room for the reply (see Engine).
    """
    from posttrain.data.chat import ensure_chat_template
    from posttrain.engine import Engine
    from posttrain.models import device_name

    if n is not None and n < 1:
        raise PosttrainError(f"--n must be at least 1, got {n}.")
    selected = get_probes(probes)
    if any(p.name in ("harmful_refusal", "over_refusal") for p in selected):
        _check_refusal_classifier(refusal_classifier)
    template_choice = ensure_chat_template(tokenizer, "auto")
    src = ProbeSource(source)
    engine = engine or Engine(model, tokenizer, batch_size=batch_size, dtype=dtype, overlong_prompt=overlong_prompt)
    cached = CachingEngine(engine)
    ctx = ProbeContext(tokenizer=tokenizer, refusal_classifier=refusal_classifier, facts_loader=src.facts)

    start = time.perf_counter()
    results = {}
    from tqdm.auto import tqdm

    bar = tqdm(selected, desc="probes", unit="probe", disable=not progress)
    for probe in bar:
        bar.set_postfix_str(probe.name)
        probe = dataclasses.replace(probe, params={**probe.params, "seed": seed})
        t0 = time.perf_counter()
        rows = probe.rows(src, n)
        if not rows:
            raise PosttrainError(f"probe '{probe.name}' found no rows in {src.describe()}.")
        try:
            completions = probe.generate(probe, cached, rows)
        except OverlongPromptError as e:
            raise OverlongPromptError(f"probe '{probe.name}': {e}") from None
        result = probe.score(rows, completions, ctx)
        results[probe.name] = probe_json(probe, rows, completions, result, time.perf_counter() - t0)
    bar.close()

    header = {
        "model": model_name,
        "source": src.describe(),
        "source_manifest_sha256": src.manifest_sha256(),
        "n": n,
        "seed": seed,
        "batch_size": batch_size,
        "device": device_name(engine.device),
        "dtype": engine.dtype,
        "chat_template": template_choice,
        "chat_template_sha256": sha256_text(tokenizer.chat_template),
        "refusal_classifier": refusal_classifier,
        "overlong_prompt": getattr(engine, "overlong_prompt", None),
        "posttrain_version": __version__,
        "git_commit": git_commit(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prompts_generated": cached.generated,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    return Report(header, results)
