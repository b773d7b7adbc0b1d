"""The preference benches' pairs and checks, and their driver (reward_vs_trl.py, dpo_vs_trl.py).

    preference_file(world, scale, tmp), preference_rows(path), split_preferences(src, out, heldout)
    posttrain_pairs(tok, path, max_length)   posttrain's Pairs, as its reward and DPO stages read them
    trl_prepared(kind, tok, rows, max_length)   the same rows through TRL's own RewardTrainer/DPOTrainer preprocessing
    check_pairs(tok, pairs, trl_rows, kind)  same tokens on both sides (DPO: same answer mask, each answer trained to
                                   its end of turn; reward: TRL reads the score at the last token, as posttrain)
    trl_pair_batches, reward_read_elsewhere, pair_length_sampler   TRL's collated pair batches, checked and grouped
    add_pair_args, trl_batching, check_same_pairs, run_pair_bench, pair_method_text   the preference benches' driver
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from report import environment, environment_line, environment_sentence, summarise
from sides import run_rounds, run_side
from templates import LossTurns, load_tokenizer, loss_turns, template_facts


PAIR_KEYS = ("prompt", "chosen", "rejected")


def preference_file(world, scale: float, tmp) -> Path:
    """The preference pairs to use: `world` = a world folder (its preferences.jsonl) or a preference .jsonl file;
    None = build the world (seed 0, `scale`) into `tmp`."""
    if world is None:
        from posttrain.world.build import build_world

        build_world(0, Path(tmp) / "world", scale)
        return Path(tmp) / "world" / "preferences.jsonl"
    path = Path(world)
    path = path / "preferences.jsonl" if path.is_dir() else path
    if not path.is_file():
        sys.exit(f"--world {world}: no such preference file (give a world folder, or a .jsonl of "
                 "prompt/chosen/rejected rows).")
    return path


def preference_rows(path) -> list[dict]:
    """A preference .jsonl file's rows, prompt/chosen/rejected only: what both sides train on. The world's `meta`
    field is dropped (TRL must not see it), and so is any `margin` (TRL's RewardTrainer would subtract it, posttrain's
    default loss does not)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in PAIR_KEYS} for r in rows]


def split_preferences(src, out_dir, heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Write a seeded random `heldout` rows of `src` to heldout.jsonl, the others to train.jsonl (in file order)."""
    rows = preference_rows(src)
    if not 0 < heldout < len(rows) - 1:
        sys.exit(f"--heldout {heldout}: give 1 to {len(rows) - 2} (the file has {len(rows)} pairs).")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:heldout])
    out = Path(out_dir)
    train, test = out / "train.jsonl", out / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in held))
    test.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i in held))
    return train, test


def posttrain_pairs(tok, path, max_length: int):
    """(Pairs, stats) of a preference file as posttrain's reward and DPO stages read it (read_preferences: the
    model's own template; the answer's tokens, up to its end of turn, carry the loss mask)."""
    from posttrain.stages.reward import RewardConfig, read_preferences

    cfg = RewardConfig()
    cfg.data.max_length, cfg.data.eval_fraction = max_length, 0.0
    data = read_preferences(tok, str(path), cfg)
    return data.train, data.stats


def trl_prepared(kind: str, tok, rows: list[dict], max_length: int):
    """`rows` through TRL's own preprocessing, as its trainer runs it (`RewardTrainer._prepare_dataset`: chosen_ids and
    rejected_ids, prompt included; `DPOTrainer._prepare_dataset`: prompt_ids, chosen_ids, rejected_ids). The TRL
    sides check their trainer's own dataset the same way before training."""
    import types
    import warnings

    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    data = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed options, set by TRL's configs
        if kind == "reward":
            from trl import RewardConfig, RewardTrainer

            args = RewardConfig(output_dir=out, use_cpu=True, report_to="none", max_length=max_length)
            return RewardTrainer._prepare_dataset(None, data, tok, args, "train")  # uses no trainer state
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(output_dir=out, use_cpu=True, report_to="none", max_length=max_length)
        return DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), data, tok, args, "train")


