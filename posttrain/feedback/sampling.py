"""On-policy preference pairs: a policy samples N responses per prompt, a labeller orders them, DPO trains on them.

    rows, summary = sample_preferences("runs/sft", "world/preferences.jsonl", n=4, labeller="gold")

The labeller is `gold` (the world's exact judge), a reward model directory, `module:function` (all three
score each response: the pair is the best against the worst, ties dropped), or `ai:JUDGE_DIR` (an AI judge
compares two distinct responses drawn at random, in both orders; labels within `margin` of 0.5 dropped).
See pairs.py for why. Rows are in the preference format DPO and reward models read, each keeping its
prompt's meta plus what labelled it. When prompts carry the world's meta (`task`), every pair is also
scored by the gold judge, and the summary says how often the labeller's choice agrees with gold.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from posttrain.errors import ConfigError, DataError
from posttrain.feedback.pairs import Agreement, extremes, gold_agreement, preferred_first, two_distinct

# Keys of a world preference row's meta that describe its offline pair, not the new responses.
STALE_META = ("pair", "chosen_score", "rejected_score")


@dataclass
class Labeller:
    spec: str  # as the user wrote it: "gold", "ai:runs/sft", a directory, "module:function"
    kind: str  # "gold", "reward_model", "function" (scores), or "ai"
    score: object = None  # reward(prompts, responses, metas) -> scores, for the scoring kinds
    judge: object = None  # AIJudge, for "ai"


def parse_label(spec: str, option: str = "--label") -> tuple[str, str | None]:
    """(kind, path) of a labeller spec, checked without loading anything."""
    if spec == "gold":
        return "gold", None
    if spec.startswith("ai:"):
        path = spec[3:]
        if not Path(path).is_dir():
            raise ConfigError(f"{option} {spec}: the AI judge {path!r} is not a model directory. Write ai:JUDGE_DIR "
                              f"with a causal LM artifact (e.g. ai:runs/demo/sft).")
        return "ai", path
    if Path(spec).is_dir():
        return "reward_model", spec
    if ":" in spec and not Path(spec).exists():
        return "function", spec
    raise ConfigError(f"{option} {spec!r} names no labeller: give `gold` (the world's judge; prompt rows need "
                      f"meta), a reward model directory (from `posttrain reward`), ai:JUDGE_DIR (an AI judge: a "
                      f"causal LM asked which reply follows a principle better), or module:function "
                      f"(f(prompt, response, meta) -> float).")


def resolve_label(spec: str, resolve) -> str:
    """A label with its paths passed through `resolve` (a recipe's: @stage references, paths relative to it)."""
    kind = "gold" if spec == "gold" else "ai" if spec.startswith("ai:") else None
    if kind is None and ":" in spec and not spec.startswith("@"):
        kind = "function"
    if kind in ("gold", "function"):
        return spec
    return f"ai:{resolve(spec[3:])}" if kind == "ai" else str(resolve(spec))


def load_labeller(spec: str, *, constitution=None, seed: int = 0, device: str = "auto", dtype: str = "auto",
                  option: str = "--label") -> Labeller:
    from posttrain.rewards import load_reward

    kind, path = parse_label(spec, option)
    if kind == "ai":
        from posttrain.feedback.ai_judge import AIJudge, load_principles

        principles = load_principles(constitution)
        return Labeller(spec, kind, judge=AIJudge(path, principles, seed=seed, device=device, dtype=dtype))
    options = {"device": device, "dtype": dtype} if kind == "reward_model" else {}
    return Labeller(spec, kind, score=load_reward(spec, **options))


def constitution_sha256(path=None) -> str:
    """Hash of the constitution an AI judge draws its principles from (None: the built-in world's), for the ledger."""
    import hashlib

    if path is None:
        from posttrain.world.policies import CONSTITUTION

        return hashlib.sha256(CONSTITUTION.encode("utf-8")).hexdigest()
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def summary_path(out) -> Path:
    """Where the summary of OUT.jsonl goes: OUT.summary.json beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")


def _sample(engine, conversations: list[list[dict]], n: int, params, labels: list[str]) -> list[list[str]]:
    """n sampled replies per conversation (the engine returns them prompt-major: sample j of prompt i at i*n + j)."""
    texts = [c.text for c in engine.chat(conversations, replace(params, n=n), labels=labels)]
    return [texts[i * n:(i + 1) * n] for i in range(len(conversations))]


def _check_gold_meta(prompts, path, kind: str) -> None:
    missing = next((p for p in prompts if not p.meta.get("task")), None)
    if kind == "gold" and missing is not None:
        raise DataError(path, missing.line, "meta", "has no 'task', which --label gold needs (the gold judge grades "
                        "against the world's meta).", "Use prompts from `posttrain world build` (e.g. its "
                        "preferences.jsonl), or label with a reward model, ai:JUDGE_DIR or module:function.")


class _Tally:
    """Counts and agreement of a run, for the summary."""

    def __init__(self):
        self.pairs = self.ties = self.identical = 0
        self.kept, self.judged = [], []  # (gold chosen, gold rejected) of written pairs / of every AI-judged pair
        self.ai = []  # (p_first, p_first_shown_a, p_first_shown_b, mass) of every AI judgement


def _row(prompt, chosen: str, rejected: str, labeller: Labeller, extra: dict) -> dict:
    meta = {k: v for k, v in prompt.meta.items() if k not in STALE_META}
    return {"prompt": prompt.messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "meta": {**meta, "labeller": labeller.spec, **extra}}


def _gold(prompt, texts: list[str]) -> list[float] | None:
    from posttrain.rewards import gold_reward

    if not prompt.meta.get("task"):
        return None
    return gold_reward([prompt.messages] * len(texts), texts, [prompt.meta] * len(texts))


def _pairs_by_score(chunk, samples, labeller: Labeller, margin: float, tally: _Tally) -> list[dict]:
    flat = [t for texts in samples for t in texts]
    owners = [p for p, texts in zip(chunk, samples) for _ in texts]
    scores = labeller.score([p.messages for p in owners], flat, [p.meta for p in owners])
    rows, n = [], len(samples[0]) if samples else 0
    for i, (prompt, texts) in enumerate(zip(chunk, samples)):
        mine = [float(s) for s in scores[i * n:(i + 1) * n]]
        if len(set(texts)) < 2:
            tally.identical += 1
            continue
        pair = extremes(mine, margin)
        if pair is None:
            tally.ties += 1
            continue
        best, worst = pair
        extra = {"chosen_score": mine[best], "rejected_score": mine[worst], "scores": mine}
        gold = mine if labeller.kind == "gold" else _gold(prompt, [texts[best], texts[worst]])
        if gold is not None:
            g = (gold[best], gold[worst]) if labeller.kind == "gold" else tuple(gold)
            extra.update(gold_chosen=g[0], gold_rejected=g[1])
            tally.kept.append(g)
        rows.append(_row(prompt, texts[best], texts[worst], labeller, extra))
    return rows


def _pairs_by_judge(chunk, samples, labeller: Labeller, margin: float, rng, tally: _Tally) -> list[dict]:
    picked = [(p, texts, two_distinct(texts, rng)) for p, texts in zip(chunk, samples)]
    tally.identical += sum(ij is None for _, _, ij in picked)
    picked = [(p, texts, ij) for p, texts, ij in picked if ij is not None]
    verdicts = labeller.judge.judge([p.messages for p, _, _ in picked], [t[i] for _, t, (i, _) in picked],
                                    [t[j] for _, t, (_, j) in picked]) if picked else []
    rows = []
    for (prompt, texts, (i, j)), v in zip(picked, verdicts):
        tally.ai.append((v.p_first, v.p_first_shown_a, v.p_first_shown_b, v.mass))
        first = preferred_first(v.p_first, margin)
        gold = _gold(prompt, [texts[i], texts[j]])
        if gold is not None and v.p_first != 0.5:
            tally.judged.append((gold[0], gold[1]) if v.p_first > 0.5 else (gold[1], gold[0]))
        if first is None:
            tally.ties += 1
            continue
        c, r = (i, j) if first else (j, i)
        # The raw probabilities, said of the chosen reply: p(chosen better) with it shown as (A), and as (B).
        shown = (v.p_first_shown_a, v.p_first_shown_b) if first else (1 - v.p_first_shown_b, 1 - v.p_first_shown_a)
        extra = {"probability": v.p_first if first else 1 - v.p_first, "principle": v.principle,
                 "p_chosen_shown_a": shown[0], "p_chosen_shown_b": shown[1]}
        if gold is not None:
            g = (gold[0], gold[1]) if first else (gold[1], gold[0])
            extra.update(gold_chosen=g[0], gold_rejected=g[1])
            tally.kept.append(g)
        rows.append(_row(prompt, texts[c], texts[r], labeller, extra))
    return rows


def _ai_summary(tally: _Tally) -> dict:
    if not tally.ai:
        return {"judged": 0}
    k = len(tally.ai)
    return {"judged": k, "agreement_before_margin": gold_agreement(tally.judged).as_dict(),
            # both orders prefer the same reply: how often the judge's choice survives swapping the positions
            "order_consistent": sum((a > 0.5) == (b > 0.5) for _, a, b, _ in tally.ai) / k,
            "mean_confidence": sum(abs(p - 0.5) for p, *_ in tally.ai) / k,
            "mean_letter_mass": sum(m for *_, m in tally.ai) / k}


def sample_preferences(policy_dir, prompts_path, n: int, labeller, *, limit: int | None = None, seed: int = 0,
                       temperature: float = 1.0, max_new_tokens: int = 128, top_p: float = 1.0, margin: float = 0.0,
                       constitution=None, batch_size: int = 32, device: str = "auto", dtype: str = "auto",
                       chat_template: str = "auto", progress: bool = True) -> tuple[list[dict], dict]:
    """(preference rows, summary). `labeller`: a Labeller or its spec (loaded after the prompts are checked)."""
    from tqdm.auto import tqdm

    from posttrain.data.chat import ensure_chat_template
    from posttrain.data.prompts import read_prompts
    from posttrain.engine import Engine, SamplingParams
    from posttrain.models import load_model_and_tokenizer, resolve_device

    if n < 2:
        raise ConfigError(f"n (--n) must be at least 2 to form a pair, got {n}.")
    start = time.perf_counter()
    prompts = read_prompts(prompts_path, limit)
    spec = labeller.spec if isinstance(labeller, Labeller) else labeller
    _check_gold_meta(prompts, prompts_path, parse_label(spec)[0])
    if not isinstance(labeller, Labeller):
        labeller = load_labeller(labeller, constitution=constitution, seed=seed, device=device, dtype=dtype)
    model, tok = load_model_and_tokenizer(policy_dir, resolve_device(device))
    ensure_chat_template(tok, chat_template)
    engine = Engine(model, tok, batch_size=batch_size, dtype=dtype)
    rng, tally, rows = random.Random(f"{seed}:pairs"), _Tally(), []
    step = max(1, batch_size // n)  # prompts per generation call: a batch of samples, and a progress update
    bar = tqdm(total=len(prompts), desc="preferences", unit="prompt", disable=not progress)
    for k in range(0, len(prompts), step):
        chunk = prompts[k:k + step]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed * 1_000_003 + k)
        labels = [f"the prompt at {prompts_path}, line {p.line}" for p in chunk]
        samples = _sample(engine, [p.messages for p in chunk], n, params, labels)
        if labeller.kind == "ai":
            rows += _pairs_by_judge(chunk, samples, labeller, margin, rng, tally)
        else:
            rows += _pairs_by_score(chunk, samples, labeller, margin, tally)
        bar.update(len(chunk))
    bar.close()
    agreement = gold_agreement(tally.kept) if tally.kept else Agreement()
    summary = {"policy": str(policy_dir), "prompts": str(prompts_path), "labeller": labeller.spec,
               "rows": len(prompts), "n": n, "samples": len(prompts) * n, "pairs": len(rows),
               "dropped_ties": tally.ties, "dropped_identical": tally.identical, "margin": margin,
               "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
               "gold_rows": sum(bool(p.meta.get("task")) for p in prompts),
               "agreement_with_gold": agreement.as_dict() if agreement.judged or agreement.gold_ties else None,
               "ai_judge": _ai_summary(tally) if labeller.kind == "ai" else None,
               "constitution_sha256": constitution_sha256(constitution) if labeller.kind == "ai" else None,
               "wall_time_s": round(time.perf_counter() - start, 3)}
    return rows, summary


def write_preferences(out, rows: list[dict], summary: dict) -> tuple[Path, Path]:
    """Write the rows (JSONL) and OUT.summary.json, each atomically (a killed run leaves the old file or none)."""
    from posttrain.artifacts import write_json_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, write_json_atomic(summary_path(out), summary)


def summary_items(summary: dict) -> dict:
    """The summary as rows of the table printed at the end (console.summary)."""
    items = {"labeller": summary["labeller"], "prompts": summary["rows"], "samples": summary["samples"],
             "pairs written": summary["pairs"], "dropped: ties / unsure": summary["dropped_ties"],
             "dropped: identical samples": summary["dropped_identical"]}
    agreement = summary.get("agreement_with_gold")
    if agreement:
        rate = agreement["rate"]
        ci = agreement["ci95"]
        items["agreement with gold"] = (f"{rate:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if rate is not None else "-") + \
            f" ({agreement['agree']}/{agreement['agree'] + agreement['disagree']}, {agreement['gold_ties']} gold ties)"
    ai = summary.get("ai_judge")
    if ai and ai.get("judged"):
        before = ai["agreement_before_margin"]
        items["AI: agreement, all judged"] = (f"{before['rate']:.3f} ({before['agree']}/"
                                              f"{before['agree'] + before['disagree']})" if before["rate"] is not None
                                              else "-")
        items["AI: same choice both orders"] = ai["order_consistent"]
        items["AI: mean |p - 0.5|"] = ai["mean_confidence"]
        items["AI: mean p(A) + p(B)"] = ai["mean_letter_mass"]
    items["time (s)"] = summary["wall_time_s"]
    return items
