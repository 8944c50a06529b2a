"""The one flag builder: a --flag per typed setting (RunConfig, GenerationSettings), with help and range.

    from tuneforge.cli.flags import MODEL_KEYS, CommandParser, add_setting_flags, given_settings
    from tuneforge.config import RunConfig
    parser = CommandParser(prog="tuneforge example")
    add_setting_flags(parser, RunConfig, MODEL_KEYS)
    args = parser.parse_args(["--precision", "fp32", "--trust-remote-code"])
    given_settings(args, RunConfig)        # {'precision': 'fp32', 'trust_remote_code': True}

Only flags actually given become values (the rest keep the settings' own defaults), and the settings classes
validate them, so every verb names, documents and checks a key the same way. Each key answers to --some_key
and --some-key; a true/false key given alone (`--chat`) means true.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
import typing
from pathlib import Path
from typing import Any

from tuneforge.config import FALSE_WORDS, TRUE_WORDS, RunConfig, coerce, describe_range, load_config
from tuneforge.defaults import AUTO_CHOSEN
from tuneforge.errors import ConfigError

# The run-config keys every model-loading verb takes (train, data, generate, logits, perplexity, ...).
MODEL_KEYS = ("model", "precision", "device", "trust_remote_code")
GROUP_TITLES = {
    "model": "model",
    "data": "data",
    "lora": "LoRA",
    "scratch": "from scratch",
    "training": "training",
    "output": "output",
    "generation": "generation",
}


class BoolFlag(argparse.Action):
    """A true/false setting: `--flag` alone is true; `--flag false`, `--flag=no` and the like also work."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=True, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser without prefix matching (a mistyped --learning_rat gets a hint, not --learning_rate),
    where a true/false flag never swallows the positional argument after it (`generate --chat "Hi"`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        # argparse reads "-1e-3" as a flag ("expected one argument") where it reads "-0.001" as a value; no flag
        # here looks like a number, so every number with a minus sign is a value (and gets the range check)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        bool_flags = {
            s for action in self._actions if isinstance(action, BoolFlag) for s in action.option_strings
        }
        after_bool_flag = {}  # word -> flag, to explain `--packing maybe` read as a config file
        for i, arg in enumerate(args):
            if arg == "--":
                break
            following = args[i + 1].lower() if i + 1 < len(args) else None
            if arg in bool_flags and following not in TRUE_WORDS | FALSE_WORDS:
                args[i] = f"{arg}=true"
                if following is not None and not following.startswith("-") and "/" not in following:
                    after_bool_flag[args[i + 1]] = arg
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.after_bool_flag = {**getattr(parsed, "after_bool_flag", {}), **after_bool_flag}  # a verb's too
        return parsed, extras

    def error(self, message: str):
        """A mistake is one line (argparse prints the whole usage first: ~90 lines for train)."""
        self.exit(2, f"tuneforge: error: {message} (`{self.prog} --help` lists the flags)\n")


def flag_names(name: str) -> list[str]:
    """--some_key and --some-key for one setting."""
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


