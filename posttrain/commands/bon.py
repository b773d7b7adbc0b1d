"""`posttrain bon`: best-of-n against a reward, and the over-optimisation curve of proxy vs gold."""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.commands.generate import (
    add_model_arguments,
    add_overlong_argument,
    add_sampling_arguments,
    load_engine,
    sampling_params_from_args,
)
from posttrain.errors import ConfigError

NAME = "bon"
ORDER = 66
HELP = "best-of-n sampling against a reward: proxy and gold reward vs n, and the over-optimisation curve"
DESCRIPTION = """\
Sample max(--n) answers per prompt from ARTIFACT once, score each with the proxy --reward (and
with the world's gold judge), and estimate best-of-n for every n in --n: the expected proxy and
gold score of the answer the proxy ranks first among n. The estimate averages over all n-subsets
of the samples (unbiased; Nakano et al. 2021), so one sampling pass gives the whole curve.

Best-of-n moves KL(best-of-n || policy) = log n - (n - 1)/n away from the policy. Plotting the
change of proxy and gold from n = 1 against d = sqrt(KL) gives Gao et al.'s (2022) over-optimisation
curve: the proxy keeps rising; gold rising then falling means the proxy is being gamed. Both are
fitted with R(d) = d (a - b d), whose peak is at d = a / 2b.

--reward is a reward-model directory, `gold`, or module:function (see posttrain.rewards). Gold scores
are added with --gold, or by themselves when every prompt row carries the world's `meta`.

Writes OUT/bon.json (per n: KL, d, proxy and gold means and changes from n = 1, each with a 95%
bootstrap interval over prompts; the fits and the gold peak), OUT/bon_samples.jsonl (every prompt's
answers and scores, to recompute anything) and OUT/overoptimisation.png.

examples:
  posttrain bon runs/sft --prompts runs/world/preferences.jsonl --reward runs/reward --gold --out runs/bon
  posttrain bon runs/sft --prompts prompts.jsonl --reward my_rewards:length_penalty --n 1,4,16 --limit 50 --out /tmp/b
"""


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="prompt rows: {\"prompt\", \"meta\"} or preference pairs (their prompts are used)")
    parser.add_argument("--reward", required=True, metavar="SPEC",
                        help="the proxy optimised: a reward-model directory, gold, or module:function")
    parser.add_argument("--gold", action="store_true",
                        help="also score with the world's gold judge (needs each row's meta); on by itself when "
                             "every row has one")
    parser.add_argument("--n", default="1,2,4,8,16,32", metavar="N1,N2,...",
                        help="best-of-n values; max(n) answers are sampled per prompt (default: 1,2,4,8,16,32)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts (default: all)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for bon.json, samples and the plot")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="answers generated together (default: 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    add_overlong_argument(parser)
    add_sampling_arguments(parser)
    for action in parser._actions:  # best-of-n needs different answers to choose from: sample by default
        if action.dest == "temperature":
            action.default, action.help = 1.0, "sampling temperature, > 0 (default: 1)"


def _check_options(args) -> list[int]:
    from posttrain.bon import parse_n_list

    ns = parse_n_list(args.n)
    if args.temperature <= 0:
        raise ConfigError(f"--temperature {args.temperature}: best-of-n needs sampled answers (temperature > 0); "
                          f"greedy decoding gives n copies of one answer. Use e.g. --temperature 1.")
    for option, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be at least 1, got {value}.")
    return ns


def _use_gold(args, rows) -> bool:
    """Score with the gold judge: asked (--gold), or every row has world meta; never when the proxy is gold."""
    from posttrain.console import notice

    missing = [r for r in rows if "task" not in r.meta]
    if args.gold and missing:
        raise ConfigError(f"--gold needs each prompt row's `meta` (with its `task`), as the built-in world's rows "
                          f"have, but {args.prompts} line {missing[0].line} has none ({len(missing)} of {len(rows)} "
                          f"rows lack it). Use prompts from a world (e.g. preferences.jsonl), or drop --gold.")
    if args.reward == "gold":
        if args.gold:
            notice("--reward gold: the proxy is the gold judge itself, so there is no separate gold column")
        return False
    return not missing


def _r2(r2: float | None) -> str:
    return "undefined (all changes equal)" if r2 is None else f"{r2:.3f}"