@dataclass
class PairCheck:
    """check_pairs' findings."""

    kind: str
    pairs: int = 0  # posttrain's pairs
    trl_rows: int = 0  # TRL's rows
    differ: list[int] = field(default_factory=list)  # pairs whose tokens (DPO: or answer masks) differ
    first_problem: str = ""
    read_elsewhere: int = 0  # reward: sequences TRL would score at an earlier token than their last (they end on pad)
    pad_token: str = ""
    turns: LossTurns = field(default_factory=LossTurns)  # DPO: posttrain's answer masks, as trained spans
    lengths: list[int] = field(default_factory=list)  # real tokens per pair: prompt+chosen + prompt+rejected
    longest: int = 0  # longest sequence

    @property
    def problems(self) -> str | None:
        if self.pairs != self.trl_rows:
            return f"posttrain keeps {self.pairs} pairs and TRL {self.trl_rows}"
        if self.differ:
            what = "tokenize or mask their answers" if self.kind == "dpo" else "tokenize"
            return (f"{len(self.differ)} of {self.pairs} pairs {what} differently for TRL (first: pair "
                    f"{self.differ[0]}: {self.first_problem})")
        if self.read_elsewhere:
            return (f"{self.read_elsewhere} chats end on the pad token {self.pad_token!r}: TRL's RewardTrainer "
                    "(transformers' sequence classification) reads their reward at the last token that is not the "
                    "pad token, posttrain at the last token")
        if self.kind == "dpo":
            return self.turns.problems(2 * self.pairs)
        return None


def check_pairs(tok, pairs, trl_rows, kind: str) -> PairCheck:
    """Both sides train on the same token sequences: posttrain's Pairs (read_preferences) against TRL's prepared rows
    (trl_prepared, or a TRL trainer's train_dataset), pair by pair, in file order.

    reward: TRL's chosen_ids / rejected_ids (prompt + answer, its chat template) == posttrain's, and TRL reads each
    reward where posttrain does (transformers pools the last token that is not the pad token; posttrain the last).
    dpo: prompt_ids + chosen_ids == posttrain's tokens and TRL's completion mask ([0] * prompt, [1] * answer) ==
    posttrain's loss mask, for chosen and rejected; and every answer is one trained span that ends on its
    end-of-turn token (<|im_end|> / EOS, which may also be the pad token).
    """
    import torch

    check = PairCheck(kind, pairs=len(pairs), trl_rows=len(trl_rows), pad_token=tok.pad_token or "")
    spans = []
    for i, (p, row) in enumerate(zip(pairs, trl_rows)):
        for side, ex in (("chosen", p.chosen), ("rejected", p.rejected)):
            if kind == "reward":
                ids, mask = list(row[f"{side}_ids"]), None
            else:
                head, answer = list(row["prompt_ids"]), list(row[f"{side}_ids"])
                ids, mask = head + answer, [0] * len(head) + [1] * len(answer)
            problem = None
            if ids != list(ex.input_ids):
                problem = (f"{side}: different tokens: TRL {tok.decode(ids)[-160:]!r}, posttrain "
                           f"{tok.decode(ex.input_ids)[-160:]!r}")
            elif mask is not None and mask != list(ex.loss_mask):
                trained = [t for t, m in zip(ids, mask) if m]
                ours = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
                problem = (f"{side}: same tokens, different answer masks: TRL trains {tok.decode(trained)!r}, "
                           f"posttrain {tok.decode(ours)!r}")
            if problem and (not check.differ or check.differ[-1] != i):
                check.first_problem = check.first_problem or problem
                check.differ.append(i)
            if kind == "reward" and ids and ids[-1] == tok.pad_token_id:
                check.read_elsewhere += 1
            spans.append((torch.tensor([ex.input_ids]), torch.tensor([ex.loss_mask]).bool(), None))
            check.longest = max(check.longest, len(ex.input_ids))
        check.lengths.append(len(p.chosen.input_ids) + len(p.rejected.input_ids))
    if kind == "dpo":
        loss_turns(tok, spans, check.turns)
    return check


