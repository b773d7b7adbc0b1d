"""What every posttrain-vs-TRL benchmark shares: sft_vs_trl.py today, the reward and DPO benches next.

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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from measure import StepClock, matmul_peak_flops, spread  # noqa: F401  (re-exported: bench/measure.py)

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


def summarise(runs: list[dict], peak_flops: float) -> dict:
    """One side's rounds -> its first round's result with each measure the median over rounds (every round's value
    in <measure>_runs); mfu = model FLOP/s (6 x parameters x tokens/s) / the matmul peak."""
    for r in runs:
        r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak_flops
    out = dict(runs[0])
    for k in MEASURES:
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
