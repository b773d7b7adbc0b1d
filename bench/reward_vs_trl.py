"""posttrain reward vs TRL's RewardTrainer: the same model, pairs and work, in one run.

    python bench/reward_vs_trl.py                    # bf16, 30 steps of 16 pairs, every side once, the shipped model
    python bench/reward_vs_trl.py --repeats 3 --json bench/reward_vs_trl.json
    python bench/reward_vs_trl.py --model DIR        # any model directory, with its own chat template
    python bench/reward_vs_trl.py --steps 3 --warmup-steps 1   # a smoke run: checks the method, not the numbers

Both sides train a reward model (the model's trunk with a new scalar head, seeded the same, Bradley-Terry loss
-log σ(r_chosen - r_rejected)) on the built-in world's preference pairs (`posttrain world build --seed 0
--scale 0.3`, or --world), minus --heldout pairs kept to score the trained models. Each side runs in its own
subprocess (this script with --side), so its memory is its own, and the sides take turns (rotated each round).
Time and memory are taken the same way on every side (bench/measure.py): steady-state steps after
--warmup-steps, and the memory training adds over what was resident right before its first step. tokens/s
counts the real tokens of every pair a step trains on, prompt + chosen and prompt + rejected, unpadded, the same
count on every side. Before anything runs, the script checks on every pair that TRL's tokenization (its
RewardTrainer preprocessing, with the model's own chat template) gives posttrain's token ids and that TRL reads
each reward at the same token as posttrain (the last); it stops if not. Quality: held-out pairwise accuracy,
computed the same way for every side's trained model. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import common  # bench/common.py, next to this script: the shared bench modules in one import
from common import OURS, Quality, StepClock

# TRL's RewardTrainer has no packing or padding-free mode (1.16): it pads the chosen and rejected chats of a
# micro-batch to the longest. Two orders: random (its default) and grouped by length (less padding).
TRL_SETTINGS = {
    "trl-pad": dict(grouped=False),
    "trl-pad-grouped": dict(grouped=True),
}
SIDES = (OURS, *TRL_SETTINGS)
QUALITY = Quality("heldout_accuracy", "held-out pairwise accuracy", lower_is_better=False)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, SIDES)
    common.add_pair_args(p, lr=5e-5)  # posttrain reward's default learning rate
    return p.parse_args(argv)


# ------------------------------------------------------------------ the sides (each in its own process)

def heldout_rewards(model, pairs) -> dict:
    """Held-out pairwise accuracy (ties count as wrong), mean margin r_c - r_r and Bradley-Terry loss of a trained
    reward model, the same way for every side: plain transformers (the model class's own forward, so nothing a
    trainer patched onto the instance, such as accelerate's autocast wrapper, runs), fp32, each chat alone and
    unpadded, as AutoModelForSequenceClassification scores a chat (the head at its last token)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    forward = type(model).forward
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        def score(ids):
            return forward(model, input_ids=torch.tensor([ids]), use_cache=False).logits[0, 0].float()

        m = torch.stack([score(p.chosen.input_ids) - score(p.rejected.input_ids) for p in pairs])
    return dict(heldout_accuracy=float((m > 0).float().mean()), heldout_margin=float(m.mean()),
                heldout_bt_loss=float(-F.logsigmoid(m).mean()), heldout_pairs=len(pairs))


def _reward_config(args):
    from posttrain.stages.reward import RewardConfig

    return common.posttrain_pair_config(RewardConfig(), args)


def run_posttrain(args) -> dict:
    from posttrain.stages.reward import PairwiseReward

    cfg = _reward_config(args)
    tok, train, heldout, model, device, dtype, start = common.posttrain_pair_setup(args, cfg, head="score")
    objective = PairwiseReward(tok.pad_token_id, cfg.data.max_length, cfg.loss)
    result = common.posttrain_pair_fit(args, model, train, cfg, objective, device, dtype)
    return dict(result, start_weights=start, **heldout_rewards(model, heldout))


def run_trl(args, setting: dict) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from datasets import Dataset, disable_progress_bars
    from trl import RewardConfig, RewardTrainer

    from posttrain.models import load_model, resolve_dtype

    disable_progress_bars()
    pt = _reward_config(args).train
    dtype = resolve_dtype(args.dtype)
    tok = common.load_tokenizer(args.model)  # the model's own template: TRL renders prompt + answer with it
    torch.manual_seed(args.seed)  # the new score head: the same initialisation on every side
    model = load_model(args.model, "cpu", head="score")
    model.config.pad_token_id = tok.pad_token_id
    start = common.weights_fingerprint(model)
    data = Dataset.from_list(common.preference_rows(args.data))  # prompt/chosen/rejected; no meta, no margin
    micro, accum = common.trl_batching(args)
    counts = dict(real=0, padded=0)
    micro_losses = []

    CountingRewardTrainer = common.counting_trainer(RewardTrainer, counts, micro_losses, pt, setting["grouped"])

    clock = StepClock(lambda: counts["real"])
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out, max_steps=args.steps, learning_rate=pt.lr, adam_beta1=pt.beta1, adam_beta2=pt.beta2,
            weight_decay=0.0, max_grad_norm=pt.max_grad_norm, gradient_accumulation_steps=accum,
            per_device_train_batch_size=micro, max_length=args.max_length, center_rewards_coefficient=None,
            bf16=dtype == "bf16", use_cpu=True, gradient_checkpointing=False, seed=args.seed,
            logging_steps=args.steps, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        trainer = CountingRewardTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                                        callbacks=[common.clock_callback(clock)])
        # TRL's own tokenized rows == posttrain's pairs, and every reward read at the chat's last token in the
        # batches its collator pads (a pad token that is EOS must not move it)
        train_pairs = common.posttrain_pairs(tok, args.data, args.max_length)[0]
        check = common.check_pairs(tok, train_pairs, trainer.train_dataset, "reward")
        elsewhere = common.reward_read_elsewhere(
            common.trl_pair_batches(trainer.train_dataset, trainer.data_collator, micro), tok.pad_token_id)
        if problem := check.problems or (elsewhere and f"{elsewhere} rewards read before the chat's last token"):
            raise SystemExit(f"TRL {setting}: {problem}.")
        heldout = common.posttrain_pairs(tok, args.heldout_data, args.max_length)[0]
        trainer.train()
        clock.stop()
        clock.check(trainer.state.global_step, counts["real"])
    losses = [sum(micro_losses[i:i + accum]) for i in range(0, len(micro_losses), accum)]
    return dict(dtype=dtype, steps=trainer.state.global_step, real_tokens=counts["real"],
                padded_tokens=counts["padded"], losses=losses, batching=f"{micro} pairs x {accum}",
                optimizer=common.trl_optimizer(cfg), params=sum(p.numel() for p in model.parameters()),
                start_weights=start, checked=f"pairs and reward positions: TRL's dataset ({len(check.lengths)})",
                **heldout_rewards(model, heldout), **clock.result(args.warmup_steps))