def trl_pair_batches(dataset, collator, batch_size: int):
    """A TRL preference trainer's prepared rows through its own collator, `batch_size` pairs at a time."""
    for i in range(0, len(dataset), batch_size):
        yield collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])


def reward_read_elsewhere(batches, pad_id: int) -> int:
    """Sequences of TRL's padded reward batches whose score transformers' sequence classification reads (the
    rightmost token that is not the pad token) somewhere else than at their last real token."""
    import torch

    n = 0
    for b in batches:
        ids, attn = b["input_ids"], b["attention_mask"]
        pooled = (torch.arange(ids.shape[1]) * (ids != pad_id)).argmax(-1)
        n += int((pooled != attn.sum(-1) - 1).sum())
    return n


def pair_length_sampler(trainer, dataset):
    """transformers' LengthGroupedSampler for a TRL preference trainer, pairs grouped by their padded length (its
    longer answer, prompt included): what train_sampling_strategy="group_by_length" does for SFT, which cannot
    find the lengths of pair rows by itself (they hold no input_ids)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    head = dataset["prompt_ids"] if "prompt_ids" in dataset.column_names else None
    lengths = [max(len(c), len(r)) + (len(head[i]) if head else 0)
               for i, (c, r) in enumerate(zip(dataset["chosen_ids"], dataset["rejected_ids"]))]
    args = trainer.args
    return LengthGroupedSampler(args.train_batch_size * args.gradient_accumulation_steps, lengths=lengths)


def add_pair_args(p: argparse.ArgumentParser, lr: float) -> None:
    """The options both preference benches add to add_common_args: data, held-out pairs, lengths and batches."""
    p.set_defaults(lr=lr)
    p.add_argument("--world", metavar="PATH",
                   help="a world folder (posttrain world build) or a preference .jsonl (prompt/chosen/rejected rows); "
                        "default: build the world with seed 0 and --scale. --data PATH is read the same way")
    p.add_argument("--scale", type=float, default=0.3, help="world size when the script builds it (0.3: 690 pairs)")
    p.add_argument("--heldout", type=int, default=100, help="pairs held out of training, to score the trained models")
    p.add_argument("--max-length", type=int, default=512,
                   help="longest prompt + answer (no pair may be longer), and posttrain's packed row length")
    p.add_argument("--pairs", type=int, default=16, help="effective batch: preference pairs per optimizer step")
    p.add_argument("--trl-micro-pairs", type=int, default=4,
                   help="TRL's micro-batch in pairs (twice as many padded sequences), gradient accumulation making up "
                        "--pairs; posttrain trains each step as one micro-batch, its pairs packed into rows")
    p.add_argument("--loss-window", type=int, default=10, help="final loss = mean training loss of the last N steps")
    p.add_argument("--seed", type=int, default=0,
                   help="the held-out split, each side's data order (and a reward model's new head)")
    p.add_argument("--heldout-data", help=argparse.SUPPRESS)  # internal: a side's held-out file


def trl_batching(args) -> tuple[int, int]:
    """TRL's (micro-batch, accumulation) in pairs: --trl-micro-pairs, lowered until it divides --pairs."""
    micro = max(1, min(args.pairs, args.trl_micro_pairs))
    while args.pairs % micro:
        micro -= 1
    return micro, args.pairs // micro


def check_same_pairs(args, kind: str, files: dict) -> dict:
    """Both sides must train and be scored on the same token sequences: check_pairs on every pair of every file
    against TRL's own preprocessing (exits with the first difference); and no pair may be dropped or cut on one
    side only. Returns facts for the report: the template, and per file pairs and real tokens."""
    tok = load_tokenizer(args.model)
    out = dict(template=template_facts(tok))
    for name, path in files.items():
        pairs, stats = posttrain_pairs(tok, path, args.max_length)
        if stats["too_long"] or stats["identical"]:
            sys.exit(f"{name}: posttrain drops {stats['too_long']} pairs longer than --max-length {args.max_length} "
                     f"and {stats['identical']} with identical answers; raise --max-length (TRL would cut, not drop).")
        check = check_pairs(tok, pairs, trl_prepared(kind, tok, preference_rows(path), args.max_length), kind)
        if problem := check.problems:
            sys.exit(f"{name} pairs: {problem}. posttrain and TRL would not train on the same tokens with this "
                     f"model's chat template ({args.model}).")
        out[name] = dict(pairs=check.pairs, tokens=sum(check.lengths), mean_tokens=statistics.mean(check.lengths),
                         longest=check.longest)
    return out


