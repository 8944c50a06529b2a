"""The `tuneforge` command: a thin face over the core, one table from verb to function.

    tuneforge demo                                     # fine-tune the default model on bundled data
    tuneforge train examples/cheese_lora.yaml --epochs 1 --learning_rate 1e-3
    tuneforge generate --adapter runs/demo/adapter "To make a cheese sandwich "
    tuneforge logits "To be or not to"
    tuneforge perplexity --adapter runs/demo/adapter held_out.txt
    tuneforge compare --adapter runs/demo/adapter "To make a cheese sandwich "
    tuneforge data inspect data.json --format alpaca
    tuneforge modules default
    tuneforge ui

Errors in the user's input print one line and exit with code 2 (`--debug` shows the traceback). Also runs as
`python -m tuneforge ...` and `accelerate launch -m tuneforge.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from tuneforge.cli import data, evaluate, train, ui
from tuneforge.cli.flags import CommandParser, unknown_option_hint
from tuneforge.errors import TuneforgeError

# Every verb and sub-verb, as typed after `tuneforge`, to the function that runs it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": train.cmd_train,
    "estimate": train.cmd_estimate,
    "modules": train.cmd_modules,
    "demo": train.cmd_demo,
    "data inspect": data.cmd_data_inspect,
    "data prepare": data.cmd_data_prepare,
    "data formats": data.cmd_data_formats,
    "generate": evaluate.cmd_generate,
    "logits": evaluate.cmd_logits,
    "perplexity": evaluate.cmd_perplexity,
    "compare": evaluate.cmd_compare,
    "merge": evaluate.cmd_merge,
    "export": evaluate.cmd_export,
    "ui": ui.cmd_ui,
}


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="tuneforge", description="Fine-tune a language model on your own text and see what it learned."
    )
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_train_commands(verbs)
    data.add_data_commands(verbs)
    evaluate.add_eval_commands(verbs)
    ui.add_ui_commands(verbs)
    return parser


def command_of(args: argparse.Namespace) -> str:
    """The COMMANDS key of a parsed command line, e.g. 'data inspect'."""
    return " ".join(word for word in (args.command, getattr(args, "data_command", None)) if word)


def dispatch(args: argparse.Namespace) -> int:
    """Run the function of the parsed verb."""
    return COMMANDS[command_of(args)](args)


def _verb_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for word in command.split():
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = verbs.choices[word]
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, unknown: list[str], command: str) -> None:
    flags = [a for a in unknown if a.startswith("-")]
    if not flags:
        raise TuneforgeError(f"unexpected argument '{unknown[0]}'; see tuneforge {command} --help")
    raise TuneforgeError(
        f"unknown option '{flags[0]}'{unknown_option_hint(_verb_parser(parser, command), flags[0])}"
    )


_shown: set[str] = set()
_PACKAGE = Path(__file__).resolve().parents[1]


def _in_package(filename: str) -> bool:
    """Whether a warning was raised in tuneforge's own code (not merely under a folder called tuneforge, such as
    a checkout's .venv)."""
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """tuneforge's own warnings as one line, like its errors, each once (a catch_warnings block anywhere resets
    Python's once-per-place memory); a library's keep Python's form (file and line)."""
    if issubclass(category, UserWarning) and _in_package(filename):
        if str(message) not in _shown:
            _shown.add(str(message))
            print(f"tuneforge: warning: {message}", file=file or sys.stderr)
    else:
        print(
            warnings.formatwarning(message, category, filename, lineno, line), end="", file=file or sys.stderr
        )


def main(argv: list[str] | None = None) -> int:
    # run as a program (not called from Python): train and demo may start it again on jemalloc
    args_from_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if "--debug" in unknown:  # given after the verb (`tuneforge train --debug ...`): the same switch
        unknown.remove("--debug")
        args.debug = True
    args.argv = list(argv)  # `train --nproc N` hands the same command line to every process
    args.from_program = args_from_program
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        if unknown:
            _reject_unknown(parser, unknown, command_of(args))
        return dispatch(args)
    except TuneforgeError as error:
        if args.debug:
            raise
        print(f"tuneforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130
