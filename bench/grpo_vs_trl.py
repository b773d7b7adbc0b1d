"""posttrain GRPO vs TRL's GRPOTrainer: the same model, prompts and iterations, in one run.

    python bench/grpo_vs_trl.py                       # the shipped model, 4 prompts x G 8, 32 new tokens, 4 iterations
    python bench/grpo_vs_trl.py --group-size 4        # G 4: less for posttrain to share
    python bench/grpo_vs_trl.py --model DIR --steps 3 # any model directory, with its own chat template
    python bench/grpo_vs_trl.py --prompts-per-step 8 --group-size 8 --max-new-tokens 64 --steps 6 --repeats 3

An iteration is the same work on both sides: G completions to each of P prompts (P x G samples, up to
--max-new-tokens each, at --temperature), their numeric reward (posttrain's `numeric` verifier on both sides),
group-relative advantages and one optimizer step on the GRPO-family loss (--loss-type, β 0, μ 1, clip 0.2).
posttrain runs its `grpo` stage (`posttrain.stages.grpo`, in process, as `posttrain grpo` does); TRL runs
`GRPOTrainer` with num_generations G and P x G completions per optimizer step (one generation per step, so
no importance ratios on either side). Data: the built-in world's RLVR arithmetic prompts (build_rlvr(seed 0)),
or --prompts FILE (JSONL rows with `prompt` and `answer`). Each side runs in its own subprocess (this script with
--side). Time and memory are taken the same way on both sides (bench/measure.py StepClock, a post-step hook on
the AdamW): an iteration runs from the end of one optimizer step to the end of the next, so it holds generation,
reward, the update and each library's bookkeeping; the first --warmup-steps iterations are not timed, and
steps/s is 1 / the median of the others. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # bench/common.py, next to this script: the shared bench modules in one import
from common import OURS, StepClock

TRL = "trl"
SIDES = (OURS, TRL)
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo")  # the aggregations both libraries implement


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, SIDES, steps=4)
    p.set_defaults(warmup_steps=1, lr=1e-5)  # --steps counts iterations; posttrain grpo's learning rate
    p.add_argument("--prompts-per-step", type=int, default=4, help="P: prompts per iteration")
    p.add_argument("--group-size", type=int, default=8,
                   help="G: completions per prompt (at least 2, as TRL asks; default TRL GRPOConfig's num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="most tokens of a completion (stop token included)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, also the trained policy's")
    p.add_argument("--loss-type", default="dapo", choices=LOSS_TYPES, help="loss aggregation (TRL's names)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="completions per micro-batch of the update on both sides (0: all P x G at once); "
                        "TRL accumulates P x G / batch-size micro-batches")
    p.add_argument("--prompts", help="JSONL rows with `prompt` (text or messages) and `answer` (default: the "
                                     "built-in world's RLVR arithmetic prompts, seed 0)")
    p.add_argument("--pool", type=int, default=0,
                   help="prompts the sides draw from, the first of the file (0: P, so both sides answer the same P "
                        "prompts every iteration; more: each side draws its own P a step, of other lengths)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    samples = args.prompts_per_step * args.group_size
    args.batch_size = args.batch_size or samples
    args.pool = args.pool or args.prompts_per_step
    if args.pool < args.prompts_per_step:
        p.error(f"--pool {args.pool}: give at least --prompts-per-step ({args.prompts_per_step}) prompts.")
    if args.group_size < 2 or samples % args.batch_size:
        p.error(f"--group-size {args.group_size} / --batch-size {args.batch_size}: G must be at least 2 (TRL's "
                f"GRPOTrainer refuses fewer) and the batch size must divide P x G = {samples}.")
    return args


def prompt_rows(path: str | None) -> list[dict]:
    """{prompt: messages, answer} rows: the file's, else the world's RLVR arithmetic prompts (build_rlvr,
    seed 0; its refusal rows have no answer for both sides' numeric reward, so they are left out)."""
    from posttrain.data.prompts import as_messages
    from posttrain.world.chats import build_rlvr

    if not path:
        return [dict(prompt=as_messages(r["prompt"]), answer=str(r["answer"])) for r in build_rlvr(0) if "answer" in r]
    rows = []
    for line, text in enumerate(Path(path).read_text().splitlines(), 1):
        if text.strip():
            r = json.loads(text)
            if "answer" not in r:
                raise SystemExit(f"{path}, line {line}: the row has no 'answer'; both sides score the numeric answer, "
                                 'so give each row e.g. "answer": "42".')
            rows.append(dict(prompt=as_messages(r["prompt"]), answer=str(r["answer"])))
    return rows


def numeric_reward(completions, answer, **_):
    """TRL's reward function: posttrain's `numeric` verifier on the completion's text, as posttrain scores it."""
    from posttrain.grading.verifiers.numeric import verify

    return [verify(c[0]["content"], {"answer": a}).score for c, a in zip(completions, answer)]


def iteration_seconds(clock: StepClock, t0: float) -> list[float]:
    """Each iteration's wall time: from the clock's start (the first) or the previous optimizer step's end."""
    ends = [t for t, *_ in clock.ticks]
    return [b - a for a, b in zip([t0, *ends], ends)]


def iteration_tokens(clock: StepClock) -> list[int]:
    """Each iteration's prompt + completion tokens (the clock's running count at each optimizer step)."""
    counts = [n for _, n, _ in clock.ticks]
    return [b - a for a, b in zip([0, *counts], counts)]


def side_result(clock, t0, args, params, logged, split, rewards, lengths, clipped) -> dict:
    """One side's numbers: the clock's (time, memory, prompt + completion tokens), the steady iterations' median
    time and time split, generated tokens, reward and completion lengths per iteration."""
    clock.stop()
    r = clock.result(args.warmup_steps)
    its = iteration_seconds(clock, t0)
    steady = slice(args.warmup_steps, None)
    samples, tokens = args.prompts_per_step * args.group_size, iteration_tokens(clock)
    return dict(r, iterations=len(its), iteration_s=its, iteration_tokens=tokens, params=params,
                median_s=statistics.median(its[steady]),
                split={k: statistics.median(v[steady]) for k, v in split.items()},
                rewards=rewards, final_reward=rewards[-1], completion_lengths=lengths, clipped=clipped,
                timed_generated=sum(x * samples for x in lengths[steady]), logged_iterations=logged,
                prompt_tokens=[n - x * samples for n, x in zip(tokens, lengths)])


# ------------------------------------------------------------------ the sides (each in its own process)

def run_posttrain(args) -> dict:
    from posttrain.config import load_config
    from posttrain.stages import rl_loop
    from posttrain.stages.grpo import STAGE, GRPOConfig

    P, G = args.prompts_per_step, args.group_size
    sets = {"model.device": "cpu", "model.dtype": args.dtype, "data.eval_fraction": 0.0,
            "rollout.prompts_per_step": P, "rollout.group_size": G, "rollout.max_new_tokens": args.max_new_tokens,
            "rollout.temperature": args.temperature, "rollout.batch_size": P * G,  # every sample at once, as TRL
            "reward.verifiers": "[numeric]", "reward.track_gold": False, "rl.loss_type": args.loss_type,
            "rl.beta": 0.0, "rl.iterations": 1, "rl.minibatches": 1, "train.max_steps": args.steps,
            "train.lr": args.lr, "train.batch_size": args.batch_size, "train.seed": args.seed, "train.log_every": 1,
            "train.save_every": 0, "train.weight_decay": 0.0, "train.max_grad_norm": 1.0, "track.every": 0}
    cfg = load_config(GRPOConfig, None, [f"{k}={v}" for k, v in sets.items()])
    seen = {}
    original = rl_loop.RLLoop.run

    def clocked_run(loop):  # the loop is set up (model, engine, Trainer and its AdamW): start the clock here
        seen["clock"] = clock = StepClock(lambda: loop.trainer.state.tokens)
        loop.trainer.optimizer.register_step_post_hook(clock)
        seen["params"] = sum(p.numel() for p in loop.model.policy.parameters())
        clock.start()
        seen["t0"] = time.perf_counter()
        try:
            seen["result"] = original(loop)
            return seen["result"]
        finally:
            clock.stop()

    rl_loop.RLLoop.run = clocked_run
    note = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            STAGE.run(args.model, args.data, Path(tmp) / "grpo", cfg, progress=False)
    except Exception as e:  # after training (the artifact's save): the timed iterations are complete
        if "result" not in seen:
            raise
        note = f"posttrain's artifact save failed after training ({type(e).__name__}: {e}); training was timed"
        print("NOTE: " + note, file=sys.stderr)
    finally:
        rl_loop.RLLoop.run = original
    lines = seen["result"].metrics_lines  # the stage's metrics.jsonl lines, one per iteration
    lines = [x for x in lines if "reward" in x]
    clock, its = seen["clock"], iteration_seconds(seen["clock"], seen["t0"])
    split = {k: [x.get(f"time_{k}", 0.0) for x in lines] for k in ("generate", "reward", "update")}
    split["other"] = [t - sum(s[i] for s in split.values()) for i, t in enumerate(its)]
    return dict(side_result(clock, seen["t0"], args, seen["params"], len(lines), split, [x["reward"] for x in lines],
                            [x["response_length"] for x in lines], [x["no_eos"] for x in lines]),
                **({"note": note} if note else {}))


def check_trl_prompts(trainer, tok, rows) -> str:
    """TRL's own prompt tokenization (_tokenize_prompts) gives the token ids posttrain's engine samples from, and
    TRL stops generation on the tokens posttrain's engine stops on; exits otherwise."""
    from posttrain.data.chat import end_of_turn_token_ids, render_generation_prompt

    prompts = [r["prompt"] for r in rows]
    theirs = [list(x) for i in range(0, len(prompts), 256) for x in trainer._tokenize_prompts(prompts[i:i + 256])[0]]
    ours = [tok(render_generation_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    if bad:
        raise SystemExit(f"TRL tokenizes {len(bad)} of {len(rows)} prompts differently from posttrain (first: row "
                         f"{bad[0] + 1}): the sides would not sample from the same prompts.")
    stops = set(end_of_turn_token_ids(tok))
    if set(trainer.eos_token_ids) != stops:
        raise SystemExit(f"TRL stops generation on token ids {sorted(trainer.eos_token_ids)}, posttrain on "
                         f"{sorted(stops)}.")
    return f"prompt token ids of all {len(rows)} rows, stop tokens {sorted(stops)}"


def run_trl(args) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from datasets import Dataset, disable_progress_bars
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.data.chat import stop_generation_at_end_of_turn
    from posttrain.models import load_model, resolve_dtype
    from posttrain.stages.grpo import GRPOConfig as PosttrainGRPOConfig

    disable_progress_bars()
    pt = PosttrainGRPOConfig().train  # posttrain's AdamW betas and schedule, with the bench's lr and clipping
    pt.lr, pt.weight_decay, pt.max_grad_norm = args.lr, 0.0, 1.0
    dtype = resolve_dtype(args.dtype)
    tok = common.load_tokenizer(args.model)  # the model's own template, as posttrain renders prompts with it
    model = load_model(args.model, "cpu")
    stop_generation_at_end_of_turn(model, tok)  # TRL stops on generation_config.eos_token_id: the same stop tokens
    rows = prompt_rows(args.data)
    samples = args.prompts_per_step * args.group_size
    split = {"generate": [], "reward": []}
    clock = StepClock(lambda: trainer.state.num_input_tokens_seen)  # prompt + completion tokens, as posttrain's
    start = {}

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *a, **kw):
            t = time.perf_counter()
            out = super()._generate_single_turn(*a, **kw)
            split["generate"].append(time.perf_counter() - t)
            return out

        def _calculate_rewards(self, *a, **kw):
            t = time.perf_counter()
            out = super()._calculate_rewards(*a, **kw)
            split["reward"].append(time.perf_counter() - t)
            return out

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:  # posttrain's warmup + cosine exactly
                self.lr_scheduler = common.posttrain_schedule(optimizer or self.optimizer, num_training_steps, pt)
            return self.lr_scheduler

    class StartTime(TrainerCallback):  # runs after clock_callback's on_train_begin has started the clock
        def on_train_begin(self, *a, **kw):
            start["t0"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, max_steps=args.steps, learning_rate=pt.lr, adam_beta1=pt.beta1, adam_beta2=pt.beta2,
            weight_decay=0.0, max_grad_norm=pt.max_grad_norm, per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=samples // args.batch_size, num_generations=args.group_size,
            max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
            loss_type=args.loss_type, beta=0.0, num_iterations=1, epsilon=0.2, scale_rewards="group",
            importance_sampling_level="token", mask_truncated_completions=False, use_cpu=True,
            bf16=dtype == "bf16", gradient_checkpointing=False, seed=args.seed, logging_steps=1,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        if cfg.generation_batch_size != samples or cfg.steps_per_generation != cfg.gradient_accumulation_steps:
            raise SystemExit(f"TRL would generate {cfg.generation_batch_size} completions per generation, every "
                             f"{cfg.steps_per_generation} micro-batches: not P x G = {samples} per optimizer step.")
        trainer = TimedGRPOTrainer(model=model, reward_funcs=[numeric_reward], args=cfg,
                                   train_dataset=Dataset.from_list(rows), processing_class=tok,
                                   callbacks=[common.clock_callback(clock), StartTime()])
        checked = check_trl_prompts(trainer, tok, rows)
        if trainer.accelerator.mixed_precision != ("bf16" if dtype == "bf16" else "no"):
            raise SystemExit(f"TRL runs mixed precision {trainer.accelerator.mixed_precision!r} for dtype {dtype}: "
                             "not what posttrain runs (bf16 = autocast over fp32 weights).")
        trainer.train()
    logs = [x for x in trainer.state.log_history if "reward" in x]
    if trainer.ref_model is not None or len(logs) != args.steps or len(split["generate"]) != args.steps:
        raise SystemExit(f"TRL ran {len(split['generate'])} generations and logged {len(logs)} steps for "
                         f"{args.steps} iterations (or kept a reference model): not one generation per step.")
    its = iteration_seconds(clock, start["t0"])
    split["update"] = [t - g - r for t, g, r in zip(its, split["generate"], split["reward"])]
    split["other"] = [0.0] * len(its)  # TRL's bookkeeping is inside its step: counted in "update"
    return dict(side_result(clock, start["t0"], args, sum(p.numel() for p in model.parameters()), len(logs), split,
                            [x["reward"] for x in logs], [x["completions/mean_length"] for x in logs],
                            [x["completions/clipped_ratio"] for x in logs]), checked=checked)


# ------------------------------------------------------------------ the driver

def describe(k, side, r):
    return (f"  round {k} {side:9s} {1 / r['median_s']:6.3f} steps/s (median of {r['timed_steps']} iterations: "
            f"{r['median_s']:.2f} s; all: {', '.join(f'{t:.2f}' for t in r['iteration_s'])})  train peak Δ "
            f"{r['train_delta_mb']:5,.0f} MB (peak {r['train_peak_mb']:,.0f})  mean completion "
            f"{statistics.mean(r['completion_lengths']):.1f} tokens, cut {statistics.mean(r['clipped']):.0%}  "
            f"reward {', '.join(f'{x:.2f}' for x in r['rewards'])}" + (f"  NOTE: {r['note']}" if "note" in r else ""))


def summarise(runs: list[dict], peak_flops: float) -> dict:
    """Medians over rounds; the matmul share counts 2·N per generated token and 6·N per trained token."""
    for r in runs:
        flops = 2 * r["params"] * r["timed_generated"] + 6 * r["params"] * r["timed_tokens"]
        r["steps_per_s"], r["mfu"] = 1 / r["median_s"], flops / r["timed_s"] / peak_flops
    out = dict(runs[0])
    for k in ("steps_per_s", "median_s", "tokens_per_s", "mfu", "train_delta_mb", "train_peak_mb", "peak_rss_mb"):
        out[k + "_runs"] = [r[k] for r in runs]
        out[k] = statistics.median(out[k + "_runs"])
    out["split"] = {k: statistics.median(r["split"][k] for r in runs) for k in runs[0]["split"]}
    return out


def report(res: dict, env: dict, args) -> str:
    P, G = args.prompts_per_step, args.group_size
    headers = ("side", "steps/s", "iteration s", "generate s", "reward s", "update s", "other s",
               "prompt tokens / iteration", "prompt + completion tokens/s",
               "(2·N·gen + 6·N·trained)/s of matmul peak",
               "train peak Δ MB", "train peak MB", "mean completion tokens", "cut at max", "final mean reward")
    rows = [(s, common.spread(r["steps_per_s_runs"], "{:.3f}"), common.spread(r["median_s_runs"], "{:.2f}"),
             *(f"{r['split'][k]:.2f}" for k in ("generate", "reward", "update", "other")),
             f"{statistics.median(r['prompt_tokens']):,.0f}", common.spread(r["tokens_per_s_runs"]),
             common.spread([100 * m for m in r["mfu_runs"]], "{:.1f}") + "%",
             common.spread(r["train_delta_mb_runs"]), common.spread(r["train_peak_mb_runs"]),
             f"{statistics.mean(r['completion_lengths']):.1f}", f"{statistics.mean(r['clipped']):.0%}",
             f"{r['final_reward']:.3f}") for s, r in res.items()]
    params = next(iter(res.values()))["params"]
    text = [common.environment_sentence(env) + f" Model {args.model} ({params / 1e6:.1f}M parameters). "
            f"GRPO ({args.loss_type}, β 0, μ 1): {args.steps} iterations of {P} prompts x G {G} = "
            f"{P * G} completions, up to {args.max_new_tokens} new tokens at temperature {args.temperature:g}, "
            f"numeric reward, one optimizer step of micro-batches of {args.batch_size} completions, lr {args.lr:g}. "
            f"Prompts: " + (f"the same {P} on both sides every iteration (the first {P} of the data), each answered "
                            f"G times" if args.pool == P else f"each side draws its own {P} of the same {args.pool} "
                            "each iteration (their prompt lengths differ)") + ". "
            f"Timed: the iterations after the first {args.warmup_steps}; steps/s = 1 / their median time.", "",
            *common.markdown_table(headers, rows), ""]
    if OURS in res and TRL in res:
        pt, trl = res[OURS], res[TRL]
        text.append(f"{OURS} / {TRL}: steps/s x{pt['steps_per_s'] / trl['steps_per_s']:.2f}, generate time "
                    f"x{pt['split']['generate'] / max(trl['split']['generate'], 1e-9):.2f}, update time "
                    f"x{(pt['split']['update'] + pt['split']['other']) / max(trl['split']['update'], 1e-9):.2f}, "
                    f"train peak Δ x{pt['train_delta_mb'] / max(trl['train_delta_mb'], 1):.2f}, final mean reward "
                    f"{pt['final_reward'] - trl['final_reward']:+.3f}")
    text += ["", "What differs (each library's own way): posttrain prefills each prompt once for its G samples, "
             "drops finished rows from the batch and decodes from the weights on a KV buffer (llama-like families); "
             "its update lays each prompt out once for its G responses (CPU). TRL's transformers `generate` prefills "
             "all P x G prompt copies and keeps finished rows, padded, until the longest completion ends, and its "
             "update carries a copy of the prompt per completion. Both stop on the same tokens "
             f"(checked: {next((r['checked'] for r in res.values() if 'checked' in r), 'TRL not run')}). Completions "
             "are random on both sides, so their lengths (and the work) differ: compare the mean completion tokens."]
    return "\n".join(text)


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        common.emit_result(run_posttrain(args) if args.side == OURS else run_trl(args))
        return
    sides = common.selected_sides(args, SIDES)
    env = common.environment(args.dtype)  # the sides inherit this process's threads
    print(common.environment_line(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = prompt_rows(args.prompts)[:args.pool]
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"model {args.model}; the first {len(rows)} prompts of "
              f"{args.prompts or 'the world (build_rlvr, seed 0)'}", flush=True)
        if len(rows) < args.pool:
            sys.exit(f"--pool {args.pool}: {args.prompts} holds {len(rows)} prompts.")
        opts = dict(data=data, model=args.model, steps=args.steps, warmup_steps=args.warmup_steps, dtype=args.dtype,
                    lr=args.lr, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, loss_type=args.loss_type,
                    batch_size=args.batch_size, pool=args.pool, seed=args.seed)
        runs = common.run_rounds(sides, args.repeats, lambda side: common.run_side(__file__, side, opts), describe)
    res = {s: summarise(rs, env["matmul_peak_flops"]) for s, rs in runs.items()}
    print("\n" + report(res, env, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, args=vars(args), results=res), indent=1))


if __name__ == "__main__":
    sys.exit(main())
