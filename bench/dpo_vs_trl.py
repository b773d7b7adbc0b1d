"""posttrain DPO vs TRL's DPOTrainer: the same model, pairs and work, in one run.

    python bench/dpo_vs_trl.py                       # bf16, 30 steps of 16 pairs, every side once, the shipped model
    python bench/dpo_vs_trl.py --repeats 3 --json bench/dpo_vs_trl.json
    python bench/dpo_vs_trl.py --model DIR           # any model directory, with its own chat template
    python bench/dpo_vs_trl.py --steps 3 --warmup-steps 1      # a smoke run: checks the method, not the numbers

Both sides run DPO with the sigmoid loss -log σ(β [(log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r))])
(β = --beta), log-probs summed over the answer's tokens, and the reference's log-probs precomputed once with the
starting weights before training (posttrain: cache_reference_logps, as `posttrain dpo` does; TRL:
precompute_ref_log_probs=True, no reference model kept). That reference pass is timed apart, on every side, and
reported beside the training numbers; it is not in tokens/s. Data: the built-in world's preference pairs
(`posttrain world build --seed 0 --scale 0.3`, or --world), minus --heldout pairs kept to score the trained
policies. Each side runs in its own subprocess (this script with --side), so its memory is its own, and the sides
take turns (rotated each round). Time and memory are taken the same way on every side (bench/measure.py):
steady-state steps after --warmup-steps, and the memory training adds over what was resident right before its first
step. tokens/s counts the real tokens of every pair a step trains on, prompt + chosen and prompt + rejected,
unpadded, the same count on every side. Before anything runs, the script checks on every pair that TRL's
tokenization (its DPOTrainer preprocessing, with the model's own chat template) gives posttrain's token ids and
that TRL's completion mask selects exactly posttrain's answer tokens (each answer up to its end-of-turn token);
it stops if not. Quality: the held-out DPO loss against the starting model, computed the same way for every side's
trained policy. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import common  # bench/common.py, next to this script: the shared bench modules in one import
from common import OURS, Quality, StepClock

# TRL's DPOTrainer pads (1.16: padding_free=True "is temporarily unavailable" and falls back to padding): the chosen
# and rejected sequences of a micro-batch padded to the longest. Two orders: random (its default), grouped by length.
TRL_SETTINGS = {
    "trl-pad": dict(grouped=False),
    "trl-pad-grouped": dict(grouped=True),
}
SIDES = (OURS, *TRL_SETTINGS)
QUALITY = Quality("heldout_dpo_loss", "held-out DPO loss", lower_is_better=True)
REF_MEASURES = ("ref_s", "ref_tokens_per_s", "ref_delta_mb")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, SIDES)
    common.add_pair_args(p, lr=5e-6)  # posttrain dpo's default learning rate
    p.add_argument("--beta", type=float, default=0.1, help="DPO's β (sigmoid loss) on every side")
    p.add_argument("--ref-batch-pairs", type=int, default=16,
                   help="pairs per batch of the reference pass on every side (posttrain's default, 16)")
    p.add_argument("--heldout-ref", help=argparse.SUPPRESS)  # internal: the held-out reference log-probs (JSON)
    return p.parse_args(argv)


# ------------------------------------------------------------------ held-out quality, the same for every side

def answer_logps(model, pairs) -> list[list[float]]:
    """[log π(chosen answer), log π(rejected answer)] of every pair: the answer tokens' log-probs (posttrain's loss
    mask, which check_pairs proved equal to TRL's completion mask) summed, in plain transformers (the model class's
    own forward, so nothing a trainer patched onto the instance runs), fp32, each sequence alone and unpadded."""
    import torch

    model.eval()
    forward, out = type(model).forward, []
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for p in pairs:
            row = []
            for ex in (p.chosen, p.rejected):
                ids = torch.tensor([ex.input_ids])
                logits = forward(model, input_ids=ids, use_cache=False).logits[0, :-1].float()
                sel = torch.tensor(ex.loss_mask[1:], dtype=torch.bool)  # position t predicts token t + 1
                logp = torch.log_softmax(logits[sel], -1).gather(-1, ids[0, 1:][sel][:, None])
                row.append(float(logp.sum()))
            out.append(row)
    return out


def heldout_dpo(model, pairs, ref: list[list[float]], beta: float) -> dict:
    """The trained policy's DPO loss, implicit-reward accuracy (ties wrong) and mean margin β·Δ on the held-out
    pairs, against the starting model's log-probs (computed once, by the driver, with answer_logps)."""
    import torch
    import torch.nn.functional as F

    pol = torch.tensor(answer_logps(model, pairs), dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    delta = (pol[:, 0] - r[:, 0]) - (pol[:, 1] - r[:, 1])
    return dict(heldout_dpo_loss=float(-F.logsigmoid(beta * delta).mean()),
                heldout_accuracy=float((delta > 0).double().mean()), heldout_margin=float(beta * delta.mean()),
                heldout_pairs=len(pairs))


def heldout_reference(args, tmp, files) -> dict:
    """The driver's part: the starting model's held-out answer log-probs, written once for every side."""
    from transformers.utils import logging

    from posttrain.models import load_model

    logging.disable_progress_bar()
    tok = common.load_tokenizer(args.model)
    pairs = common.posttrain_pairs(tok, files["heldout"], args.max_length)[0]
    path = Path(tmp) / "heldout_ref.json"
    path.write_text(json.dumps(answer_logps(load_model(args.model, "cpu"), pairs)))
    return dict(heldout_ref=path, beta=args.beta, ref_batch_pairs=args.ref_batch_pairs)


# ------------------------------------------------------------------ the sides (each in its own process)

def _dpo_config(args):
    from posttrain.stages.dpo import DPOConfig

    cfg = common.posttrain_pair_config(DPOConfig(), args)
    cfg.loss.type, cfg.loss.beta = "sigmoid", args.beta
    return cfg


def _ref_result(meter, tokens: int, mean_logps: tuple[float, float]) -> dict:
    return dict(ref_s=meter.seconds, ref_tokens=tokens, ref_tokens_per_s=tokens / meter.seconds,
                ref_delta_mb=meter.delta_mb, ref_peak_mb=meter.peak_mb,
                ref_process_peak_before=meter.process_peak_before,
                ref_mean_chosen=mean_logps[0], ref_mean_rejected=mean_logps[1])


def _with_ref_peak(result: dict) -> dict:
    """The process peak covers the reference pass too (its meter reset VmHWM, so StepClock's view starts after it)."""
    result["peak_rss_mb"] = max(result["peak_rss_mb"], result["ref_peak_mb"], result["ref_process_peak_before"])
    return result


def run_posttrain(args) -> dict:
    from posttrain.data.preferences import pair_tokens
    from posttrain.stages.dpo import DirectPreference, cache_reference_logps

    cfg = _dpo_config(args)
    tok, train, heldout, model, device, dtype, start = common.posttrain_pair_setup(args, cfg)
    objective = DirectPreference(tok.pad_token_id, cfg.data.max_length, cfg.loss)
    with common.PassMeter() as meter:  # as the stage does: the starting weights, once, before the first step
        cache_reference_logps(model, train, objective, device, dtype, batch_size=args.ref_batch_pairs)
    n = len(train)
    ref = _ref_result(meter, pair_tokens(train), (sum(p.ref_chosen for p in train) / n,
                                                 sum(p.ref_rejected for p in train) / n))
    result = common.posttrain_pair_fit(args, model, train, cfg, objective, device, dtype)
    ref_heldout = json.loads(Path(args.heldout_ref).read_text())
    return _with_ref_peak(dict(result, ref_batching=f"{args.ref_batch_pairs} pairs (packed)", start_weights=start,
                               **ref, **heldout_dpo(model, heldout, ref_heldout, args.beta)))


def run_trl(args, setting: dict) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from datasets import Dataset, disable_progress_bars
    from trl import DPOConfig, DPOTrainer

    from posttrain.models import load_model, resolve_dtype

    disable_progress_bars()
    pt = _dpo_config(args).train
    dtype = resolve_dtype(args.dtype)
    tok = common.load_tokenizer(args.model)  # the model's own template: TRL renders prompt (+ answer) with it
    model = load_model(args.model, "cpu")
    start = common.weights_fingerprint(model)
    data = Dataset.from_list(common.preference_rows(args.data))  # prompt/chosen/rejected; no meta
    micro, accum = common.trl_batching(args)
    counts = dict(real=0, padded=0)
    micro_losses, meters = [], {}

    class CountingDPOTrainer(common.counting_trainer(DPOTrainer, counts, micro_losses, pt, setting["grouped"])):
        def _precompute_ref_logps(self, dataset, name, batch_size):  # runs inside __init__, before train()
            with common.PassMeter() as meter:
                out = super()._precompute_ref_logps(dataset, name, batch_size)
            meters[name] = meter
            return out

    clock = StepClock(lambda: counts["real"])
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            output_dir=out, max_steps=args.steps, learning_rate=pt.lr, adam_beta1=pt.beta1, adam_beta2=pt.beta2,
            weight_decay=0.0, max_grad_norm=pt.max_grad_norm, gradient_accumulation_steps=accum,
            per_device_train_batch_size=micro, max_length=args.max_length, loss_type=["sigmoid"], beta=args.beta,
            label_smoothing=0.0, precompute_ref_log_probs=True, precompute_ref_batch_size=args.ref_batch_pairs,
            bf16=dtype == "bf16", use_cpu=True, gradient_checkpointing=False, seed=args.seed,
            logging_steps=args.steps, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        trainer = CountingDPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=data, processing_class=tok,
                                     callbacks=[common.clock_callback(clock)])
        ds = trainer.train_dataset  # TRL's own tokenized rows, with their reference log-probs
        if "train" not in meters or trainer.ref_model is not None:
            raise SystemExit("TRL did not precompute the reference log-probs in this process (or kept a reference "
                             "model): the reference pass would not be measured like posttrain's.")
        # TRL's rows == posttrain's pairs (tokens and answer masks); in the batches its collator pads, every answer
        # is one trained span up to its end of turn, and no padding is trained (a pad token that is EOS included)
        check = common.check_pairs(tok, common.posttrain_pairs(tok, args.data, args.max_length)[0], ds, "dpo")
        turns = common.loss_turns(tok, ((b["input_ids"], b["completion_mask"].bool(), b["attention_mask"] == 0)
                                        for b in common.trl_pair_batches(ds, trainer.data_collator, micro)))
        if problem := check.problems or turns.problems(2 * len(ds)):
            raise SystemExit(f"TRL {setting}: {problem}.")
        ref_tokens = sum(2 * len(p) + len(c) + len(r)
                         for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
        ref = _ref_result(meters["train"], ref_tokens, (sum(ds["ref_chosen_logps"]) / len(ds),
                                                        sum(ds["ref_rejected_logps"]) / len(ds)))
        heldout = common.posttrain_pairs(tok, args.heldout_data, args.max_length)[0]
        trainer.train()
        clock.stop()
        clock.check(trainer.state.global_step, counts["real"])
    losses = [sum(micro_losses[i:i + accum]) for i in range(0, len(micro_losses), accum)]
    ref_heldout = json.loads(Path(args.heldout_ref).read_text())
    return _with_ref_peak(dict(
        dtype=dtype, steps=trainer.state.global_step, real_tokens=counts["real"], padded_tokens=counts["padded"],
        losses=losses, batching=f"{micro} pairs x {accum}", optimizer=common.trl_optimizer(cfg),
        ref_batching=f"{args.ref_batch_pairs} pairs (padded)", params=sum(p.numel() for p in model.parameters()),
        start_weights=start, checked=f"pairs, answer masks, end of turn: TRL's dataset ({len(ds)})", **ref,
        **heldout_dpo(model, heldout, ref_heldout, args.beta), **clock.result(args.warmup_steps)))


# ------------------------------------------------------------------ the driver

def describe(k, side, r):
    return (f"  round {k} {side:15s} {r['tokens_per_s']:8,.0f} tokens/s ({r['timed_steps']} steps, "
            f"{r['timed_s']:.1f} s)  train peak Δ {r['train_delta_mb']:5,.0f} MB (peak {r['train_peak_mb']:,.0f}, "
            f"process {r['peak_rss_mb']:,.0f})  reference pass {r['ref_s']:.1f} s ({r['ref_tokens_per_s']:,.0f} "
            f"tokens/s, peak Δ {r['ref_delta_mb']:,.0f} MB)  train loss {r['final_loss']:.3f}  held-out DPO loss "
            f"{r['heldout_dpo_loss']:.4f} (accuracy {r['heldout_accuracy']:.3f})  checked: {r['checked']}")


def reference_lines(res: dict, peak_flops: float) -> list[str]:
    """The reference pass on each side: not in tokens/s or the verdict, but part of what a DPO run costs."""
    lines = ["Reference pass (the starting model's log-probs of every training pair, before the first step; not in "
             "tokens/s or the verdict):"]
    for s, r in res.items():
        lines.append(f"  {s}: {common.spread(r['ref_s_runs'], '{:.1f}')} s for {r['ref_tokens']:,} tokens in batches "
                     f"of {r['ref_batching']}, {common.spread(r['ref_tokens_per_s_runs'])} tokens/s "
                     f"({2 * r['params'] * r['ref_tokens_per_s'] / peak_flops:.1%} of the matmul peak at "
                     f"2·N·tokens/s), "
                     f"peak Δ {common.spread(r['ref_delta_mb_runs'])} MB; mean reference log-prob chosen "
                     f"{r['ref_mean_chosen']:.2f}, rejected {r['ref_mean_rejected']:.2f}")
    if OURS in res:
        pt = res[OURS]
        lines += [f"  {OURS} / {s}: reference pass time x{pt['ref_s'] / r['ref_s']:.2f}, peak Δ "
                  f"x{pt['ref_delta_mb'] / max(r['ref_delta_mb'], 1):.2f}" for s, r in res.items() if s != OURS]
    for key in ("ref_mean_chosen", "ref_mean_rejected"):  # the same quantity (bf16 noise aside) on every side
        values = [r[key] for r in res.values()]
        if max(values) - min(values) > 0.005 * max(abs(v) for v in values) + 0.05:
            lines.append(f"  WARNING: the sides' reference log-probs differ ({key}: "
                         f"{', '.join(f'{v:.2f}' for v in values)}): they do not score the same answer tokens.")
    return lines


def report(res: dict, env: dict, args) -> str:
    headers = ("side", "micro-batch x accumulation", "optimizer", "dtype", "steps (timed)", "real tokens",
               "padded tokens", *common.MEASURE_HEADERS, "reference pass s", f"train loss (last {args.loss_window})",
               "held-out DPO loss", "held-out reward accuracy", "held-out margin β·Δ")
    rows = [(s, r["batching"], r["optimizer"], r["dtype"], f"{r['steps']} ({r['timed_steps']})",
             f"{r['real_tokens']:,}", f"{r['padded_tokens']:,}", *common.measure_cells(r),
             common.spread(r["ref_s_runs"], "{:.1f}"), f"{r['final_loss']:.4f}", f"{r['heldout_dpo_loss']:.4f}",
             f"{r['heldout_accuracy']:.3f}", f"{r['heldout_margin']:+.4f}") for s, r in res.items()]
    what = f"DPO (sigmoid loss, β {args.beta:g}, reference log-probs precomputed)"
    text = [common.pair_method_text(env, res, args, what), "", *common.markdown_table(headers, rows), "",
            *reference_lines(res, env["matmul_peak_flops"]), ""]
    if OURS in res and len(res) > 1:
        text += (common.ratio_lines(res, QUALITY) + common.verdict_lines(res, QUALITY, speed_goal=3.0)
                 + common.goal_lines(res))
    return "\n".join(text)


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        common.emit_result(run_posttrain(args) if args.side == OURS else run_trl(args, TRL_SETTINGS[args.side]))
        return
    sides = common.selected_sides(args, SIDES)
    env, ex, res = common.run_pair_bench(args, __file__, sides, "dpo", describe, prepare=heldout_reference,
                                         extra=REF_MEASURES)
    print("\n" + report(res, env, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, args=vars(args), data=ex, results=res), indent=1))


if __name__ == "__main__":
    sys.exit(main())
