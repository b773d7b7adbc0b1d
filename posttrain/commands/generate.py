"""`posttrain generate`: complete a JSONL file of prompts with a model, in batches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from posttrain.context_window import OVERLONG_MODES
from posttrain.data.formats import NOT_UTF8_FIX, check_messages
from posttrain.errors import DataError, PosttrainError, bad_utf8

NAME = "generate"
HELP = "complete a JSONL file of prompts or conversations with a model"
ORDER = 71
DESCRIPTION = """\
Complete every prompt of a JSONL file with a model and write one JSON row per prompt.

Each input line is a JSON object with either
  "messages": [{"role": "user", "content": "..."}, ...]   a conversation; the model writes
                                                          the next assistant turn (chat template)
  "prompt": "..."                                         a user message, chat-templated as a
                                                          single user turn (or, with --raw,
                                                          continued as plain text)
Other fields are copied to the output row, which adds
  "completion" (text), "finish_reason" ("stop" or "length"), "num_tokens", "logprobs" (per token).

Decoding is greedy unless --temperature > 0; a --seed gives the same samples on every run.

A prompt must leave room for the reply in the model's context (max_position_embeddings): one that
leaves none is an error naming its line (or, with --overlong truncate, is cut to its last tokens);
one that leaves less than --max-new-tokens gets a shorter reply. Both are announced on stderr.

examples:
  posttrain generate runs/sft --prompts probes.jsonl --out answers.jsonl
  posttrain generate runs/base --prompts docs.jsonl --raw --max-new-tokens 64
  posttrain generate runs/sft --prompts q.jsonl --temperature 0.8 --top-p 0.95 --seed 1
"""


def add_model_arguments(parser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="model directory or posttrain artifact (local path)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, ... (default: auto, a GPU when there is one)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "bf16"],
        help="compute dtype; auto picks bf16 where the hardware runs it fast (default: auto)",
    )
    parser.add_argument(
        "--chat-template", default="auto", metavar="auto|own|default|PATH",
        help="auto: the tokenizer's own template, else posttrain's ChatML; own; default; or a .jinja file "
        "(default: auto)",
    )


def add_sampling_arguments(parser, max_new_tokens: int = 128) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help=f"most tokens generated per reply (default: {max_new_tokens})")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="sampling temperature; 0 is greedy decoding (default: 0)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: keep the most likely tokens up to probability P (default: 1, off)")
    g.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="keep only the K most likely tokens (default: 0, off)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of sampling (default: 0)")


def add_overlong_argument(parser) -> None:
    parser.add_argument(
        "--overlong", default="error", choices=OVERLONG_MODES,
        help="a prompt that leaves no room for the reply in the model's context: error (stop, naming it), or "
        "truncate (keep its last tokens, with a notice) (default: error)",
    )


def sampling_params_from_args(args):
    from posttrain.engine import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed,
    )


def load_engine(args, batch_size: int = 32, overlong_prompt: str = "error"):
    """Load ARTIFACT with its chat template and wrap it in an Engine."""
    from posttrain.data.chat import ensure_chat_template
    from posttrain.engine import Engine
    from posttrain.models import load_model_and_tokenizer, resolve_device

    device = resolve_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.artifact, device)
    ensure_chat_template(tokenizer, args.chat_template)
    return Engine(model, tokenizer, batch_size=batch_size, dtype=args.dtype, overlong_prompt=overlong_prompt)


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompts", required=True, metavar="FILE.jsonl",
                        help='input: one JSON object per line with "messages" or "prompt"')
    parser.add_argument("--out", metavar="FILE.jsonl", help="output file (default: standard output)")
    parser.add_argument("--raw", action="store_true",
                        help='continue "prompt" strings as plain text instead of chat-templating them')
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="prompts generated together (default: 32)")
    add_overlong_argument(parser)
    add_sampling_arguments(parser)


def read_prompts(path: str | Path) -> list[tuple[int, dict]]:
    """Read and check the prompt rows of a JSONL file: (line number, row); blank lines are skipped.

    "messages" are checked as SFT data checks them (roles, contents), so a file that trains also generates.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "does not exist.", "Pass --prompts with a JSONL file.")
    if not path.is_file():  # a FIFO or a device: reading it could wait forever for a writer
        raise DataError(path, None, None, "is not a regular file (a pipe, socket or device).",
                        "Save the prompts to a JSONL file and pass that file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # named by line and byte, as the data reader does
        raise DataError(path, None, None, bad_utf8(raw, e) + ".", NOT_UTF8_FIX) from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, line_no, None, f"is not valid JSON ({e.msg} at column {e.colno}).",
                            "Write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise DataError(path, line_no, None, "is not a JSON object.",
                            'Write {"prompt": "..."} or {"messages": [...]}.')
        if "messages" in row:
            check_messages(path, line_no, "messages", row["messages"], need_assistant=False)
        elif "prompt" in row:
            if not isinstance(row["prompt"], str) or not row["prompt"]:
                raise DataError(path, line_no, "prompt", "must be a non-empty string.", 'Write {"prompt": "..."}.')
        else:
            raise DataError(path, line_no, "prompt", 'is missing: a row needs "prompt" or "messages".',
                            'Write {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}.')
        rows.append((line_no, row))
    if not rows:
        raise DataError(path, None, None, "holds no prompts.", 'Write one {"prompt": "..."} per line.')
    return rows


def run(args) -> int:
    from posttrain.data.chat import render_generation_prompt
    from posttrain.outputs import resolved

    numbered = read_prompts(args.prompts)  # data and options are checked before the model loads
    if args.out and resolved(args.out, "--out") == Path(args.prompts).resolve():
        raise PosttrainError(f"--out {args.out} is the --prompts file itself: writing there would replace the "
                             f"prompts. Choose another --out.")
    rows = [row for _, row in numbered]
    params = sampling_params_from_args(args)
    if args.batch_size < 1:
        raise PosttrainError(f"--batch-size must be at least 1, got {args.batch_size}.")
    engine = load_engine(args, batch_size=args.batch_size, overlong_prompt=args.overlong)
    prompts = []
    for row in rows:
        if "messages" in row:
            prompts.append(render_generation_prompt(engine.tokenizer, row["messages"]))
        elif args.raw:
            prompts.append(row["prompt"])
        else:
            prompts.append(render_generation_prompt(engine.tokenizer, [{"role": "user", "content": row["prompt"]}]))
    labels = [f"the prompt at {args.prompts}, line {n}" for n, _ in numbered]
    completions = engine.generate(prompts, params, labels=labels)

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for row, c in zip(rows, completions):
            result = {**row, "completion": c.text, "finish_reason": c.finish_reason,
                      "num_tokens": len(c.token_ids), "logprobs": c.logprobs}
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()
    if args.out:
        stops = sum(c.finish_reason == "stop" for c in completions)
        print(f"wrote {len(completions)} completions to {args.out} ({stops} stopped, "
              f"{len(completions) - stops} hit --max-new-tokens)", file=sys.stderr)
    return 0
