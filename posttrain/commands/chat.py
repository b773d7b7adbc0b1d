"""`posttrain chat`: talk to a model in the terminal, through its chat template."""

from __future__ import annotations

import sys

from posttrain.commands.generate import (
    add_model_arguments,
    add_sampling_arguments,
    load_engine,
    sampling_params_from_args,
)

NAME = "chat"
HELP = "talk to a model in the terminal (chat template, history kept)"
ORDER = 70
DESCRIPTION = """\
Talk to a model in the terminal. Each line you type is a user turn; the model's reply
is generated with its chat template from the whole conversation so far.

commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set a new system prompt and start a new conversation
  /exit          quit (end of input, Ctrl-D, does too)

Standard input may be piped: every line is a user turn, and the transcript is printed.
Decoding is greedy unless --temperature > 0.

examples:
  posttrain chat runs/sft
  posttrain chat runs/sft --system "Answer in one word." --temperature 0.7
  printf 'What is the capital of France?\\n' | posttrain chat runs/sft
"""


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", help="system prompt at the start of the conversation")
    add_sampling_arguments(parser, max_new_tokens=256)


def _read_line(interactive: bool) -> str | None:
    """The next line typed or piped in, or None at the end of input."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    try:
        return input("you> ")
    except EOFError:
        return None


def run(args) -> int:
    params = sampling_params_from_args(args)  # checked before the model loads
    engine = load_engine(args, batch_size=1)
    interactive = sys.stdin.isatty()
    system = args.system
    history: list[dict] = []
    if interactive:
        print("chatting with " + str(args.artifact) + "; /reset, /system TEXT, /exit", file=sys.stderr)
    turn = 0
    while (line := _read_line(interactive)) is not None:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        command, _, rest = text.partition(" ")
        if command in ("/reset", "/system"):
            if command == "/system":
                system = rest.strip() or None
            history = []
            print(f"[new conversation; system prompt: {system or '(none)'}]", file=sys.stderr)
            continue
        if not interactive:
            print(f"user> {text}")
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        # A different seed each turn, so sampled replies do not replay the same random stream.
        params.seed = args.seed + turn
        reply = engine.chat([messages], params)[0].text
        history.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)
        turn += 1
    return 0
