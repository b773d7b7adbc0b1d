"""Best-of-n against a reward: sample N answers per prompt once, score them, and read off every n <= N.

Best-of-n draws n answers from the policy and keeps the one the proxy reward scores highest. Rather
than draw n answers for each n, we draw N = max(n) once and average over *all* n-subsets of them
(Nakano et al. 2021, WebGPT; Gao et al. 2022): with a prompt's samples sorted by proxy (ascending,
rank i = 1..N), sample i is the proxy-best of a uniformly random n-subset with probability

    p_i(n) = C(i - 1, n - 1) / C(N, n)

(the other n - 1 members come from the i - 1 below it), so the expected value of any score v of
the kept answer is  E_n[v] = sum_i p_i(n) v_i.  This is unbiased for best-of-n with fresh samples,
and has much lower variance than one draw per n. For n = 1 it is the mean of all N samples.

The change of proxy and gold from n = 1, against d = sqrt(bon_kl(n)), is the over-optimisation curve
(posttrain.overoptimisation): the proxy rises with n by construction; a gold curve that turns down is
the proxy being gamed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from posttrain.config import opt
from posttrain.errors import ConfigError
from posttrain.overoptimisation import Curve, FormFit, bon_kl, bon_n_for_kl, fit_bon

BOOTSTRAP_RESAMPLES = 1000


@dataclass
class BestOfNConfig:
    """Best-of-n against a reward with the gold judge alongside (a recipe's `bon` stage; `posttrain bon`)."""

    reward: str = opt("gold", "The proxy optimised: a reward model directory (`@stage` in a recipe), `gold` or module:function.")
    n: list[int] = opt(help="Best-of-n values; max(n) answers are sampled per prompt.",
                       factory=lambda: [1, 2, 4, 8, 16])
    limit: int | None = opt(None, "Only the first N prompts (null = all).", ge=1)
    temperature: float = opt(1.0, "Sampling temperature (> 0: best-of-n needs different answers).", gt=0)
    max_new_tokens: int = opt(64, "Most tokens per answer.", ge=1)
    seed: int = opt(0, "Seed of sampling and of the bootstrap intervals.", ge=0)


def parse_n_list(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]: whole numbers >= 1, sorted, duplicates dropped; n = 1 (the policy) always in."""
    try:
        ns = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--n {text!r}: give a comma-separated list of whole numbers, e.g. --n 1,2,4,8,16.") from None
    if not ns or min(ns) < 1:
        raise ConfigError(f"--n {text!r}: every n must be a whole number >= 1 (the answers sampled per prompt), "
                          f"e.g. --n 1,2,4,8,16.")
    return sorted(set(ns) | {1})  # n = 1 is the starting policy every change is measured from


def best_of_n_weights(N: int, n: int) -> np.ndarray:
    """p_i = C(i - 1, n - 1) / C(N, n) for ranks i = 1..N (ascending): the chance rank i is the best of n."""
    if not 1 <= n <= N:
        raise ConfigError(f"best-of-{n} from {N} samples: n must lie between 1 and the samples drawn ({N}).")
    total = math.comb(N, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, N + 1)])  # exact integers, one division


def expected_best_of_n(proxy, values, n: int) -> float:
    """E over random n-subsets of `values` at the proxy-best sample: sum_i p_i(n) v_(i), samples sorted by proxy.

    Ties in proxy are broken uniformly at random, which in expectation gives each tied sample the mean
    value of its tie group: so v_(i) is that mean (it matters for a gold value under a tied proxy).
    """
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(proxy, kind="stable")
    p, v = proxy[order], values[order]
    _, group, counts = np.unique(p, return_inverse=True, return_counts=True)
    v = np.bincount(group, weights=v)[group] / counts[group]
    return float(best_of_n_weights(len(p), n) @ v)


@dataclass
class PromptSamples:
    messages: list[dict]  # the conversation the answers continue
    meta: dict
    line: int  # row in the prompt file
    responses: list[str]
    proxy: list[float]
    gold: list[float] | None = None


def sample_n(engine, conversations: list[list[dict]], params, n: int) -> list[list[str]]:
    """n sampled answers per conversation; one engine call (SamplingParams.n: each prompt prefilled once).

    The engine returns them prompt-major: sample j of conversation i at i * n + j.
    """
    from dataclasses import replace

    flat = engine.chat(conversations, replace(params, n=n))
    return [[c.text for c in flat[i * n:(i + 1) * n]] for i in range(len(conversations))]


def sample_all(engine, rows, params, n: int, progress: bool = True) -> list[list[str]]:
    """n answers for every prompt row, a few prompts per engine batch, with a progress bar.

    Chunk k is sampled with seed `params.seed * 1_000_003 + k` (its own random stream; the same --seed and
    --batch-size give the same answers).
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    per_chunk = max(1, engine.batch_size // n)
    out: list[list[str]] = []
    with tqdm(total=len(rows) * n, desc="sampling", unit="answer", disable=not progress, mininterval=1.0) as bar:
        for k, start in enumerate(range(0, len(rows), per_chunk)):
            chunk = rows[start:start + per_chunk]
            out += sample_n(engine, [r.messages for r in chunk], replace(params, seed=params.seed * 1_000_003 + k), n)
            bar.update(len(chunk) * n)
    return out


def score_all(reward, rows, responses: list[list[str]], desc: str, progress: bool = True,
              chunk: int = 256) -> list[list[float]]:
    """reward(prompts, responses, metas) over every (row, answer), flattened and called in chunks (a bar)."""
    from tqdm.auto import tqdm

    flat = [(r.messages, a, r.meta) for r, answers in zip(rows, responses) for a in answers]
    scores: list[float] = []
    for i in tqdm(range(0, len(flat), chunk), desc=desc, disable=not progress, mininterval=1.0):
        part = flat[i:i + chunk]
        scores += [float(s) for s in reward([p for p, _, _ in part], [a for _, a, _ in part],
                                            [m for _, _, m in part])]
    out, at = [], 0
    for answers in responses:
        out.append(scores[at:at + len(answers)])
        at += len(answers)
    return out


def best_of_n_responses(samples: list[PromptSamples], n: int) -> list[str]:
    """Per prompt, the proxy-best of its first n samples: one real best-of-n draw (samples are i.i.d.)."""
    picked = []
    for s in samples:
        if n > len(s.responses):
            raise ConfigError(f"best-of-{n} needs {n} samples per prompt, but {len(s.responses)} were drawn "
                              f"(line {s.line}); sample at least n.")
        picked.append(s.responses[int(np.argmax(s.proxy[:n]))])  # argmax: the first of tied best
    return picked


def best_of_n_policy(engine, reward, rows, n: int, params, progress: bool = False) -> list[str]:
    """The best-of-n "policy": for each prompt row, sample n answers and return the one `reward` ranks first."""
    responses = sample_all(engine, rows, params, n, progress)
    proxy = score_all(reward, rows, responses, "scoring", progress)
    return best_of_n_responses([PromptSamples(r.messages, r.meta, r.line, a, p)
                                for r, a, p in zip(rows, responses, proxy)], n)


def _interval(draws: np.ndarray) -> list[list[float]] | None:
    """Per column, the 2.5th and 97.5th percentile of bootstrap draws [B, K]."""
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def summarise(samples: list[PromptSamples], ns: list[int], seed: int = 0) -> dict:
    """Expected best-of-n proxy and gold per n, their change from n = 1, 95% intervals, fits and the gold peak.

    Intervals: percentile bootstrap over prompts (BOOTSTRAP_RESAMPLES resamples, numpy generator `seed`);
    a change is resampled as a whole (the same prompts at n and at 1), so its interval is the change's own.
    """
    N = min(len(s.responses) for s in samples)
    has_gold = all(s.gold is not None for s in samples)
    keys = ["proxy", "gold"] if has_gold else ["proxy"]
    per_prompt = {k: np.array([[expected_best_of_n(s.proxy[:N], getattr(s, k)[:N], n) for n in ns]
                               for s in samples]) for k in keys}  # [prompts, len(ns)]
    picks = np.random.default_rng(seed).integers(0, len(samples), size=(BOOTSTRAP_RESAMPLES, len(samples)))
    rows = [{"n": n, "kl": bon_kl(n), "d": math.sqrt(bon_kl(n))} for n in ns]
    stats, draws = {}, {}
    for k, v in per_prompt.items():
        mean = v.mean(axis=0)
        draws[k] = v[picks].mean(axis=1)  # [B, len(ns)]
        stats[k] = mean - mean[0]
        boot = len(samples) >= 2  # one prompt has no spread to resample
        mean_ci = _interval(draws[k]) if boot else [None] * len(ns)
        delta_ci = _interval(draws[k] - draws[k][:, :1]) if boot else [None] * len(ns)
        for j, row in enumerate(rows):
            row.update({k: float(mean[j]), f"{k}_ci": mean_ci[j], f"{k}_delta": float(stats[k][j]),
                        f"{k}_delta_ci": delta_ci[j]})
    d = np.array([r["d"] for r in rows])
    fittable = int((d > 0).sum()) >= 2
    fits = {k: fit_bon(d, stats[k]).to_dict() if fittable else None for k in keys}
    result = {"prompts": len(samples), "samples_per_prompt": N, "rows": rows, "fits": fits}
    if has_gold:
        result["gold_peak"] = _gold_peak(rows, stats, draws, fits["gold"], len(samples) >= 2)
    return result


def _gold_peak(rows: list[dict], stats: dict, draws: dict, fit: dict | None, boot: bool) -> dict:
    """Where the measured gold change peaks, what the proxy does after it, and the fitted peak."""
    j = int(np.argmax(stats["gold"]))
    last = len(rows) - 1
    drop = draws["gold"][:, j] - draws["gold"][:, last]
    peak = {"n": rows[j]["n"], "kl": rows[j]["kl"], "d": rows[j]["d"], "gold_delta": float(stats["gold"][j]),
            "gold_drop_to_largest_n": float(stats["gold"][j] - stats["gold"][last]),
            "gold_drop_ci": [float(x) for x in np.percentile(drop, [2.5, 97.5])] if boot else None,
            "proxy_rise_after_peak": float(stats["proxy"][last] - stats["proxy"][j]),
            "at_largest_n": j == last}
    # Over-optimised: past gold's peak the proxy still gains while gold loses.
    peak["overoptimised"] = bool(j < last and peak["proxy_rise_after_peak"] > 0 and peak["gold_drop_to_largest_n"] > 0)
    if fit is not None:
        peak["fit"] = {"d": fit["peak_d"], "kl": fit["peak_kl"], "n": bon_n_for_kl(fit["peak_kl"]),
                       "gold_delta": fit["peak_value"], "interior": fit["interior"],
                       "extrapolated": fit["extrapolated"]}
    return peak


def bon_curve(result: dict, name: str = "best-of-n") -> Curve:
    """The plot's series from `summarise`'s result: changes from n = 1 with intervals, fits, n per point."""
    rows, fits = result["rows"], result["fits"]
    series = lambda key: [r[key] for r in rows] if key in rows[0] and rows[0][key] is not None else None  # noqa: E731
    fit = lambda key: FormFit.from_dict(fits[key]) if fits.get(key) else None  # noqa: E731
    return Curve(name, series("d"), series("proxy_delta"), series("gold_delta"), fit("proxy"), fit("gold"),
                 series("proxy_delta_ci"), series("gold_delta_ci"), [f"n={r['n']}" for r in rows])


class BestOfNEngine:
    """The engine's chat API with best-of-n as the policy: n samples per conversation, the reward's favourite kept.

    Probes then measure what a best-of-n deployment would say (safety included). Raw-text prompts (cloze)
    go to the policy itself: best-of-n is a way to answer chats. Reward ties keep the earliest sample.
    """

    def __init__(self, engine, reward, n: int, temperature: float = 1.0, seed: int = 0):
        if n < 1:
            raise ConfigError(f"best_of_n must be at least 1, got {n}.")
        self.engine, self.reward, self.n, self.temperature, self.seed = engine, reward, n, temperature, seed
        self.device, self.dtype = engine.device, engine.dtype
        self.overlong_prompt = getattr(engine, "overlong_prompt", None)

    def chat(self, conversations, params, labels=None):
        from dataclasses import replace

        done = self.engine.chat(conversations, replace(params, n=self.n, temperature=self.temperature, seed=self.seed),
                                labels)
        texts = [c.text for c in done]
        scores = self.reward([m for m in conversations for _ in range(self.n)], texts, [{}] * len(texts))
        best = []
        for i in range(len(conversations)):
            group = scores[i * self.n:(i + 1) * self.n]
            best.append(done[i * self.n + max(range(self.n), key=lambda j: (group[j], -j))])
        return best

    def generate(self, prompts, params, labels=None):
        return self.engine.generate(prompts, params, labels)