def add_setting_flags(
    parser: argparse.ArgumentParser,
    settings_class: type,
    names: typing.Iterable[str] | None = None,
    *,
    aliases: dict[str, list[str]] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """Add a flag for each setting in `names` (default: all) of the dataclass `settings_class`, grouped by the
    settings' group; `aliases` adds extra option strings (e.g. {"format": ["--shape"]}), `helps` replaces a
    setting's help where this verb reads it differently (perplexity's data is a text to score)."""
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    hints = typing.get_type_hints(settings_class)
    defaults = settings_class()
    # one group per title, also over several calls (perplexity adds data and format separately)
    groups: dict[str, Any] = {group.title: group for group in parser._action_groups if group.title}
    for name in names or fields:
        f = fields[name]
        group = f.metadata.get("group", "training")
        group_name = f"{GROUP_TITLES.get(group, group)} settings"
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        kwargs: dict[str, Any] = {"metavar": "VALUE", "type": functools.partial(_typed, name, hints[name])}
        if hints[name] is bool:
            kwargs.update(action=BoolFlag, metavar="true|false")
        elif f.metadata.get("repeatable"):
            kwargs = {"action": "append", "metavar": "TEXT"}
        groups[group_name].add_argument(
            *flag_names(name),
            *(aliases or {}).get(name, []),
            dest=name,
            default=argparse.SUPPRESS,
            help=(helps or {}).get(name) or describe(f, getattr(defaults, name)),
            **kwargs,
        )


def _typed(name: str, annotation: Any, text: str) -> Any:
    """The typed value of a flag; what does not convert is kept as typed, for the settings' one-line error."""
    try:
        return coerce(name, text, annotation)
    except ConfigError:
        return text


def describe(f: dataclasses.Field, default: Any) -> str:
    """A setting's help line: its text, choices, range and default (escaped for argparse's % formatting)."""
    meta = f.metadata
    parts = [meta["help"]]
    if meta.get("choices"):
        parts.append(f"Choices: {', '.join(map(str, meta['choices']))}.")
    notes = []
    if describe_range(meta):
        notes.append(describe_range(meta))
    fixed = ""
    if default is not None and default != []:
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        fixed = f"{shown!r}" if isinstance(shown, str) else f"{shown}"
    if f.name in AUTO_CHOSEN:
        notes.append("default: chosen from the data by recipe auto" + (f", else {fixed}" if fixed else ""))
    elif fixed:
        notes.append(f"default: {fixed}")
    text = " ".join(parts) + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")


def given_settings(args: argparse.Namespace, settings_class: type) -> dict[str, Any]:
    """The settings of `settings_class` given on the command line (the settings class validates them)."""
    return {
        f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class) if hasattr(args, f.name)
    }


def run_config_from(
    args: argparse.Namespace, config_file: str | None = None, settings_class: type | None = None
) -> RunConfig:
    """The RunConfig keys given as flags over the YAML `config_file`; a positional data file is --data.
    Keys of `settings_class` (a verb's other settings, e.g. generation's `seed`) are that class's, not a run's."""
    overrides = given_settings(args, RunConfig)
    if settings_class is not None:
        for name in given_settings(args, settings_class):
            overrides.pop(name, None)
    positional = getattr(args, "data_file", None)
    if positional:
        if overrides.get("data", positional) != positional:
            raise ConfigError(
                f"two data files given ('{positional}' and --data '{overrides['data']}'); give one"
            )
        overrides["data"] = positional
    flag = getattr(args, "after_bool_flag", {}).get(config_file)
    if flag and config_file and not Path(config_file).exists():
        raise ConfigError(
            f"config file '{config_file}' does not exist; it came after {flag}, a true/false flag: "
            f"give {flag} true or {flag} false (or {flag} alone for true)"
        )
    return load_config(config_file, overrides)


def unknown_option_hint(parser: argparse.ArgumentParser, option: str) -> str:
    """'; did you mean --learning_rate?' for the closest flag `parser` knows, else a pointer to --help."""
    from tuneforge.config import key_suggestion

    known = {s.lstrip("-").replace("-", "_") for action in parser._actions for s in action.option_strings}
    name = option.lstrip("-").split("=")[0].replace("-", "_")
    if name == "adapter" and "from_adapter" in known:  # the other verbs' --adapter, not axolotl's method key
        return "; did you mean --from_adapter (train a saved adapter further; axolotl's adapter: lora is --method)?"
    suggestion = key_suggestion(name, sorted(known))
    if suggestion is None:
        return f"; see {parser.prog} --help"
    meant, tool = suggestion
    return f"; did you mean --{meant}" + (f" (tuneforge's name for {tool}'s {name})?" if tool else "?")


def add_verb(subparsers, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A verb's parser on `subparsers`, without prefix matching whatever the parent's parser class."""
    return subparsers.add_parser(name, allow_abbrev=False, **kwargs)
