"""posttrain SFT vs TRL's SFTTrainer: the same model, data and work, in one run.

    python bench/sft_vs_trl.py                    # bf16, 30 steps, every side once
    python bench/sft_vs_trl.py --repeats 2 --json bench/sft_vs_trl.json

Each side runs in its own subprocess (this script with --side), so its memory is
its own, and the sides take turns (rotated each round) so that a neighbour's load
on a shared CPU does not always land on the same side. Time and memory are taken
the same way on every side (bench/measure.py): steady-state steps after
--warmup-steps, and the memory training adds over what was resident right before
its first step. See bench/README.md for what is measured and why it is fair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import StepClock, matmul_peak_flops, spread  # bench/measure.py, next to this script

ROOT = Path(__file__).resolve().parents[1]
# TRL's settings: padded batches in random order (its default), padded batches grouped by length (less padding),
# and best-fit-decreasing packing, which TRL runs padding-free (all rows of a micro-batch flattened into one).
TRL_SETTINGS = {
    "trl-pad": dict(packing=False),
    "trl-pad-grouped": dict(packing=False, train_sampling_strategy="group_by_length"),
    "trl-pack": dict(packing=True, packing_strategy="bfd"),
}
SIDES = ("posttrain", *TRL_SETTINGS)

# The shipped ChatML template with TRL's generation markers around each assistant turn (content and its
# <|im_end|>\n, the span posttrain's mask covers). It renders the same text; main() checks text and masks.
MARKED_TEMPLATE = (
    "{%- for message in messages -%}\n<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>\n"
    "{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor -%}\n"
    "{%- if add_generation_prompt -%}\n<|im_start|>assistant\n{% endif -%}\n"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "base"), help="transformers model directory")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps on every side")
    p.add_argument("--warmup-steps", type=int, default=3,
                   help="optimizer steps run but not timed; tokens/s covers the steps after them")
    p.add_argument("--max-length", type=int, default=512, help="longest example, and the packed row length")
    p.add_argument("--batch-tokens", type=int, default=2048,
                   help="effective batch in real tokens per step: packed sides take batch_tokens/max_length rows, "
                        "trl-pad takes as many chats as hold that many tokens on average")
    p.add_argument("--trl-micro-tokens", type=int, default=512,
                   help="TRL's micro-batch in tokens, gradient accumulation making up the effective batch "
                        "(512 ran fastest here: 1 packed row or 9 chats; posttrain is fastest with one micro-batch)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "auto"), help="bf16 = autocast over fp32 weights")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--loss-window", type=int, default=10, help="final loss = mean training loss of the last N steps")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all sides; tokens/s and memory are the medians over rounds")
    p.add_argument("--sides", default=",".join(SIDES), help="comma list out of " + ", ".join(SIDES))
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--pad-micro", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pad-accum", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------ the sides (each in its own process)

def eval_loss(model, args) -> float:
    """Assistant-token loss on the world's held-out chats (sft_eval.jsonl), computed the same way for every
    side (posttrain's nll_and_count, fp32, one example per row), so trained models compare on equal terms."""
    import torch

    from posttrain.data.formats import load_dataset_rows
    from posttrain.data.packing import collate, unpacked_rows
    from posttrain.data.sft import build_examples
    from posttrain.models import load_tokenizer
    from posttrain.training.loop import nll_and_count

    tok = load_tokenizer(args.model)
    fmt, rows = load_dataset_rows(Path(args.data).with_name("sft_eval.jsonl"), allowed=("conversational",))
    examples = build_examples(tok, rows, fmt, max_length=args.max_length)[0]
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 50):
            s, c = nll_and_count(model, collate(unpacked_rows(examples[i:i + 50]), tok.pad_token_id))
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


def run_posttrain(args) -> dict:
    import torch

    from posttrain.models import load_model, load_tokenizer, resolve_dtype
    from posttrain.stages.sft import prepare_sft_rows
    from posttrain.training.loop import Trainer

    cfg = _train_config(args)
    dtype = resolve_dtype(args.dtype)
    tok, model = load_tokenizer(args.model), load_model(args.model, "cpu")
    rows = prepare_sft_rows(tok, args.data, cfg)[0]
    trainer = Trainer(model, rows, cfg.train, device=torch.device("cpu"), dtype=dtype, pad_id=tok.pad_token_id,
                      progress=False)
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
                batching=f"{cfg.train.batch_size} rows x 1", params=sum(p.numel() for p in model.parameters()),
                padded_tokens=padded, target_tokens=targets, losses=losses, **clock.result(args.warmup_steps))


