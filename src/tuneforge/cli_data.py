"""The `tuneforge data ...` commands: preview and prepare training data before any training.

    tuneforge data inspect ../shared/data/roleplay_alpaca.json --format_file alpaca-format --examples 3
    tuneforge data inspect ../shared/data/tinyshakespeare.txt --format raw --cutoff_len 256 --overlap_len 32
    tuneforge data prepare data.jsonl --validation_split 0.01 --save prepared/
    tuneforge data formats

Handlers only parse flags, call `tuneforge.data` and print; errors are DataError/ConfigError sentences that the
main CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.config import RunConfig, field_help, load_config

# The run-config keys that matter to data preparation, offered as --flags on every data command.
EXTRA_KEYS = ("model", "seed", "trust_remote_code")


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add `data` with its sub-commands to the main parser's sub-parsers (the main CLI sets allow_abbrev)."""
    data = subparsers.add_parser("data", help="Preview or prepare training data (shape, cleaning, tokens).",
                                 description="Preview or prepare training data before any training.")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    inspect = commands.add_parser("inspect", allow_abbrev=False, help="Show shape, counts per stage, token "
                                  "lengths and examples with no-loss tokens marked.")
    _add_common(inspect)
    inspect.add_argument("--examples", type=int, default=3, help="How many rendered examples to show (default: 3).")
    inspect.add_argument("--histogram", default=None, help="Where to write the token-length histogram PNG "
                         "(default: <data name>-token-lengths.png in the current folder).")
    inspect.set_defaults(data_handler=cmd_data_inspect)

    prepare = commands.add_parser("prepare", allow_abbrev=False, help="Clean, split and tokenize into the cache "
                                  "(what training will read); optionally keep a copy.")
    _add_common(prepare)
    prepare.add_argument("--save", default=None, help="Also write the prepared data to this folder (load it "
                         "later with tuneforge.data.load_preprocessed_data).")
    prepare.set_defaults(data_handler=cmd_data_prepare)

    formats = commands.add_parser("formats", allow_abbrev=False, help="List the shipped format files.")
    formats.set_defaults(data_handler=cmd_data_formats)
    return data


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", help="Data file or folder (default: data: in the config).")
    parser.add_argument("--config", default=None, help="YAML run config to read settings from.")
    defaults = RunConfig()
    group = parser.add_argument_group("data settings")
    for name, f in field_help().items():
        if f.metadata.get("group") != "data" and name not in EXTRA_KEYS or name == "data":
            continue
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, list) else repr(default)
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, metavar="VALUE", default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']} (default: {shown})")


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = {name: getattr(args, name) for name in field_help() if hasattr(args, name) and name != "data"}
    if args.data:
        overrides["data"] = args.data
    config = load_config(args.config, overrides)
    if not config.data:
        from tuneforge.errors import DataError

        raise DataError("no data given; pass a file or folder, e.g. tuneforge data inspect data.jsonl")
    return config


def _tokenizer(config: RunConfig):
    from tuneforge.models.loading import load_tokenizer, resolve

    return load_tokenizer(resolve(config.model), trust_remote_code=config.trust_remote_code)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from tuneforge.data.inspection import inspect_data

    config = _config(args)
    histogram = args.histogram or f"{Path(config.data.rstrip('/')).name.split('.')[0]}-token-lengths.png"
    inspection = inspect_data(config.data, _tokenizer(config), config, n_examples=args.examples,
                              histogram=histogram)
    print(inspection.render())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tuneforge.data import prepare_examples, save_preprocessed_data

    config = _config(args)
    prepared = prepare_examples(config.data, _tokenizer(config), config)
    print(prepared.describe())
    print(f"cache: {'hit' if prepared.cache_hit else 'written'} ({prepared.cache_dir})")
    if config.save_removed:
        print(f"removed records written to {config.save_removed}")
    if args.save:
        print(f"saved to {save_preprocessed_data(prepared, args.save)}")
    return 0


def cmd_data_formats(args: argparse.Namespace) -> int:
    from tuneforge.data.formats import load_format, shipped_formats

    for name in shipped_formats():
        fmt = load_format(name)
        print(f"{name}:")
        for written, template in fmt.templates.values():
            print(f"  {written}: {template!r}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """The main CLI's entry for `tuneforge data ...`: run the chosen sub-command."""
    return args.data_handler(args)
