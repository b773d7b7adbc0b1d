"""Rollout sampling: posttrain's engine vs transformers `model.generate` (what TRL samples with), the same work.

    python bench/generate_vs_hf.py                      # the shipped base: 32 prompts x 4 samples, 64 new tokens
    python bench/generate_vs_hf.py --repeats 5 --json generate.json
    python bench/generate_vs_hf.py --model /tmp/smol135 --prompts 8 --n 4 --max-new-tokens 32 --repeats 2

Every side samples n completions for each of the same P chat-templated user prompts of the built-in world,
with the same model object, batch (rows sampled at once), max_new_tokens, sampling settings (temperature 1,
top-p 1, top-k off), dtype (bf16 = autocast over the fp32 weights) and stop tokens (EOS and end of turn):

    engine          posttrain Engine, n=1 over the P*n prompt copies (every copy prefilled)
    engine-shared   posttrain Engine, n samples per prompt: each prompt prefilled once, its cache copied n times
    hf-n            generate(num_return_sequences=n): transformers repeats each prompt n times and prefills each
    hf              generate, n=1 over the P*n prompt copies

tokens/s counts generated tokens only, up to and including the stop token (HF's padding after a finished row
is not counted). Each side runs once untimed (warm-up), then --repeats timed rounds in a rotated order, each
round with the same seed (so a side redoes the same samples and rounds differ only in time); tables show the
median [min–max]. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import common  # bench/common.py, next to this script: the shared bench modules in one import

SIDES = {
    "engine": "Engine, n=1 over the P*n prompt copies",
    "engine-shared": "Engine, n per prompt, one shared prefill",
    "hf-n": "generate(num_return_sequences=n)",
    "hf": "generate, n=1 over the P*n prompt copies",
}
RATIOS = (("engine", "hf"), ("engine-shared", "hf-n"), ("engine-shared", "hf"))
SPEED_GOAL = 3.0  # the goal: the engine at least 3x generate's tokens/s on this CPU


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(common.DEFAULT_MODEL),
                   help="transformers model directory with its tokenizer and chat template "
                        "(bench/make_model.py builds benchmark shapes)")
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts (P)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--batch-size", type=int, default=32, help="rows sampled at once, on every side")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of every side; tables show medians")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bf16 = autocast over fp32 weights; auto = what posttrain picks on this machine")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every timed round")
    p.add_argument("--sides", default=",".join(SIDES), help="comma list out of " + ", ".join(SIDES))
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if unknown := set(a.sides) - set(SIDES):
        p.error(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}.")
    if min(a.prompts, a.n, a.batch_size, a.max_new_tokens, a.repeats) < 1:
        p.error("--prompts, --n, --batch-size, --max-new-tokens and --repeats must each be at least 1.")
    if a.batch_size % a.n:
        p.error(f"--batch-size {a.batch_size} must be a multiple of --n {a.n}, so that every side samples "
                "the same rows at once (generate's num_return_sequences batches whole prompts).")
    return a


def world_prompts(count: int) -> list[list[dict]]:
    """The first `count` distinct prompts (every turn before the first reply) of the built-in world's SFT chats."""
    from posttrain.world.chats import build_sft
    from posttrain.world.facts import all_facts, split_facts

    chats, _ = build_sft(split_facts(all_facts(), 0)[0], seed=0, scale=max(0.1, count / 300))
    seen: dict[str, list[dict]] = {}
    for chat in chats:
        msgs = chat["messages"]
        prompt = msgs[: next(i for i, m in enumerate(msgs) if m["role"] == "assistant")]
        seen.setdefault(json.dumps(prompt), prompt)
    if len(seen) < count:
        raise SystemExit(f"--prompts {count}: the world holds only {len(seen)} distinct prompts; ask for fewer.")
    return list(seen.values())[:count]


# ------------------------------------------------------------------ the sides (one call = all P*n samples)

def engine_call(engine, prompt_ids: list[list[int]], args, shared: bool, seed: int) -> list[int]:
    """Generated lengths (stop token included) of the engine's P*n samples (token ids in, as generate gets them)."""
    from posttrain.engine import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=seed,
                            n=args.n if shared else 1)
    batch = prompt_ids if shared else [p for p in prompt_ids for _ in range(args.n)]
    return [len(c.token_ids) for c in engine.generate(batch, params)]


def hf_call(model, prompt_ids: list[list[int]], args, setup: dict, per_prompt: int, seed: int) -> list[int]:
    """Generated lengths (up to and including the first stop token) of generate's P*n samples, in batches of
    batch_size rows: batch_size / per_prompt prompts, each with num_return_sequences=per_prompt."""
    import torch

    from posttrain.models import autocast

    if per_prompt == 1:
        prompt_ids = [p for p in prompt_ids for _ in range(args.n)]
    stops, pad = torch.tensor(sorted(setup["stop_ids"])), setup["pad_id"]
    torch.manual_seed(seed)
    lengths: list[int] = []
    step = args.batch_size // per_prompt
    for start in range(0, len(prompt_ids), step):
        batch = prompt_ids[start : start + step]
        width = max(len(p) for p in batch)  # left padding, as TRL tokenizes prompts for generate
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with autocast(setup["dtype"], torch.device("cpu")):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=args.max_new_tokens, num_return_sequences=per_prompt,
                                 eos_token_id=sorted(setup["stop_ids"]), pad_token_id=pad)
        new = out[:, width:]
        stopped = torch.isin(new, stops)
        first = stopped.int().argmax(dim=1)
        lengths += torch.where(stopped.any(dim=1), first + 1, new.shape[1]).tolist()
    return lengths


