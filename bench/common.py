"""What every posttrain-vs-TRL benchmark shares: sft_vs_trl.py, reward_vs_trl.py and dpo_vs_trl.py.

Model and chat template (any `--model DIR`, with its own template)
    load_tokenizer(model)          the tokenizer as posttrain's stages take it (its own template, chat_template=auto)
    trl_chat_template(tok)         the template TRL gets: the model's own, with {% generation %} markers
    derive_marked_template(tok)    that template derived from a per-turn (ChatML-like) template's renders
    check_chats(tok, chats, tmpl)  posttrain's tokens and loss mask == TRL's, and every reply's end of turn trained
    LossTurns, loss_turns(tok, batches)   in collated batches: replies trained up to their end of turn, none on padding
    posttrain_batches(...), trl_batches(...)   each side's batches, as its own collator makes them, for loss_turns
    posttrain_trainer / lr_at / nll_and_count   posttrain's training API, wherever this checkout keeps it
Measuring (bench/measure.py, re-exported)
    StepClock, matmul_peak_flops, spread
    clock_callback(clock)          hooks a StepClock to the AdamW inside a transformers/TRL Trainer
    posttrain_schedule(...)        posttrain's warmup + cosine learning rate as a torch LambdaLR, for TRL
Running the sides
    add_common_args(parser, sides), selected_sides(args, sides)
    run_side(script, side, opts)   one side in its own Python process; emit_result(r) is its last word
    run_rounds(sides, repeats, run_one, describe)   every side once per round, in a rotated order
Reporting
    environment(dtype), environment_line(env), environment_sentence(env)   CPU, threads, dtype, matmul peak, versions
    summarise(runs, peak_flops)    medians over rounds, and the share of the matmul peak (6·N·tokens/s)
    MEASURE_HEADERS, measure_cells(r), markdown_table(headers, rows)
    ratio_lines(res, quality), verdict_lines(res, quality)   posttrain / each TRL setting, and the verdict
    goal_lines(res)                the issue's goals (x TRL's tokens/s, share of the matmul peak, memory), met or not
Preference pairs (reward_vs_trl.py, dpo_vs_trl.py)
    preference_file(world, scale, tmp), preference_rows(path), split_preferences(src, out, heldout)
    posttrain_pairs(tok, path, max_length)   posttrain's Pairs, as its reward and DPO stages read them
    trl_prepared(kind, tok, rows, max_length)   the same rows through TRL's own RewardTrainer/DPOTrainer preprocessing
    check_pairs(tok, pairs, trl_rows, kind)  same tokens on both sides (DPO: same answer mask, each answer trained to
                                   its end of turn; reward: TRL reads the score at the last token, as posttrain)
    trl_pair_batches, reward_read_elsewhere, pair_length_sampler   TRL's collated pair batches, checked and grouped
    template_facts(tok), PassMeter, weights_fingerprint(model), trl_optimizer(trl_args)
    add_pair_args, trl_batching, check_same_pairs, run_pair_bench, pair_method_text   the preference benches' driver
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import StepClock, matmul_peak_flops, reset_hwm, rss_mb, spread, status_mb  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "base"
OURS = "posttrain"


# ------------------------------------------------------------------ model and chat template

def load_tokenizer(model_dir):
    """The model's tokenizer as posttrain's stages use it: its own chat template (`chat_template=auto`: posttrain's
    ChatML only for a tokenizer without one), pad = EOS where it has no pad token."""
    from posttrain.data.chat import ensure_chat_template
    from posttrain.models import load_tokenizer as posttrain_load_tokenizer

    tok = posttrain_load_tokenizer(model_dir)
    ensure_chat_template(tok, "auto")
    return tok


def trl_chat_template(tok) -> tuple[str, str]:
    """(template with {% generation %} markers, where it came from) for TRL's assistant_only_loss.

    In order: the model's own template if it has the markers ("own"); TRL's training version of it where TRL
    knows the template (`get_training_chat_template`, what SFTTrainer itself swaps in: "trl"); else one derived
    from the model's template (`derive_marked_template`: "derived"). check_chats verifies it on the data.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tok.chat_template
    if has_generation_markers(own):
        return own, "own"
    try:
        patched = get_training_chat_template(tok)
    except ValueError:  # a template TRL cannot patch
        patched = None
    if patched:
        return patched, "trl"
    return derive_marked_template(tok), "derived"


_PROBE = ("SYSTEM-TEXT-1", "USER-TEXT-1", "ASSISTANT-TEXT-1", "USER-TEXT-2", "ASSISTANT-TEXT-2")