def pair_data_line(ex: dict, args) -> str:
    t, h = ex["train"], ex["heldout"]
    return (f"data: {t['pairs']} training pairs, {t['mean_tokens']:.1f} real tokens each on average (prompt + chosen "
            f"+ prompt + rejected; longest sequence {max(t['longest'], h['longest'])} tokens), {h['pairs']} held out; "
            f"tokens{' and answer masks' if ex.get('kind') == 'dpo' else ''} identical on every side; {args.pairs} "
            f"pairs per step (~{args.pairs * t['mean_tokens']:,.0f} real tokens)")


def run_pair_bench(args, script, sides, kind: str, describe, prepare=None, extra=()) -> tuple[dict, dict, dict]:
    """A preference bench's driver: build or read the pairs, split off the held-out ones, check both sides' tokens,
    run every side in rotated rounds. prepare(args, tmp, files) -> extra options for the sides (DPO: the held-out
    reference log-probs); extra: result keys summarised like the measures (medians over rounds). Returns
    (environment, data facts, summarised results by side)."""
    env = environment(args.dtype)  # the sides inherit this process's threads
    print(environment_line(env), flush=True)
    world = args.world or args.data
    with tempfile.TemporaryDirectory() as tmp:
        src = preference_file(world, args.scale, tmp)
        train, heldout = split_preferences(src, tmp, args.heldout, args.seed)
        files = dict(train=train, heldout=heldout)
        ex = dict(kind=kind, source=str(src) if world else f"world seed 0, scale {args.scale}",
                  **check_same_pairs(args, kind, files))
        print(f"model {args.model}: {ex['template']}", flush=True)
        print(pair_data_line(ex, args), flush=True)
        opts = dict(data=train, heldout_data=heldout, model=args.model, steps=args.steps,
                    warmup_steps=args.warmup_steps, max_length=args.max_length, pairs=args.pairs,
                    trl_micro_pairs=args.trl_micro_pairs, dtype=args.dtype, lr=args.lr, seed=args.seed)
        if prepare:
            opts.update(prepare(args, tmp, files))

        def run_one(side):
            r = run_side(script, side, opts)
            r["final_loss"] = statistics.mean(r["losses"][-args.loss_window:])
            return r

        runs = run_rounds(sides, args.repeats, run_one, describe)
    starts = {r["start_weights"] for rs in runs.values() for r in rs}
    if len(starts) > 1:
        sys.exit(f"the sides did not start from the same weights (fingerprints {sorted(starts)}).")
    return env, ex, {s: summarise(rs, env["matmul_peak_flops"], extra) for s, rs in runs.items()}


def pair_method_text(env: dict, res: dict, args, what: str) -> str:
    """The paragraph above a preference bench's table: where, what and how it was measured."""
    methods = sorted({r["memory_method"] for r in res.values()})
    return (f"{environment_sentence(env)} Model {args.model}. {what}: {args.steps} steps of {args.pairs} pairs, "
            f"max_length {args.max_length}, lr {args.lr:g} (posttrain's warmup + cosine on every side). tokens/s: real "
            f"tokens (prompt + chosen + prompt + rejected, unpadded) of the steps after the first {args.warmup_steps} "
            f"/ their time, clocked at each optimizer step on every side; matmul share: 6 x parameters x tokens/s / "
            f"the matmul peak; memory: training peak ({', '.join(methods)}) and its rise over the RSS right before "
            f"the first step. Cells: median [min–max] of {args.repeats} round(s).")