def timed(run, max_new_tokens: int) -> dict:
    """One timed call: its samples, generated tokens, seconds, tokens/s, mean length and the share of samples
    cut by max_new_tokens (the rest ended on a stop token)."""
    t0 = time.perf_counter()
    lengths = run()
    seconds = time.perf_counter() - t0
    return dict(samples=len(lengths), tokens=sum(lengths), seconds=seconds, tokens_per_s=sum(lengths) / seconds,
                mean_len=statistics.mean(lengths),
                cut_share=sum(n >= max_new_tokens for n in lengths) / len(lengths))


# ------------------------------------------------------------------ the driver

def main(argv=None):
    args = parse_args(argv)
    import torch
    import transformers

    from posttrain.data.chat import render_generation_prompt
    from posttrain.engine import Engine, default_stop_token_ids
    from posttrain.models import load_model_and_tokenizer

    transformers.logging.set_verbosity_error()
    env = common.environment(args.dtype)
    model, tok = load_model_and_tokenizer(args.model, "cpu")
    model.eval()
    texts = [render_generation_prompt(tok, m) for m in world_prompts(args.prompts)]
    prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine = Engine(model, tok, batch_size=args.batch_size, dtype=args.dtype)
    setup = dict(dtype=env["dtype"], stop_ids=set(default_stop_token_ids(tok)), pad_id=engine.pad_id)
    params = sum(p.numel() for p in model.parameters())
    run = {
        "engine": lambda seed: engine_call(engine, prompt_ids, args, False, seed),
        "engine-shared": lambda seed: engine_call(engine, prompt_ids, args, True, seed),
        "hf-n": lambda seed: hf_call(model, prompt_ids, args, setup, args.n, seed),
        "hf": lambda seed: hf_call(model, prompt_ids, args, setup, 1, seed),
    }

    print(common.environment_line(env) + f" | torch threads {torch.get_num_threads()}")
    stop_names = ", ".join(tok.convert_ids_to_tokens(sorted(setup["stop_ids"])))
    print(f"model {args.model}: {params / 1e6:.1f}M parameters | {args.prompts} prompts x {args.n} samples, "
          f"{statistics.mean(map(len, prompt_ids)):.0f} prompt tokens on average (longest {max(map(len, prompt_ids))}) "
          f"| batch {args.batch_size} rows | max_new_tokens {args.max_new_tokens} | temperature 1, top-p 1, "
          f"top-k off | stop on {stop_names}", flush=True)
    for side in args.sides:  # warm-up: thread pools, allocator, kernels of every shape
        run[side](args.seed + 1)
    runs = common.run_rounds(args.sides, args.repeats,
                             lambda side: timed(lambda: run[side](args.seed), args.max_new_tokens),
                             lambda k, side, r: f"round {k} {side:<13} {r['tokens']:>6,} tokens in "
                                                f"{r['seconds']:6.2f} s: {r['tokens_per_s']:8,.0f} tokens/s")
    expected = args.prompts * args.n
    if bad := [s for s, rs in runs.items() if rs[0]["samples"] != expected]:
        raise SystemExit(f"sides {', '.join(bad)} returned other than {expected} samples: not the same work.")
    res = {side: summary(rs, params, env["matmul_peak_flops"]) for side, rs in runs.items()}
    print("\n" + "\n".join(report_lines(res)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, options=vars(args), parameters=params, results=res), f, indent=1)
        print(f"wrote {args.json}")


def summary(rounds: list[dict], params: int, peak_flops: float) -> dict:
    """A side's rounds -> its first round's counts (every round redoes the same samples) with tokens/s and the
    share of the matmul peak (2 x parameters x tokens/s: one forward pass a token) as medians over rounds."""
    tps = [r["tokens_per_s"] for r in rounds]
    return dict(rounds[0], tokens_per_s=statistics.median(tps), tokens_per_s_runs=tps,
                seconds=statistics.median(r["seconds"] for r in rounds),
                share_of_peak=2 * params * statistics.median(tps) / peak_flops,
                share_runs=[2 * params * t / peak_flops for t in tps])


def report_lines(res: dict) -> list[str]:
    """The table, the ratios engine / generate, and the issue's goal, met or not."""
    headers = ("side", "what runs", "samples", "mean generated tokens", "cut at max_new_tokens", "s per call",
               "tokens/s", "2·N·tokens/s of matmul peak")
    rows = [[side, SIDES[side], str(r["samples"]), f"{r['mean_len']:.1f}", f"{r['cut_share']:.0%}",
             f"{r['seconds']:.2f}", common.spread(r["tokens_per_s_runs"]),
             common.spread([100 * s for s in r["share_runs"]], "{:.2f}") + "%"]
            for side, r in res.items()]
    lines = [*common.markdown_table(headers, rows), ""]
    for ours, theirs in RATIOS:
        if ours in res and theirs in res:
            x = res[ours]["tokens_per_s"] / res[theirs]["tokens_per_s"]
            lines.append(f"{ours} / {theirs}: tokens/s x{x:.2f} ({'faster' if x > 1 else 'SLOWER'}), mean generated "
                         f"tokens {res[ours]['mean_len']:.1f} vs {res[theirs]['mean_len']:.1f}")
    ours = [s for s in res if s.startswith("engine")]
    theirs = [s for s in res if s.startswith("hf")]
    if ours and theirs:
        best_ours = max(ours, key=lambda s: res[s]["tokens_per_s"])
        best_theirs = max(theirs, key=lambda s: res[s]["tokens_per_s"])
        x = res[best_ours]["tokens_per_s"] / res[best_theirs]["tokens_per_s"]
        lines.append(f"Goal: the engine >= x{SPEED_GOAL:g} generate's tokens/s ({best_ours} against generate's "
                     f"fastest, {best_theirs}): x{x:.2f}, {'met' if x >= SPEED_GOAL else 'NOT met'}.")
    return lines


if __name__ == "__main__":
    main()