def _split(text: str, parts) -> list[str]:
    """`text` cut around each of `parts` (in order, each once): the len(parts)+1 pieces between them."""
    out, rest = [], text
    for p in parts:
        if rest.count(p) != 1:
            raise ValueError(f"the template does not render the message {p!r} once, verbatim")
        head, rest = rest.split(p)
        out.append(head)
    return out + [rest]


def derive_marked_template(tok) -> str:
    """The tokenizer's chat template rewritten with {% generation %} around each assistant reply.

    For templates that render every turn as PREFIX(role) + content + END(role), as ChatML and its variants do: the
    text before the first turn (with a system message, and without one, where a template may insert a default
    system prompt), the user prefix and end, the assistant's end and the generation prompt are read off renders of
    probe chats, and written into a template that renders the same text with the markers around each reply and
    its end (content + <|im_end|>\\n in ChatML), as TRL's own training templates place them. Raises ValueError
    when the template's renders do not have that shape; check_chats then verifies the result on the real data.
    """
    s, u1, a1, u2, a2 = _PROBE

    def render(messages, gen=False):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    conv = [dict(role="user", content=u1), dict(role="assistant", content=a1),
            dict(role="user", content=u2), dict(role="assistant", content=a2)]
    # With a system message the render is x0 S x1 U1 x2 A1 x3 U2 x4 A2 x5: x0 = the start + the system prefix,
    # x1 = the system end + the user prefix, x2 = x4 = the user end + the generation prompt, x3 = the assistant
    # end + the user prefix, x5 = the assistant end. Without one it is y0 U1 x2 A1 x3 U2 x4 A2 x5, where y0 = the
    # start (a default system turn, say) + the user prefix.
    x0, x1, x2, x3, x4, x5 = _split(render([dict(role="system", content=s)] + conv), _PROBE)
    y0, *y_rest = _split(render(conv), _PROBE[1:])
    first = render(conv[:1])
    prompt = render(conv[:1], True)
    gen_prompt = prompt[len(first):]
    assistant_end = x5
    user_prefix = x3[len(assistant_end):]
    shape_ok = (y_rest == [x2, x3, x4, x5] and prompt.startswith(first) and gen_prompt and x2 == x4
                and x2.endswith(gen_prompt) and x3.startswith(assistant_end)
                and x1.endswith(user_prefix) and y0.endswith(user_prefix))
    if not shape_ok:
        raise ValueError("the chat template does not render each turn as prefix + content + end (ChatML-like), so "
                         "no generation-marked version can be derived from it; give TRL one by hand.")

    def q(text):  # a Jinja string literal
        return json.dumps(text, ensure_ascii=False)

    user_end = x2[:len(x2) - len(gen_prompt)]
    system_end = x1[:len(x1) - len(user_prefix)]
    head_other = y0[:len(y0) - len(user_prefix)]  # before a first turn that is not a system message
    return "\n".join([  # every tag trims the whitespace around it: the newlines only make the template readable
        "{%- set prefix = {'user': " + q(user_prefix) + ", 'assistant': " + q(gen_prompt) + "} -%}",
        "{%- set end = {'system': " + q(system_end) + ", 'user': " + q(user_end) + "} -%}",
        "{%- for message in messages -%}",
        "  {%- if loop.first and message['role'] == 'system' -%}{{ " + q(x0) + " }}",
        "  {%- elif loop.first -%}{{ " + q(head_other) + " + prefix[message['role']] }}",
        "  {%- else -%}{{ prefix[message['role']] }}{%- endif -%}",
        "  {%- if message['role'] == 'assistant' -%}",
        "    {%- generation -%}{{ message['content'] + " + q(assistant_end) + " }}{%- endgeneration -%}",
        "  {%- else -%}{{ message['content'] + end[message['role']] }}{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{ " + q(gen_prompt) + " }}{%- endif -%}",
    ])


def end_of_turn_ids(tok) -> set[int]:
    """EOS and the end-of-turn markers the tokenizer has (<|im_end|>, <|eot_id|>...), as posttrain counts them."""
    from posttrain.data.chat import end_of_turn_token_ids

    return set(end_of_turn_token_ids(tok))