def _cell(value: float, ci) -> str:
    return f"{value:+.4f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _report(result: dict) -> str:
    from posttrain.console import table

    gold = "gold" in result["rows"][0]
    headers = ["n", "KL", "d", "proxy", "proxy change [95%]"] + (["gold", "gold change [95%]"] if gold else [])
    lines = [[r["n"], r["kl"], r["d"], r["proxy"], _cell(r["proxy_delta"], r["proxy_delta_ci"])]
             + ([r["gold"], _cell(r["gold_delta"], r["gold_delta_ci"])] if gold else []) for r in result["rows"]]
    out = [table(lines, headers)]
    if not gold:
        out.append("the proxy is the gold judge itself: there is no separate gold score to over-optimise"
                   if result["reward"] == "gold" else
                   "no gold scores (--gold, or prompts with world meta, add them): over-optimisation is not measured")
        return "\n".join(out)
    p = result["gold_peak"]
    last = result["rows"][-1]
    if p["at_largest_n"]:
        out.append(f"gold is highest at the largest n ({p['n']}, KL {p['kl']:.2f}): no over-optimisation up to n = "
                   f"{p['n']}")
    else:
        ci = p["gold_drop_ci"]
        where = ("is highest at n = 1 (the policy itself)" if p["n"] == 1 else
                 f"peaks at n = {p['n']} (KL {p['kl']:.2f} nats, d {p['d']:.2f}) at {p['gold_delta']:+.4f}")
        sure = "" if ci is None else (" (its 95% interval excludes 0)" if ci[0] > 0 else
                                      f" (95% interval [{ci[0]:+.3f}, {ci[1]:+.3f}] includes 0: not significant)")
        out.append(f"gold {where}, then drops by {p['gold_drop_to_largest_n']:.4f} by n = {last['n']}{sure}, while the proxy "
                   f"{'keeps rising' if p['proxy_rise_after_peak'] > 0 else 'stays flat'} "
                   f"({p['proxy_rise_after_peak']:+.4f} after the peak)"
                   + (": the proxy is over-optimised" if p["overoptimised"] else ""))
    fit = p.get("fit")
    if fit and fit["interior"]:
        where = "beyond the measured range, extrapolated" if fit["extrapolated"] else "within the measured range"
        out.append(f"fit d (a - b d): gold peaks at d {fit['d']:.2f} (KL {fit['kl']:.2f} nats, n ~ {fit['n']:.1f}) "
                   f"at {fit['gold_delta']:+.4f} ({where}; R^2 {_r2(result['fits']['gold']['r2'])})")
    elif fit:
        out.append("fit d (a - b d): the gold fit has no interior peak (b <= 0 or a <= 0)")
    return "\n".join(out)


def run(args) -> int:
    from posttrain.artifacts import atomic_dir, write_json_atomic
    from posttrain.bon import BOOTSTRAP_RESAMPLES, PromptSamples, bon_curve, sample_all, score_all, summarise
    from posttrain.data.prompts import read_prompts
    from posttrain.outputs import check_output, clean_stale_temporaries
    from posttrain.overoptimisation import plot_overoptimisation
    from posttrain.rewards import gold_reward, load_reward

    start = time.time()
    ns = _check_options(args)  # options, data and --out are checked before any model loads
    rows = read_prompts(args.prompts, limit=args.limit)
    use_gold = _use_gold(args, rows)
    reward_dir = args.reward if Path(args.reward).is_dir() else None
    out = check_output(args.out, overwrite=args.overwrite,
                       inputs={"ARTIFACT": args.artifact, "--prompts": args.prompts, "--reward": reward_dir})
    clean_stale_temporaries(out.parent, out.name)
    reward = load_reward(args.reward, device=args.device, dtype=args.dtype)  # a bad spec fails before sampling
    engine = load_engine(args, batch_size=args.batch_size, overlong_prompt=args.overlong)
    params = sampling_params_from_args(args)
    progress = not args.no_progress

    sampling = time.time()
    responses = sample_all(engine, rows, params, max(ns), progress)
    sampled = time.time()
    del engine  # the policy is done with: free its memory for the reward model's batches
    proxy = score_all(reward, rows, responses, "proxy reward", progress)
    gold = score_all(gold_reward, rows, responses, "gold judge", progress) if use_gold else [None] * len(rows)
    samples = [PromptSamples(r.messages, r.meta, r.line, a, p, g) for r, a, p, g in zip(rows, responses, proxy, gold)]
    result = summarise(samples, ns, seed=args.seed)
    result = {"artifact": str(args.artifact), "prompts_file": str(args.prompts), "reward": args.reward,
              "gold": "gold" if use_gold else None, "n": ns, "temperature": args.temperature, "top_p": args.top_p,
              "top_k": args.top_k, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "limit": args.limit,
              "estimator": "expected best-of-n over all n-subsets of the samples: sum_i C(i-1,n-1)/C(N,n) v_(i)",
              "interval": f"95% percentile bootstrap over prompts, {BOOTSTRAP_RESAMPLES} resamples, seed {args.seed}",
              **result, "sampling_s": round(sampled - sampling, 1), "wall_time_s": round(time.time() - start, 1)}

    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / "bon.json", result)
        with open(tmp / "bon_samples.jsonl", "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"line": s.line, "prompt": s.messages, "meta": s.meta, "responses": s.responses,
                                    "proxy": s.proxy, "gold": s.gold}, ensure_ascii=False) + "\n")
        plot_overoptimisation([bon_curve(result)], tmp / "overoptimisation.png",
                              f"Best-of-n on {Path(args.artifact).name} against {args.reward} "
                              f"({len(samples)} prompts, {max(ns)} samples each)")
    print(_report(result))
    print(f"\n{len(samples)} prompts x {max(ns)} samples in {result['wall_time_s']:.1f}s "
          f"(sampling {result['sampling_s']:.1f}s); wrote {out}/bon.json, bon_samples.jsonl, overoptimisation.png")
    return 0
