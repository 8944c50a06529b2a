"""The `tuneforge` command: a thin face over the core, one verb per function.

    tuneforge demo                                     # fine-tune the default model on bundled data
    tuneforge train examples/cheese_lora.yaml --epochs 1 --learning_rate 1e-3
    tuneforge generate --adapter runs/demo/adapter "To make a cheese sandwich "
    tuneforge logits "To be or not to"
    tuneforge perplexity --adapter runs/demo/adapter held_out.txt
    tuneforge compare --adapter runs/demo/adapter "To make a cheese sandwich "
    tuneforge data inspect data.json --format_file alpaca-format
    tuneforge modules default

Errors in the user's input print one line and exit with code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable

from tuneforge.cli_data import add_data_commands, cmd_data
from tuneforge.cli_eval import EVAL_COMMANDS, add_eval_commands
from tuneforge.config import RunConfig, field_help, field_names, load_config
from tuneforge.errors import DataError, TuneforgeError

GROUP_TITLES = {"model": "model", "data": "data", "lora": "LoRA", "scratch": "from scratch", "training": "training",
                "output": "output"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per RunConfig key, with the key's help text; only flags actually given become overrides."""
    groups = {name: parser.add_argument_group(f"{title} settings") for name, title in GROUP_TITLES.items()}
    defaults = RunConfig()
    for name, f in field_help().items():
        meta = f.metadata
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, list) else repr(default) if isinstance(default, str) else default
        help_text = meta["help"] + (f" Choices: {', '.join(map(str, meta['choices']))}." if meta.get("choices") else "")
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        groups[meta.get("group", "training")].add_argument(
            *flags, dest=name, metavar="VALUE", default=argparse.SUPPRESS,
            help=f"{help_text} (default: {shown})".replace("%", "%%"))


def _config_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in field_names() if hasattr(args, name)}


def cmd_train(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.data.sources import data_files

    config = load_config(args.config, _config_overrides(args))
    if not config.data:
        raise TuneforgeError("no training data given; set data: in the config or pass --data FILE")
    files = data_files(config.data)  # a missing file or empty folder fails now, not after loading the model
    if all(file.stat().st_size == 0 for file in files):
        raise DataError(f"data file '{config.data}' is empty; it needs at least one line of text to train on")
    print(f"loading model '{config.model}' ...", flush=True)
    llm = tf.load(config.model, device=config.device, precision=config.precision,
                  trust_remote_code=config.trust_remote_code)
    result = llm.train(config=config)
    if result.saved_to is None:  # not the main process of a multi-process run: rank 0 reports
        return 0
    if result.interrupted:
        print(f"interrupted at step {result.steps}/{result.total_steps}; a checkpoint is saved. Resume with:\n"
              f"  tuneforge train {result.run_dir / 'config.yaml'} --resume_from latest")
        return 0
    print(f"done: {result.steps} steps ({result.stopped_because}); loss {result.losses[0]:.4f} -> "
          f"{result.final_loss:.4f}; saved to {result.saved_to}; report: {result.run_dir / 'report.md'}")
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.models.adapters import linear_module_names

    llm = tf.load(args.model, precision="fp32")
    config = llm.model.config
    print(f"model: {args.model} ({config.model_type}), hidden size: {config.hidden_size}, "
          f"layers: {getattr(config, 'num_hidden_layers', '?')}")
    print("linear modules (usable as target_modules): " + ", ".join(linear_module_names(llm.model)))
    print("embedding/output modules: " + ", ".join(
        name for name, _ in llm.model.named_children() if name) + " (e.g. embed_tokens, lm_head)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tuneforge.demo import run_demo

    run_demo(output_dir=args.output_dir, max_steps=args.max_steps)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "modules": cmd_modules, "demo": cmd_demo, "data": cmd_data, **EVAL_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", allow_abbrev=False, description="Fine-tune a language model on your own text "
                                     "and see what it learned.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Prefix matching would take a mistyped --learning_rat as --learning_rate; we suggest the fix instead.
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, allow_abbrev=False, **k)

    train = sub.add_parser("train", help="Fine-tune a model from a YAML config and/or --key value settings.",
                           description="Fine-tune a model. Every config key can be given as --key value and "
                           "overrides the YAML file.")
    train.add_argument("config", nargs="?", help="YAML run config (optional; keys as listed below).")
    _add_config_flags(train)

    modules = sub.add_parser("modules", help="List a model's module names (for target_modules) and hidden size.")
    modules.add_argument("model", nargs="?", default="default", help="Model (default: default).")

    demo = sub.add_parser("demo", help="Fine-tune the default model on bundled sample data; show before/after.")
    demo.add_argument("--output-dir", default="runs/demo", help="Run folder (default: runs/demo).")
    demo.add_argument("--max-steps", type=int, default=None, help="Training steps (default: the demo's own).")

    add_data_commands(sub)
    add_eval_commands(sub)
    return parser


def _reject_unknown(unknown: list[str], command: str) -> None:
    flags = [a for a in unknown if a.startswith("-")]
    if not flags:
        raise TuneforgeError(f"unexpected argument '{unknown[0]}'; see tuneforge {command} --help")
    name = flags[0].lstrip("-").split("=")[0]
    candidates = field_names() if command == "train" else []
    close = difflib.get_close_matches(name.replace("-", "_"), candidates, n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else f"; see tuneforge {command} --help"
    raise TuneforgeError(f"unknown option '{flags[0]}'{hint}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            _reject_unknown(unknown, args.command)
        return COMMANDS[args.command](args)
    except TuneforgeError as error:
        if args.debug:
            raise
        print(f"tuneforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