def run_trl(args, setting: dict) -> dict:
    from datasets import Dataset
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_model, load_tokenizer, resolve_dtype
    from posttrain.training.loop import lr_at

    pt = _train_config(args).train
    dtype = resolve_dtype(args.dtype)
    tok, model = load_tokenizer(args.model), load_model(args.model, "cpu")
    tok.chat_template = MARKED_TEMPLATE
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
            # posttrain's warmup + cosine exactly (HF's cosine_with_min_lr starts warmup at lr 0, one step behind)
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                             lambda s: lr_at(s, num_training_steps, pt) / pt.lr)
            return self.lr_scheduler

    clock = StepClock(lambda: counts["real"])  # training_step counted every micro-batch of the step

    class StartClock(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            # After the optimizer, accelerate.prepare and the dataloader are set up, before the first step.
            getattr(optimizer, "optimizer", optimizer).register_step_post_hook(clock)  # the torch AdamW inside
            clock.start()

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
                                     callbacks=[StartClock()])
        trainer.train()
        clock.stop()
        clock.check(trainer.state.global_step, counts["real"])
    losses = [sum(micro_losses[i:i + accum]) for i in range(0, len(micro_losses), accum)]
    return dict(dtype=dtype, eval_loss=eval_loss(model, args), steps=trainer.state.global_step,
                batching=f"{micro} {'rows' if setting['packing'] else 'chats'} x {accum}",
                real_tokens=counts["real"], padded_tokens=counts["padded"], target_tokens=counts["targets"],
                params=sum(p.numel() for p in model.parameters()), losses=losses, **clock.result(args.warmup_steps))


# ------------------------------------------------------------------ the driver

