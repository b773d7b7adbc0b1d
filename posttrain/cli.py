"""The `posttrain` command. Every subcommand is a module in `posttrain.commands`.

A command module defines NAME, HELP, DESCRIPTION (optional), add_arguments(parser)
and run(args) -> int. Modules are discovered, so adding a command is adding a file.
Every training stage of the registry (stages.registry) is a command too, with the
options every stage shares (stages.common.add_stage_arguments).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

from posttrain import __version__
from posttrain.errors import PosttrainError


def _command_modules():
    import posttrain.commands as pkg
    from posttrain.stages.common import StageCommand
    from posttrain.stages.registry import training_stages

    mods = [StageCommand(stage) for stage in training_stages().values()]
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"posttrain.commands.{info.name}")
        if hasattr(mod, "NAME"):
            mods.append(mod)
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 100))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain",
        description="Turn a pretrained base language model into an assistant, stage by stage, "
        "and prove what each stage did. Run `posttrain COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"posttrain {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        _accept_debug(p)
        p.set_defaults(_run=mod.run)
    return parser


DEBUG_HELP = "On an error, also print the Python traceback (errors are otherwise one paragraph)."


def one_paragraph(e: BaseException) -> str | None:
    """The one-paragraph message for an error caused by the user's input, or None for anything else (a bug).

    PosttrainError says what to do itself; undecodable text and a file that cannot be opened are
    named here, for the paths that do not check them first (e.g. standard input).
    """
    if isinstance(e, PosttrainError):
        text = str(e)
    elif isinstance(e, UnicodeDecodeError):
        text = (f"the input is not valid UTF-8: byte 0x{e.object[e.start]:02x} at byte offset {e.start} ({e.reason}). "
                f"Save it as UTF-8.")
    elif isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}."
    else:
        return None
    return re.sub(r"\s*\n\s*", " ", text.strip())  # one paragraph, whatever the message held


def run_reporting_errors(work) -> int:
    """Run a tool's `work()` (the scripts under scripts/ use it): 0, or an error caused by the user's input as one
    paragraph on stderr and 2, as `posttrain` does; anything else (a bug) still raises."""
    try:
        work()
    except Exception as e:
        message = one_paragraph(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def _accept_debug(parser: argparse.ArgumentParser) -> None:
    """--debug after the command too (`posttrain config show sft --debug`), in nested subcommands as well.

    SUPPRESS: a `posttrain --debug sft` given before the command is not reset by the subcommand's default.
    """
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _accept_debug(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if getattr(args, "no_progress", False):  # transformers' own bars (e.g. "Loading weights") too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`posttrain audit show RUN | head`): nothing left to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush of stdout fails silently too
        return 0
    except Exception as e:
        message = one_paragraph(e)
        if message is None or args.debug:
            raise
        print(f"posttrain {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
