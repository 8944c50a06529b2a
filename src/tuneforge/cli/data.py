"""The `tuneforge data ...` verbs: preview and prepare training data before any training.

    tuneforge data inspect ../shared/data/roleplay_alpaca.json --format alpaca --examples 3
    tuneforge data inspect --data ../shared/data/tinyshakespeare.txt --format raw --cutoff_len 256
    tuneforge data prepare data.jsonl --validation_split 0.01 --save prepared/
    tuneforge data formats

They take the same data and model keys as `tuneforge train` (cli/flags.py builds them from RunConfig), so a
preview shows exactly what training will read. Errors are DataError/ConfigError sentences that the main CLI
prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tuneforge.cli.flags import MODEL_KEYS, add_setting_flags, add_verb, run_config_from
from tuneforge.config import RunConfig
from tuneforge.errors import DataError

# Keys of other groups that data preparation reads: the model's tokenizer, and the seed of the split.
DATA_VERB_KEYS = (*MODEL_KEYS, "seed")


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add `data` with its sub-verbs inspect, prepare and formats to the main parser's sub-parsers."""
    data = add_verb(
        subparsers,
        "data",
        help="Preview or prepare training data (shape, cleaning, tokens).",
        description="Preview or prepare training data before any training.",
    )
    verbs = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    inspect = add_verb(
        verbs,
        "inspect",
        help="Show shape, counts per stage, token lengths and examples with no-loss tokens marked.",
    )
    _add_data_flags(inspect)
    inspect.add_argument(
        "--examples", type=int, default=3, help="How many rendered examples to show (default: 3)."
    )
    inspect.add_argument(
        "--histogram",
        default=None,
        help="Where to write the token-length histogram PNG "
        "(default: beside the prepared data in the cache; the path is printed).",
    )

    prepare = add_verb(
        verbs,
        "prepare",
        help="Clean, split and tokenize into the cache (what training will read); optionally keep a copy.",
    )
    _add_data_flags(prepare)
    prepare.add_argument(
        "--save",
        default=None,
        help="Also write the prepared data to this folder (load it "
        "later with tuneforge.data.load_preprocessed_data).",
    )

    add_verb(verbs, "formats", help="List the shipped format files.")
    return data


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data_file",
        nargs="?",
        metavar="DATA",
        help="Data file or folder (or --data FILE; default: data: in the config).",
    )
    parser.add_argument("--config", default=None, help="YAML run config to read settings from.")
    data_keys = [f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("group") == "data"]
    add_setting_flags(parser, RunConfig, [*DATA_VERB_KEYS, *data_keys])


def _config(args: argparse.Namespace) -> RunConfig:
    from tuneforge.data import preflight

    positional = getattr(args, "data_file", None)
    if positional and Path(positional).suffix in (".yaml", ".yml") and args.config is None:
        args.config, args.data_file = positional, None  # `data inspect run.yaml`: the run config's data
    config = run_config_from(args, args.config)
    if not config.data:
        raise DataError("no data given; pass a file or folder, e.g. tuneforge data inspect data.jsonl")
    preflight(config)  # before the tokenizer loads
    return config


def _device(config: RunConfig) -> str:
    """The device recipe auto plans for; preparing data needs none, so one this machine lacks (a config written
    for a GPU machine) is a note, not an error."""
    from tuneforge.errors import ModelError
    from tuneforge.hardware import pick_device

    try:
        return pick_device(config.device)
    except ModelError as error:
        here = pick_device("auto")
        print(f"note: {error}; recipe auto chooses for this machine's {here} here")
        return here


def _tokenizer(config: RunConfig):
    from tuneforge.models.loading import tokenizer_for

    return tokenizer_for(config.model, config.trust_remote_code)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from tuneforge.data.inspection import inspect_data
    from tuneforge.defaults import data_choices_only
    from tuneforge.recipe import preview_settings

    config = _config(args)
    assert config.data is not None  # _config refuses a config without data
    tokenizer = _tokenizer(config)
    # the data `train` would train on: recipe auto's validation split and packing chosen (printed)
    config, prepared = preview_settings(config, tokenizer, _device(config), log=data_choices_only())
    inspection = inspect_data(
        config.data, tokenizer, config, n_examples=args.examples, histogram=args.histogram, prepared=prepared
    )
    print(inspection.render())
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tuneforge.data import save_preprocessed_data
    from tuneforge.defaults import data_choices_only
    from tuneforge.recipe import run_settings

    config = _config(args)
    assert config.data is not None  # _config refuses a config without data
    # as `train` prepares it: recipe auto's split and packing chosen (printed), so its cache is the run's
    config, prepared = run_settings(config, _device(config), _tokenizer(config), log=data_choices_only())
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