@dataclass
class LossTurns:
    """Runs of consecutive loss tokens (one per assistant reply) in collated batches, counted."""

    turns: int = 0  # runs of loss tokens
    ended: int = 0  # runs whose last non-blank token is an end-of-turn token (EOS / <|im_end|>)
    on_padding: int = 0  # loss tokens at padding positions (pad and EOS may be the same id)

    def problems(self, expected_turns: int) -> str | None:
        """None when each of the `expected_turns` replies is one run, trained up to its end-of-turn token."""
        if self.turns == expected_turns == self.ended and not self.on_padding:
            return None
        return (f"{self.turns} trained spans for {expected_turns} assistant turns, {self.ended} ending on an "
                f"end-of-turn token, {self.on_padding} loss tokens on padding")


def loss_turns(tok, batches, counts: LossTurns | None = None) -> LossTurns:
    """Count, over `batches` of (input_ids [B, T], loss [B, T] bool, padding [B, T] bool or None), the trained
    spans and whether each ends on an end-of-turn token (trailing blank tokens such as "\\n" skipped): when the
    pad token is EOS, a mask built from token ids instead of positions would drop the reply's last token."""
    counts = counts or LossTurns()
    end_ids, blank = end_of_turn_ids(tok), {}

    def is_blank(i):
        if i not in blank:
            blank[i] = i not in end_ids and tok.decode([i]).strip() == ""
        return blank[i]

    for ids, loss, pad in batches:
        ids, loss = ids.tolist(), loss.tolist()
        if pad is not None:
            counts.on_padding += sum(a and b for row_l, row_p in zip(loss, pad.tolist()) for a, b in zip(row_l, row_p))
        for row, mask in zip(ids, loss):
            t = 0
            while t < len(row):
                if not mask[t]:
                    t += 1
                    continue
                start = t
                while t < len(row) and mask[t]:
                    t += 1
                last = t - 1
                while last > start and is_blank(row[last]):
                    last -= 1
                counts.turns += 1
                counts.ended += row[last] in end_ids
    return counts


def posttrain_batches(rows, batch_size: int, pad_id: int):
    """(input_ids, loss, padding) of posttrain's packed rows, collated as its trainer collates them, for loss_turns."""
    import torch

    from posttrain.data.packing import collate

    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = collate(chunk, pad_id)
        width = b["input_ids"].shape[1]
        yield b["input_ids"], b["loss_mask"].bool(), torch.tensor([[t >= len(r) for t in range(width)] for r in chunk])


def trl_batches(dataset, collator, batch_size: int):
    """(input_ids, labels != -100, padding) of a TRL trainer's prepared dataset through its own collator."""
    for i in range(0, len(dataset), batch_size):
        b = collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        yield b["input_ids"], b["labels"] != -100, (b["attention_mask"] == 0) if "attention_mask" in b else None


@dataclass
class ChatCheck:
    """check_chats' findings over a list of chats."""

    lengths: list[int] = field(default_factory=list)  # tokens per chat
    differ: list[int] = field(default_factory=list)  # chats whose TRL tokens or assistant mask differ from posttrain's
    turns: LossTurns = field(default_factory=LossTurns)
    assistant_turns: int = 0
    first_problem: str = ""

    @property
    def problems(self) -> str | None:
        if self.differ:
            return (f"{len(self.differ)} of {len(self.lengths)} chats tokenize or mask differently for TRL "
                    f"(first: chat {self.differ[0]}: {self.first_problem})")
        return self.turns.problems(self.assistant_turns)


def check_chats(tok, chats: list[list[dict]], template: str) -> ChatCheck:
    """Both sides train on the same tokens with the same loss mask: for every chat, posttrain's `tokenize_chat`
    (the model's own template, assistant spans found by offsets) against transformers' rendering of `template`
    with `return_assistant_tokens_mask` (what TRL's SFTTrainer runs); and every assistant reply's mask runs up to
    its end-of-turn token (<|im_end|>, which may also be EOS and pad)."""
    import torch

    from posttrain.data.chat import tokenize_chat

    check, ours_masks = ChatCheck(), []
    for i, messages in enumerate(chats):
        ours = tokenize_chat(tok, messages)
        trl = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        check.lengths.append(len(ours.input_ids))
        check.assistant_turns += sum(m["role"] == "assistant" for m in messages)
        if ours.input_ids != list(trl["input_ids"]) or ours.loss_mask != list(trl["assistant_masks"]):
            if not check.differ:
                same_text = tok.decode(ours.input_ids) == tok.decode(trl["input_ids"])
                check.first_problem = ("same text, different assistant masks" if same_text else
                                       f"different text: {tok.decode(trl['input_ids'])[:200]!r}")
            check.differ.append(i)
        ours_masks.append((torch.tensor([ours.input_ids]), torch.tensor([ours.loss_mask]).bool(), None))
    loss_turns(tok, ours_masks, check.turns)
    return check