def check_same_examples(args, data_path) -> dict:
    """Both sides must train on the same tokens with the same loss mask; also size trl-pad's batch."""
    from transformers import AutoTokenizer

    from posttrain.data.chat import tokenize_chat

    tok = AutoTokenizer.from_pretrained(args.model)
    chats = [json.loads(line)["messages"] for line in Path(data_path).read_text().splitlines()]
    lengths, bad = [], 0
    for m in chats:
        ours = tokenize_chat(tok, m)
        trl = tok.apply_chat_template(m, chat_template=MARKED_TEMPLATE, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        bad += ours.input_ids != trl["input_ids"] or ours.loss_mask != trl["assistant_masks"]
        lengths.append(len(ours.input_ids))
    if bad:
        sys.exit(f"{bad} of {len(chats)} chats tokenize or mask differently for TRL; fix MARKED_TEMPLATE.")
    if max(lengths) > args.max_length:
        sys.exit(f"--max-length {args.max_length} would truncate chats (longest: {max(lengths)} tokens).")
    mean = statistics.mean(lengths)
    micro = max(1, round(args.trl_micro_tokens / mean))
    return dict(chats=len(chats), mean_tokens=mean, longest=max(lengths), pad_micro=micro,
                pad_accum=max(1, round(args.batch_tokens / (micro * mean))))


def run_side(side: str, args, data_path: str, ex: dict) -> dict:
    opts = dict(side=side, data=data_path, pad_micro=ex["pad_micro"], pad_accum=ex["pad_accum"], model=args.model,
                steps=args.steps, warmup_steps=args.warmup_steps, max_length=args.max_length,
                batch_tokens=args.batch_tokens, trl_micro_tokens=args.trl_micro_tokens, dtype=args.dtype, lr=args.lr)
    cmd = [sys.executable, __file__] + [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"side {side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    r["tokens_per_s"] = r["timed_tokens"] / r["timed_s"]
    r["final_loss"] = statistics.mean(r["losses"][-args.loss_window:])
    return r


MEASURES = ("tokens_per_s", "mfu", "train_delta_mb", "train_peak_mb", "peak_rss_mb")


def summarise(runs: list[dict], peak_flops: float) -> dict:
    """Medians over rounds (each round's value kept in <name>_runs); the losses of the first round."""
    for r in runs:
        r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak_flops  # model FLOPs (6N per token) / matmul peak
    out = dict(runs[0])
    for k in MEASURES:
        out[k + "_runs"] = [r[k] for r in runs]
        out[k] = statistics.median(out[k + "_runs"])
    return out


def report(res: dict, env: dict, args) -> str:
    rows = [f"| {s} | {r['batching']} | {r['dtype']} | {r['steps']} ({r['timed_steps']}) | {r['real_tokens']:,} "
            f"| {r['padded_tokens']:,} | {r['target_tokens']:,} | {spread(r['tokens_per_s_runs'])} "
            f"| {spread([100 * m for m in r['mfu_runs']], '{:.1f}')}% | {spread(r['train_delta_mb_runs'])} "
            f"| {spread(r['train_peak_mb_runs'])} | {spread(r['peak_rss_mb_runs'])} "
            f"| {r['final_loss']:.3f} | {r['eval_loss']:.3f} |"
            for s, r in res.items()]
    methods = sorted({r["memory_method"] for r in res.values()})
    text = [(f"CPU: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}; "
             f"dtype {env['dtype']}; matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s (best of 5 "
             f"2048x2048 {env['dtype']} matmuls here). {args.steps} steps of ~{args.batch_tokens:,} real tokens, "
             f"max_length {args.max_length}, assistant-only loss on every side. tokens/s: real tokens of the steps "
             f"after the first {args.warmup_steps} / their time, clocked at each optimizer step on every side; "
             f"memory: training peak ({', '.join(methods)}) and its rise over the RSS right before the first step. "
             f"Cells: median [min–max] of {args.repeats} round(s)."),
            "",
            ("| side | micro-batch x accumulation | dtype | steps (timed) | real tokens | padded tokens "
             "| target tokens | tokens/s | 6·N·tokens/s of matmul peak | train peak Δ MB | train peak MB "
             "| process peak MB "
             f"| train loss (last {args.loss_window}) | held-out loss |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    pt, trl = res.get("posttrain"), {s: r for s, r in res.items() if s != "posttrain"}
    if not (pt and trl):
        return "\n".join(text)
    for s, r in trl.items():
        text.append(f"posttrain / {s}: tokens/s x{pt['tokens_per_s'] / r['tokens_per_s']:.2f}, "
                    f"train peak Δ x{pt['train_delta_mb'] / max(r['train_delta_mb'], 1):.2f}, "
                    f"train peak x{pt['train_peak_mb'] / r['train_peak_mb']:.2f}, "
                    f"process peak x{pt['peak_rss_mb'] / r['peak_rss_mb']:.2f}, "
                    f"held-out loss {pt['eval_loss'] - r['eval_loss']:+.3f}")
    best = max(trl, key=lambda s: trl[s]["tokens_per_s"])
    b = trl[best]
    speed = pt["tokens_per_s"] / b["tokens_per_s"]
    mem_ok = pt["train_delta_mb"] <= b["train_delta_mb"]  # what training adds, not what each library imports
    loss_ok = pt["eval_loss"] <= 1.05 * b["eval_loss"]  # matching (within 5%) or lower
    won = speed >= 1.5 and mem_ok and loss_ok
    text.append(f"Verdict: posttrain {'WINS' if won else 'LOSES'} against TRL's fastest setting here ({best}): "
                f"x{speed:.2f} its steady-state tokens/s (goal x1.5: {'met' if speed >= 1.5 else 'NOT met'}), "
                f"{'no more' if mem_ok else 'MORE'} training memory ({pt['train_delta_mb']:,.0f} vs "
                f"{b['train_delta_mb']:,.0f} MB over the pre-training baseline), held-out loss "
                f"{pt['eval_loss']:.3f} vs {b['eval_loss']:.3f} "
                f"({('lower' if pt['eval_loss'] <= b['eval_loss'] else 'higher, within 5%') if loss_ok else 'WORSE by more than 5%'}).")
    leaner = [f"{s} {r['train_delta_mb']:,.0f} MB" for s, r in trl.items()
              if s != best and r["train_delta_mb"] < pt["train_delta_mb"]]  # the fastest: in the verdict
    if leaner:
        text.append(f"Training memory: posttrain's {pt['train_delta_mb']:,.0f} MB is MORE than {', '.join(leaner)}.")
    return "\n".join(text)


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        r = run_posttrain(args) if args.side == "posttrain" else run_trl(args, TRL_SETTINGS[args.side])
        print("RESULT " + json.dumps(r))
        return
    import torch
    import transformers
    import trl

    from posttrain.models import device_name, resolve_dtype
    from posttrain.world.build import build_world

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(sides) - set(SIDES):
        sys.exit(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIDES)}.")
    if not 1 <= args.warmup_steps < args.steps:
        sys.exit(f"--warmup-steps {args.warmup_steps}: give 1 to --steps - 1 ({args.steps - 1}); "
                 "the timed steps are the ones after the warm-up.")
    env = dict(device=device_name(torch.device("cpu")), dtype=resolve_dtype(args.dtype), torch=torch.__version__,
               transformers=transformers.__version__, trl=trl.__version__)
    env["matmul_peak_flops"] = matmul_peak_flops(env["dtype"])  # the sides inherit this process's threads
    print(f"{env['device']} | dtype {env['dtype']} | matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s "
          f"| torch {env['torch']} | transformers {env['transformers']} | trl {env['trl']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        build_world(0, tmp)
        data = str(Path(tmp) / "sft.jsonl")
        ex = check_same_examples(args, data)
        print(f"data: {ex['chats']} chats, {ex['mean_tokens']:.1f} tokens on average (longest {ex['longest']}); "
              "tokens and loss masks identical on every side; TRL padded batch = "
              f"{ex['pad_micro']} x {ex['pad_accum']} chats", flush=True)
        runs: dict[str, list] = {s: [] for s in sides}
        for k in range(args.repeats):
            for side in sides[k % len(sides):] + sides[:k % len(sides)]:  # rotate who goes first
                r = run_side(side, args, data, ex)
                runs[side].append(r)
                print(f"  round {k + 1} {side:15s} {r['tokens_per_s']:8,.0f} tokens/s ({r['timed_steps']} steps, "
                      f"{r['timed_s']:.1f} s)  train peak Δ {r['train_delta_mb']:5,.0f} MB (peak "
                      f"{r['train_peak_mb']:,.0f}, process {r['peak_rss_mb']:,.0f})  train loss "
                      f"{r['final_loss']:.3f}  held-out loss {r['eval_loss']:.3f}", flush=True)
    res = {s: summarise(rs, env["matmul_peak_flops"]) for s, rs in runs.items()}
    print("\n" + report(res, env, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, args=vars(args), data=ex, results=res), indent=1))


if __name__ == "__main__":
    main()