def counting_trainer(base, counts: dict, micro_losses: list, pt, grouped: bool):
    """A subclass of TRL's `base` trainer that counts real and padded tokens and records micro-batch losses, runs
    posttrain's schedule (pt: its TrainConfig), and samples batches grouped by pair length when `grouped`."""
    from training import posttrain_schedule

    class Counting(base):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counts["real"] += int(inputs["attention_mask"].sum())  # prompt + chosen and prompt + rejected, unpadded
            counts["padded"] += inputs["input_ids"].numel()
            loss = super().training_step(model, inputs, num_items_in_batch)
            micro_losses.append(float(loss))  # the micro-batch's mean loss / accumulation steps
            return loss

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:  # posttrain's warmup + cosine exactly
                self.lr_scheduler = posttrain_schedule(optimizer or self.optimizer, num_training_steps, pt)
            return self.lr_scheduler

        def _get_train_sampler(self, train_dataset=None):
            if not grouped:
                return super()._get_train_sampler(train_dataset)
            return pair_length_sampler(self, self.train_dataset if train_dataset is None else train_dataset)

    return Counting


# ------------------------------------------------------------------ posttrain's side of the reward and DPO benches

def posttrain_pair_config(cfg, args):
    """The bench's options on a reward or DPO stage config: CPU, every pair trained (scored apart), one metrics line
    per step (the loss column), no eval or checkpoints."""
    cfg.model.device, cfg.model.dtype = "cpu", args.dtype
    cfg.data.max_length, cfg.data.eval_fraction = args.max_length, 0.0
    t = cfg.train
    t.lr, t.max_steps, t.batch_size, t.grad_accum, t.max_grad_norm, t.weight_decay = (
        args.lr, args.steps, args.pairs, 1, 1.0, 0.0)
    t.seed, t.log_every, t.eval_every, t.save_every = args.seed, 1, 0, 0
    return cfg


def posttrain_pair_setup(args, cfg, head: str = "causal"):
    """As the stage sets up: (tokenizer, training pairs, held-out pairs, model, device, dtype, start fingerprint)."""
    import torch

    from posttrain.stages.common import prepare_model
    from posttrain.stages.reward import read_preferences
    from training import weights_fingerprint

    tok = load_tokenizer(args.model)  # the model's own template, as the stage takes it
    train = read_preferences(tok, args.data, cfg).train
    heldout = posttrain_pairs(tok, args.heldout_data, args.max_length)[0]
    torch.manual_seed(args.seed)  # a new score head: the same initialisation on every side
    model, _, device, dtype = prepare_model(args.model, cfg.model, tok, head=head)
    return tok, train, heldout, model, device, dtype, weights_fingerprint(model)


def posttrain_pair_fit(args, model, pairs, cfg, objective, device, dtype) -> dict:
    """Train with posttrain's Trainer, clocked at each optimizer step like every side; the measures it reports."""
    from measure import StepClock

    from posttrain.training.trainer import Trainer

    trainer = Trainer(model, pairs, cfg.train, objective, device=device, dtype=dtype, progress=False)
    micro = [trainer._micro_batch(i) for i in range(args.steps)]  # the micro-batches fit() will consume
    padded = sum(objective.collate(m)["input_ids"].numel() for m in micro)  # packed rows, padded to the longest
    clock = StepClock(lambda: trainer.state.tokens)  # real tokens (pair_tokens), counted by step() before its forward
    trainer.optimizer.register_step_post_hook(clock)
    clock.start()
    res = trainer.fit()
    clock.stop()
    clock.check(res.steps, trainer.state.tokens)
    return dict(dtype=dtype, steps=res.steps, real_tokens=res.tokens, padded_tokens=padded,
                losses=[m["loss"] for m in res.metrics_lines if "loss" in m],
                batching=f"{args.pairs} pairs x 1 (packed rows of {args.max_length})", optimizer="AdamW (foreach)",
                params=sum(p.numel() for p in model.parameters()), checked="pairs: posttrain's own",
                **clock.result(args.warmup_steps))