def assistant_turns(data_path) -> int:
    """Assistant messages in a conversational .jsonl file."""
    return sum(m["role"] == "assistant" for line in Path(data_path).read_text().splitlines()
               for m in json.loads(line)["messages"])


def posttrain_trainer(model, rows, train_cfg, *, pad_id: int, dtype: str):
    """posttrain's Trainer for next-token loss on packed rows, on CPU, without a progress bar."""
    import torch

    from posttrain.training.objectives import NextToken
    from posttrain.training.trainer import Trainer

    return Trainer(model, rows, train_cfg, NextToken(pad_id), device=torch.device("cpu"), dtype=dtype, progress=False)


def lr_at(step: int, total: int, train_cfg) -> float:
    """posttrain's learning rate at `step` (warmup + cosine)."""
    from posttrain.training.trainer import lr_at as f

    return f(step, total, train_cfg)


def nll_and_count(model, batch):
    """posttrain's summed target NLL (fp32) of a collated batch, and its number of targets."""
    from posttrain.modeling.forward import nll_and_count as f

    return f(model, batch)


# ------------------------------------------------------------------ measuring TRL's side

def clock_callback(clock: StepClock):
    """A TrainerCallback that hooks `clock` to the torch AdamW inside the (accelerate-wrapped) optimizer and starts
    it at on_train_begin: after the optimizer, accelerate.prepare and the dataloader are set up, before step 1."""
    from transformers import TrainerCallback

    class StartClock(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            getattr(optimizer, "optimizer", optimizer).register_step_post_hook(clock)
            clock.start()

    return StartClock()


def posttrain_schedule(optimizer, total_steps: int, train_cfg):
    """posttrain's warmup + cosine schedule as a LambdaLR (HF's cosine_with_min_lr warms up from lr 0, one step
    behind); return it from a TRL trainer's `create_scheduler`."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda s: lr_at(s, total_steps, train_cfg) / train_cfg.lr)


# ------------------------------------------------------------------ running the sides

def add_common_args(p: argparse.ArgumentParser, sides, steps: int = 30) -> None:
    """The options every bench takes: --model, --steps, --warmup-steps, --dtype, --lr, --repeats, --sides, --json,
    and the internal --side/--data of a side's process."""
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="transformers model directory with its tokenizer and chat template (bench/make_model.py "
                        "builds benchmark shapes)")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps on every side")
    p.add_argument("--warmup-steps", type=int, default=3,
                   help="optimizer steps run but not timed; tokens/s covers the steps after them")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "auto"),
                   help="bf16 = autocast over fp32 weights")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all sides; tokens/s and memory are the medians over rounds")
    p.add_argument("--sides", default=",".join(sides), help="comma list out of " + ", ".join(sides))
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--side", choices=sides, help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--data", help=argparse.SUPPRESS)


def selected_sides(args, sides) -> list[str]:
    """--sides as a list, after checking it and --warmup-steps (exits with a message otherwise)."""
    chosen = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(chosen) - set(sides):
        sys.exit(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sides)}.")
    if not 1 <= args.warmup_steps < args.steps:
        sys.exit(f"--warmup-steps {args.warmup_steps}: give 1 to --steps - 1 ({args.steps - 1}); "
                 "the timed steps are the ones after the warm-up.")
    return chosen


def emit_result(r: dict) -> None:
    """A side process's last word: its result as one 'RESULT {json}' line on stdout."""
    print("RESULT " + json.dumps(r), flush=True)


