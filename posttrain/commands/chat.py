"""`posttrain chat`: talk to a model in the terminal, through its chat template."""

from __future__ import annotations

import sys

from posttrain.commands.generate import (
    add_model_arguments,
    add_sampling_arguments,
    load_engine,
    sampling_params_from_args,
)
from posttrain.console import notice
from posttrain.errors import bad_utf8

COMMANDS = {
    "/help": "list the commands",
    "/reset": "forget the conversation (the system prompt stays)",
    "/system TEXT": "set a new system prompt and start a new conversation",
    "/exit": "quit (end of input, Ctrl-D, does too)",
}
HELP_TEXT = "\n".join(f"  {c:<13} {what}" for c, what in COMMANDS.items()) + (
    "\n  //TEXT        send TEXT with one leading / (a message that starts with /)")

NAME = "chat"
HELP = "talk to a model in the terminal (chat template, history kept)"
ORDER = 70
DESCRIPTION = f"""\
Talk to a model in the terminal. Each line you type is a user turn; the model's reply
is generated with its chat template from the whole conversation so far.

commands:
{HELP_TEXT}
Any other line starting with / is an unknown command and is not sent to the model.

The conversation must fit the model's context (max_position_embeddings) with room for the
reply (--max-new-tokens, at most half the context): the oldest turns are dropped when it
does not (the system prompt stays), with a notice; a message too long on its own is not
sent. Lines of piped input that are not valid UTF-8 are skipped with a notice.

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


def _lines(interactive: bool):
    """The lines typed or piped in, to the end of input. A piped line that is not UTF-8 is skipped with a notice."""
    while interactive:
        try:
            yield input("you> ")
        except EOFError:
            return
        except UnicodeDecodeError:
            notice("that line is not valid UTF-8 (check the terminal's encoding); it was skipped, not sent.")
    offset = 0
    for line_no, raw in enumerate(getattr(sys.stdin, "buffer", sys.stdin), start=1):
        try:
            yield (raw.decode("utf-8") if isinstance(raw, bytes) else raw).rstrip("\r\n")
        except UnicodeDecodeError as e:
            notice(f"input line {line_no} {bad_utf8(raw, e, line_no, offset, name_line=False)}; it was skipped, "
                   f"not sent. Send UTF-8 text.")
        offset += len(raw)


def drop_oldest_turns(history: list[dict], fits) -> tuple[list[dict], int] | None:
    """(the newest part of `history` that `fits`, the number of turns dropped), or None when nothing does.

    A turn is a user message and the replies after it; `fits(history) -> bool`.
    """
    dropped = 0
    while not fits(history):
        if len(history) <= 1:
            return None
        cut = next((j for j in range(1, len(history)) if history[j]["role"] == "user"), len(history) - 1)
        history, dropped = history[cut:], dropped + 1
    return history, dropped


def _fit_to_context(engine, system, history: list[dict], params) -> list[dict] | None:
    """History (its last message the new user turn) trimmed so the conversation and the reply fit the context,
    with a notice; None, with a notice, when the new message does not fit even alone."""
    from posttrain.data.chat import render_generation_prompt

    context = engine.context
    if context is None:
        return history
    reply = min(params.max_new_tokens, context // 2)  # room kept for the reply
    head = [{"role": "system", "content": system}] if system else []
    measure = lambda h: engine.encode_prompt(render_generation_prompt(engine.tokenizer, head + h))

    def fits(h):
        ids, whole = measure(h)
        return whole and len(ids) + reply <= context

    kept = drop_oldest_turns(history, fits)
    if kept is None:
        ids, whole = measure(history[-1:])
        size = f"{len(ids)} tokens" if whole else f"more than {context} tokens"
        notice(f"message not sent: with the chat template{' and system prompt' if system else ''} it takes {size}, "
               f"and the model's context of {context} tokens must also hold {reply} for the reply "
               f"(--max-new-tokens, at most half the context). Shorten it, or /reset with a shorter /system.")
        return None
    kept, dropped = kept
    if dropped:
        turns = "oldest turn" if dropped == 1 else f"{dropped} oldest turns"
        notice(f"dropped the {turns} of the conversation to fit the "
               f"model's context of {context} tokens with {reply} kept for the reply (the system prompt stays)")
    return kept


def run(args) -> int:
    params = sampling_params_from_args(args)  # checked before the model loads
    engine = load_engine(args, batch_size=1)
    interactive = sys.stdin.isatty()
    system = args.system
    history: list[dict] = []
    if interactive:
        print("chatting with " + str(args.artifact) + "; /help lists the commands", file=sys.stderr)
    turn = 0
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        command, _, rest = text.partition(" ")
        if text.startswith("//"):
            text = text[1:]  # the escape for a message that starts with /
        elif command == "/exit":
            break
        elif command in ("/reset", "/system"):
            if command == "/system":
                system = rest.strip() or None
            history = []
            print(f"[new conversation; system prompt: {system or '(none)'}]", file=sys.stderr)
            continue
        elif command == "/help":
            print("commands:\n" + HELP_TEXT, file=sys.stderr)
            continue
        elif text.startswith("/"):
            notice(f"unknown command {command}; it was not sent to the model. Commands: "
                   f"{', '.join(COMMANDS)}; start a message with // to send one that begins with /.")
            continue
        kept = _fit_to_context(engine, system, history + [{"role": "user", "content": text}], params)
        if kept is None:
            continue
        history = kept
        if not interactive:
            print(f"user> {text}")
        messages = ([{"role": "system", "content": system}] if system else []) + history
        # A different seed each turn, so sampled replies do not replay the same random stream.
        params.seed = args.seed + turn
        reply = engine.chat([messages], params)[0].text
        history.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)
        turn += 1
    return 0