# ------------------------------------------------------------------ the driver

def describe(k, side, r):
    return (f"  round {k} {side:15s} {r['tokens_per_s']:8,.0f} tokens/s ({r['timed_steps']} steps, "
            f"{r['timed_s']:.1f} s)  train peak Δ {r['train_delta_mb']:5,.0f} MB (peak {r['train_peak_mb']:,.0f}, "
            f"process {r['peak_rss_mb']:,.0f})  train loss {r['final_loss']:.3f}  held-out accuracy "
            f"{r['heldout_accuracy']:.3f} (margin {r['heldout_margin']:+.3f})  checked: {r['checked']}")


def report(res: dict, env: dict, args) -> str:
    headers = ("side", "micro-batch x accumulation", "optimizer", "dtype", "steps (timed)", "real tokens",
               "padded tokens", *common.MEASURE_HEADERS, f"train loss (last {args.loss_window})",
               "held-out accuracy", "held-out margin", "held-out BT loss")
    rows = [(s, r["batching"], r["optimizer"], r["dtype"], f"{r['steps']} ({r['timed_steps']})",
             f"{r['real_tokens']:,}", f"{r['padded_tokens']:,}", *common.measure_cells(r), f"{r['final_loss']:.3f}",
             f"{r['heldout_accuracy']:.3f}", f"{r['heldout_margin']:+.3f}", f"{r['heldout_bt_loss']:.3f}")
            for s, r in res.items()]
    text = [common.pair_method_text(env, res, args, "Reward model (Bradley-Terry)"), "",
            *common.markdown_table(headers, rows), ""]
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
    env, ex, res = common.run_pair_bench(args, __file__, sides, "reward", describe)
    print("\n" + report(res, env, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, args=vars(args), data=ex, results=res), indent=1))


if __name__ == "__main__":
    main()