def run_side(script, side: str, opts: dict) -> dict:
    """Run `python script --side SIDE --OPTION VALUE...` (opts: option -> value, '_' read as '-') in its own
    process, so its memory is its own; return its result with tokens_per_s (timed tokens / timed seconds)."""
    opts = dict(side=side, **opts)
    cmd = [sys.executable, str(script)] + [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"side {side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    r["tokens_per_s"] = r["timed_tokens"] / r["timed_s"]
    return r


def run_rounds(sides: list[str], repeats: int, run_one, describe=None) -> dict[str, list[dict]]:
    """`repeats` rounds of run_one(side) for every side, one at a time, the order rotated each round (a neighbour's
    load on a shared CPU does not always land on the same side); prints describe(round, side, result) after each."""
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for k in range(repeats):
        for side in sides[k % len(sides):] + sides[:k % len(sides)]:
            r = run_one(side)
            runs[side].append(r)
            if describe:
                print(describe(k + 1, side, r), flush=True)
    return runs


# ------------------------------------------------------------------ reporting

def environment(dtype: str) -> dict:
    """Where the numbers come from: CPU and threads, the dtype ("auto" resolved), library versions, and the matmul
    peak measured now with the threads the sides inherit."""
    import torch
    import transformers
    import trl

    from posttrain.models import device_name, resolve_dtype

    env = dict(device=device_name(torch.device("cpu")), dtype=resolve_dtype(dtype), torch=torch.__version__,
               transformers=transformers.__version__, trl=trl.__version__)
    env["matmul_peak_flops"] = matmul_peak_flops(env["dtype"])
    return env


def environment_line(env: dict) -> str:
    return (f"{env['device']} | dtype {env['dtype']} | matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s "
            f"| torch {env['torch']} | transformers {env['transformers']} | trl {env['trl']}")


def environment_sentence(env: dict) -> str:
    return (f"CPU: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}; "
            f"dtype {env['dtype']}; matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s (best of 5 "
            f"2048x2048 {env['dtype']} matmuls here).")


MEASURES = ("tokens_per_s", "mfu", "train_delta_mb", "train_peak_mb", "peak_rss_mb")
MEASURE_HEADERS = ("tokens/s", "6·N·tokens/s of matmul peak", "train peak Δ MB", "train peak MB", "process peak MB")


def summarise(runs: list[dict], peak_flops: float, extra=()) -> dict:
    """One side's rounds -> its first round's result with each measure (and each key of `extra`) the median over
    rounds (every round's value in <measure>_runs); mfu = model FLOP/s (6 x parameters x tokens/s) / the matmul
    peak."""
    for r in runs:
        r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak_flops
    out = dict(runs[0])
    for k in (*MEASURES, *extra):
        out[k + "_runs"] = [r[k] for r in runs]
        out[k] = statistics.median(out[k + "_runs"])
    return out


def measure_cells(r: dict) -> list[str]:
    """The cells under MEASURE_HEADERS: median [min–max] over rounds."""
    return [spread(r["tokens_per_s_runs"]), spread([100 * m for m in r["mfu_runs"]], "{:.1f}") + "%",
            spread(r["train_delta_mb_runs"]), spread(r["train_peak_mb_runs"]), spread(r["peak_rss_mb_runs"])]


def markdown_table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


@dataclass(frozen=True)
class Quality:
    """The held-out measure a bench compares (SFT: loss, lower is better; a reward model: accuracy, higher)."""

    key: str = "eval_loss"
    name: str = "held-out loss"
    lower_is_better: bool = True

    def better_or_within(self, ours: float, theirs: float, tolerance: float) -> bool:
        return ours <= theirs * (1 + tolerance) if self.lower_is_better else ours >= theirs * (1 - tolerance)


def ratio_lines(res: dict, quality: Quality = Quality()) -> list[str]:
    """posttrain / each TRL setting: tokens/s, training memory and quality."""
    ours = res[OURS]
    return [f"{OURS} / {s}: tokens/s x{ours['tokens_per_s'] / r['tokens_per_s']:.2f}, "
            f"train peak Δ x{ours['train_delta_mb'] / max(r['train_delta_mb'], 1):.2f}, "
            f"train peak x{ours['train_peak_mb'] / r['train_peak_mb']:.2f}, "
            f"process peak x{ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}, "
            f"{quality.name} {ours[quality.key] - r[quality.key]:+.3f}"
            for s, r in res.items() if s != OURS]


def verdict_lines(res: dict, quality: Quality = Quality(), speed_goal: float = 1.5,
                  tolerance: float = 0.05) -> list[str]:
    """The verdict against TRL's fastest setting: WINS when posttrain has at least `speed_goal` x its steady-state
    tokens/s, needs no more training memory (the rise over the pre-training baseline) and its quality is better or
    within `tolerance`; then a line naming every other TRL setting that needed less training memory."""
    pt, trl = res[OURS], {s: r for s, r in res.items() if s != OURS}
    best = max(trl, key=lambda s: trl[s]["tokens_per_s"])
    b = trl[best]
    speed = pt["tokens_per_s"] / b["tokens_per_s"]
    mem_ok = pt["train_delta_mb"] <= b["train_delta_mb"]  # what training adds, not what each library imports
    q_ok = quality.better_or_within(pt[quality.key], b[quality.key], tolerance)
    good, bad = ("lower", "higher") if quality.lower_is_better else ("higher", "lower")
    better = pt[quality.key] <= b[quality.key] if quality.lower_is_better else pt[quality.key] >= b[quality.key]
    q_word = (good if better else f"{bad}, within {tolerance:.0%}") if q_ok else f"WORSE by more than {tolerance:.0%}"
    q_word = "equal" if pt[quality.key] == b[quality.key] else q_word
    won = speed >= speed_goal and mem_ok and q_ok
    lines = [f"Verdict: {OURS} {'WINS' if won else 'LOSES'} against TRL's fastest setting here ({best}): "
             f"x{speed:.2f} its steady-state tokens/s "
             f"(goal x{speed_goal:g}: {'met' if speed >= speed_goal else 'NOT met'}), "
             f"{'no more' if mem_ok else 'MORE'} training memory ({pt['train_delta_mb']:,.0f} vs "
             f"{b['train_delta_mb']:,.0f} MB over the pre-training baseline), {quality.name} "
             f"{pt[quality.key]:.3f} vs {b[quality.key]:.3f} ({q_word})."]
    leaner = [f"{s} {r['train_delta_mb']:,.0f} MB" for s, r in trl.items()
              if s != best and r["train_delta_mb"] < pt["train_delta_mb"]]
    if leaner:
        lines.append(f"Training memory: {OURS}'s {pt['train_delta_mb']:,.0f} MB is MORE than {', '.join(leaner)}.")
    return lines


def goal_lines(res: dict, speed_goal: float = 3.0, mfu_goal: float = 0.6) -> list[str]:
    """The issue's goals, each met or not: posttrain's steady-state tokens/s at least `speed_goal` x TRL's fastest
    setting, at least `mfu_goal` of the measured matmul peak (6·N·tokens/s), and no more training memory (the rise
    over the pre-training baseline) than any TRL setting."""
    pt, trl = res[OURS], {s: r for s, r in res.items() if s != OURS}
    best = max(trl, key=lambda s: trl[s]["tokens_per_s"])
    leanest = min(trl, key=lambda s: trl[s]["train_delta_mb"])
    speed = pt["tokens_per_s"] / trl[best]["tokens_per_s"]

    def met(ok):
        return "met" if ok else "NOT met"

    return [f"Goals: tokens/s >= x{speed_goal:g} TRL's fastest setting ({best}): x{speed:.2f}, "
            f"{met(speed >= speed_goal)}; >= {mfu_goal:.0%} of the matmul peak: {pt['mfu']:.1%}, "
            f"{met(pt['mfu'] >= mfu_goal)}; training memory <= every TRL setting's: {pt['train_delta_mb']:,.0f} MB vs "
            f"{trl[leanest]['train_delta_mb']:,.0f} MB ({leanest}), "
            f"{met(pt['train_delta_mb'] <= trl[leanest]['train_delta_mb'])}."]


# ------------------------------------------------------------------ preference pairs (reward and DPO benches)

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


def template_facts(tok) -> str:
    """What the tokenizer's chat template and tokens do that matters here, in words."""
    probe = "PROBE-USER-TEXT"
    text = tok.apply_chat_template([dict(role="user", content=probe)], tokenize=False)
    facts = ["its own chat template"]
    if "system" in text.split(probe)[0]:
        facts.append("which inserts a default system prompt")
    if tok.pad_token_id == tok.eos_token_id:
        facts.append(f"pad token = EOS ({tok.pad_token!r})")
    return ", ".join(facts)


class PassMeter:
    """Wall time and the peak resident memory (and its rise over the start) of one block: a reference pass.

    The same instruments as StepClock: /proc/self/statm sampled every 5 ms, and VmHWM reset at the start where the
    kernel allows it. `process_peak_before` keeps the process's peak up to the start (the reset clears it)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self._stop = interval_s, threading.Event()
        self.seconds = self.peak_mb = self.delta_mb = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, rss_mb())

    def __enter__(self):
        gc.collect()
        self.process_peak_before = status_mb("VmHWM")
        self.hwm_reset = reset_hwm()
        self.before_mb = self._peak = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._peak, rss_mb(), status_mb("VmHWM") if self.hwm_reset else 0.0)
        self.delta_mb = self.peak_mb - self.before_mb
        return False


def weights_fingerprint(model) -> float:
    """A sum over every trained weight (float64): equal on every side when they start from the same weights."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))


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


def trl_optimizer(trainer_args) -> str:
    """The optimizer a transformers/TRL config asks for, in words."""
    return f"AdamW ({getattr(trainer_args.optim, 'value', trainer_args.optim)})"


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
