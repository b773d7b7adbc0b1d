"""posttrain SFT vs TRL's SFTTrainer: the same model, data and work, in one run.

    python bench/sft_vs_trl.py                    # bf16, 30 steps, every side once, the shipped model
    python bench/sft_vs_trl.py --repeats 2 --json bench/sft_vs_trl.json
    python bench/sft_vs_trl.py --model DIR        # any model directory, with its own chat template

Each side runs in its own subprocess (this script with --side), so its memory is
its own, and the sides take turns (rotated each round) so that a neighbour's load
on a shared CPU does not always land on the same side. Time and memory are taken
the same way on every side (bench/measure.py): steady-state steps after
--warmup-steps, and the memory training adds over what was resident right before
its first step. posttrain uses the model's own chat template; TRL gets the same
template with {% generation %} markers (bench/templates.py), and the script checks that
both train on the same tokens with the same loss mask. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import common  # bench/common.py, next to this script: the shared bench modules in one import
from common import OURS, LossTurns, StepClock

# TRL's settings: padded batches in random order (its default), padded batches grouped by length (less padding),
# and best-fit-decreasing packing, which TRL runs padding-free (all rows of a micro-batch flattened into one).
TRL_SETTINGS = {
    "trl-pad": dict(packing=False),
    "trl-pad-grouped": dict(packing=False, train_sampling_strategy="group_by_length"),
    "trl-pack": dict(packing=True, packing_strategy="bfd"),
}
SIDES = (OURS, *TRL_SETTINGS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p, SIDES)
    p.add_argument("--max-length", type=int, default=512, help="longest example, and the packed row length")
    p.add_argument("--batch-tokens", type=int, default=2048,
                   help="effective batch in real tokens per step: packed sides take batch_tokens/max_length rows, "
                        "trl-pad takes as many chats as hold that many tokens on average")
    p.add_argument("--trl-micro-tokens", type=int, default=512,
                   help="TRL's micro-batch in tokens, gradient accumulation making up the effective batch "
                        "(512 ran fastest here: 1 packed row or 9 chats; posttrain is fastest with one micro-batch)")
    p.add_argument("--loss-window", type=int, default=10, help="final loss = mean training loss of the last N steps")
    p.add_argument("--pad-micro", type=int, help=argparse.SUPPRESS)  # internal: trl-pad's batch, sized by main()
    p.add_argument("--pad-accum", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------ the sides (each in its own process)

def eval_loss(model, args) -> float:
    """Assistant-token loss on the world's held-out chats (sft_eval.jsonl), computed the same way for every
    side (posttrain's nll_and_count, fp32, one example per row, the model's own template), so trained models
    compare on equal terms."""
    import torch

    from posttrain.data.formats import load_dataset_rows
    from posttrain.data.packing import collate, unpacked_rows
    from posttrain.data.sft import build_examples

    tok = common.load_tokenizer(args.model)
    fmt, rows = load_dataset_rows(Path(args.data).with_name("sft_eval.jsonl"), allowed=("conversational",))
    examples = build_examples(tok, rows, fmt, max_length=args.max_length)[0]
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 50):
            s, c = common.nll_and_count(model, collate(unpacked_rows(examples[i:i + 50]), tok.pad_token_id))
            total, n = total + float(s), n + c
    return total / n


def _train_config(args):
    from posttrain.stages.sft import SFTConfig

    cfg = SFTConfig()
    cfg.model.dtype = args.dtype
    cfg.data.max_length, cfg.data.packing, cfg.data.assistant_only_loss = args.max_length, True, True
    cfg.data.eval_fraction = 0.0  # train on every chat, as TRL does; no eval
    t = cfg.train
    t.lr, t.max_steps, t.grad_accum, t.max_grad_norm, t.weight_decay = args.lr, args.steps, 1, 1.0, 0.0
    t.batch_size = max(1, args.batch_tokens // args.max_length)
    t.log_every, t.eval_every, t.save_every = 1, 0, 0  # one metrics dict per step: what the loss column needs
    return cfg


def _check_turns(side: str, counts: LossTurns, data_path) -> str:
    """Every reply trained up to its end-of-turn token, no loss on padding, in the batches as `side` collates them."""
    expected = common.assistant_turns(data_path)
    if problem := counts.problems(expected):
        raise SystemExit(f"{side}: {problem}.")
    return f"{counts.ended}/{expected}"


def run_posttrain(args) -> dict:
    from posttrain.models import load_model, resolve_dtype
    from posttrain.stages.sft import prepare_sft_rows

    cfg = _train_config(args)
    dtype = resolve_dtype(args.dtype)
    tok, model = common.load_tokenizer(args.model), load_model(args.model, "cpu")  # the model's own template
    rows = prepare_sft_rows(tok, args.data, cfg)[0]
    bs, pad = cfg.train.batch_size, tok.pad_token_id
    turns = common.loss_turns(tok, common.posttrain_batches(rows, bs, pad))  # every row, as fit() collates them
    trainer = common.posttrain_trainer(model, rows, cfg.train, pad_id=pad, dtype=dtype)
    micro = [trainer._micro_batch(i) for i in range(args.steps)]  # the micro-batches fit() will consume
    targets = sum(sum(r.loss_mask) for rows in micro for r in rows)
    padded = sum(len(rows) * max(len(r) for r in rows) for rows in micro)  # collate pads to the longest row
    clock = StepClock(lambda: trainer.state.tokens)  # real tokens, counted by fit() before each step's forward
    trainer.optimizer.register_step_post_hook(clock)
    clock.start()
    res = trainer.fit()
    clock.stop()
    clock.check(res.steps, trainer.state.tokens)
    losses = [m["loss"] for m in res.metrics_lines if "loss" in m]
    return dict(dtype=dtype, eval_loss=eval_loss(model, args), steps=res.steps, real_tokens=res.tokens,
                batching=f"{bs} rows x 1", params=sum(p.numel() for p in model.parameters()),
                padded_tokens=padded, target_tokens=targets, losses=losses,
                turns_ended=_check_turns(OURS, turns, args.data), **clock.result(args.warmup_steps))


def run_trl(args, setting: dict) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_model, resolve_dtype

    pt = _train_config(args).train
    dtype = resolve_dtype(args.dtype)
    tok, model = common.load_tokenizer(args.model), load_model(args.model, "cpu")
    tok.chat_template = common.trl_chat_template(tok)[0]  # the model's template with generation markers
    lines = Path(args.data).read_text().splitlines()
    data = Dataset.from_list([{"messages": json.loads(line)["messages"]} for line in lines])
    if setting["packing"]:
        micro = max(1, min(pt.batch_size, args.trl_micro_tokens // args.max_length))
        while pt.batch_size % micro:
            micro -= 1
        accum = pt.batch_size // micro
    else:
        micro, accum = args.pad_micro, args.pad_accum
    counts = dict(real=0, padded=0, targets=0)
    micro_losses = []

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            # Padded batches carry an attention mask; padding-free (packed) batches are one row with no padding.
            counts["real"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()
            counts["padded"] += ids.numel()
            counts["targets"] += int((inputs["labels"][:, 1:] != -100).sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            micro_losses.append(float(loss))  # its target NLL / all targets of the step, as posttrain's
            return loss

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:  # posttrain's warmup + cosine exactly
                self.lr_scheduler = common.posttrain_schedule(optimizer or self.optimizer, num_training_steps, pt)
            return self.lr_scheduler

    clock = StepClock(lambda: counts["real"])  # training_step counted every micro-batch of the step
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out, max_steps=args.steps, learning_rate=pt.lr, adam_beta1=pt.beta1, adam_beta2=pt.beta2,
            weight_decay=0.0, max_grad_norm=pt.max_grad_norm, gradient_accumulation_steps=accum,
            per_device_train_batch_size=micro, max_length=args.max_length, assistant_only_loss=True, **setting,
            bf16=dtype == "bf16", use_cpu=True, gradient_checkpointing=False, seed=pt.seed,
            logging_steps=args.steps, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        trainer = CountingSFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                                     callbacks=[common.clock_callback(clock)])
        ds, collator = trainer.train_dataset, trainer.data_collator  # TRL's tokenized rows and its own collator
        # TRL's tokenized rows through its own collator: every reply trained up to its end of turn, padding not
        turns = common.loss_turns(tok, common.trl_batches(trainer.train_dataset, trainer.data_collator, micro))
        trainer.train()
        clock.stop()
        clock.check(trainer.state.global_step, counts["real"])
    losses = [sum(micro_losses[i:i + accum]) for i in range(0, len(micro_losses), accum)]
    return dict(dtype=dtype, eval_loss=eval_loss(model, args), steps=trainer.state.global_step,
                batching=f"{micro} {'rows' if setting['packing'] else 'chats'} x {accum}",
                real_tokens=counts["real"], padded_tokens=counts["padded"], target_tokens=counts["targets"],
                params=sum(p.numel() for p in model.parameters()), losses=losses,
                turns_ended=_check_turns(f"TRL {setting}", turns, args.data), **clock.result(args.warmup_steps))


# ------------------------------------------------------------------ the driver

def check_same_examples(args, data_path) -> dict:
    """Both sides must train on the same tokens with the same loss mask (common.check_chats); also size trl-pad's
    batch."""
    tok = common.load_tokenizer(args.model)
    template, source = common.trl_chat_template(tok)
    chats = [json.loads(line)["messages"] for line in Path(data_path).read_text().splitlines()]
    check = common.check_chats(tok, chats, template)
    if problem := check.problems:
        sys.exit(f"{problem}; TRL's template ({source}) does not match the model's own:\n{template}")
    lengths = check.lengths
    if max(lengths) > args.max_length:
        sys.exit(f"--max-length {args.max_length} would truncate chats (longest: {max(lengths)} tokens).")
    mean = statistics.mean(lengths)
    micro = max(1, round(args.trl_micro_tokens / mean))
    return dict(chats=len(chats), mean_tokens=mean, longest=max(lengths), pad_micro=micro,
                pad_accum=max(1, round(args.batch_tokens / (micro * mean))), trl_template=source,
                pad_is_eos=tok.pad_token_id == tok.eos_token_id)


TEMPLATE_SOURCES = {"own": "the model's own (it has generation markers)",
                    "trl": "TRL's training version of the model's template",
                    "derived": "the model's own with generation markers added (bench/templates.py)"}


def report(res: dict, env: dict, args) -> str:
    headers = ("side", "micro-batch x accumulation", "dtype", "steps (timed)", "real tokens", "padded tokens",
               "target tokens", *common.MEASURE_HEADERS, f"train loss (last {args.loss_window})", "held-out loss")
    rows = [(s, r["batching"], r["dtype"], f"{r['steps']} ({r['timed_steps']})", f"{r['real_tokens']:,}",
             f"{r['padded_tokens']:,}", f"{r['target_tokens']:,}", *common.measure_cells(r),
             f"{r['final_loss']:.3f}", f"{r['eval_loss']:.3f}") for s, r in res.items()]
    methods = sorted({r["memory_method"] for r in res.values()})
    text = [(f"{common.environment_sentence(env)} Model {args.model}. {args.steps} steps of ~{args.batch_tokens:,} "
             f"real tokens, max_length {args.max_length}, assistant-only loss on every side. tokens/s: real tokens of "
             f"the steps after the first {args.warmup_steps} / their time, clocked at each optimizer step on every "
             f"side; memory: training peak ({', '.join(methods)}) and its rise over the RSS right before the first "
             f"step. Cells: median [min–max] of {args.repeats} round(s)."),
            "", *common.markdown_table(headers, rows), ""]
    if OURS in res and len(res) > 1:
        text += common.ratio_lines(res) + common.verdict_lines(res)
    return "\n".join(text)


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        common.emit_result(run_posttrain(args) if args.side == OURS else run_trl(args, TRL_SETTINGS[args.side]))
        return
    from posttrain.world.build import build_world

    sides = common.selected_sides(args, SIDES)
    env = common.environment(args.dtype)  # the sides inherit this process's threads
    print(common.environment_line(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        build_world(0, tmp)
        data = str(Path(tmp) / "sft.jsonl")
        ex = check_same_examples(args, data)
        print(f"model {args.model}: TRL's template is {TEMPLATE_SOURCES[ex['trl_template']]}"
              f"{'; pad token = EOS' if ex['pad_is_eos'] else ''}", flush=True)
        print(f"data: {ex['chats']} chats, {ex['mean_tokens']:.1f} tokens on average (longest {ex['longest']}); "
              "tokens and loss masks identical on every side; TRL padded batch = "
              f"{ex['pad_micro']} x {ex['pad_accum']} chats", flush=True)
        opts = dict(data=data, pad_micro=ex["pad_micro"], pad_accum=ex["pad_accum"], model=args.model,
                    steps=args.steps, warmup_steps=args.warmup_steps, max_length=args.max_length,
                    batch_tokens=args.batch_tokens, trl_micro_tokens=args.trl_micro_tokens, dtype=args.dtype,
                    lr=args.lr)

        def run_one(side):
            r = common.run_side(__file__, side, opts)
            r["final_loss"] = statistics.mean(r["losses"][-args.loss_window:])
            return r

        def describe(k, side, r):
            return (f"  round {k} {side:15s} {r['tokens_per_s']:8,.0f} tokens/s ({r['timed_steps']} steps, "
                    f"{r['timed_s']:.1f} s)  train peak Δ {r['train_delta_mb']:5,.0f} MB (peak "
                    f"{r['train_peak_mb']:,.0f}, process {r['peak_rss_mb']:,.0f})  train loss "
                    f"{r['final_loss']:.3f}  held-out loss {r['eval_loss']:.3f}  replies trained to their end "
                    f"of turn {r['turns_ended']}")

        runs = common.run_rounds(sides, args.repeats, run_one, describe)
    res = {s: common.summarise(rs, env["matmul_peak_flops"]) for s, rs in runs.items()}
    print("\n" + report(res, env, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, args=vars(args), data=ex, results=res), indent=1))


if __name__ == "__main__":
    main()
