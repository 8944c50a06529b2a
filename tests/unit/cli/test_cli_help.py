"""Every verb and sub-verb answers --help (exit 0, no traceback) and shares the run config's flags."""

import subprocess
import sys

import pytest

from tuneforge.cli import COMMANDS, build_parser, main
from tuneforge.cli.flags import run_config_from
from tuneforge.config import field_names
from tuneforge.generate import GenerationSettings

VERBS = sorted(COMMANDS)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_and_sub_verb_prints_its_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb.split(), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: tuneforge {verb}" in out
    headings = [line for line in out.splitlines() if line.endswith(" settings:")]
    assert len(headings) == len(set(headings)), headings  # one heading per group (perplexity had two)


def test_python_dash_m_tuneforge_runs_the_command():
    for module in ("tuneforge", "tuneforge.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "data", "inspect", "--help"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert "--format_file" in result.stdout and "%key%" in result.stdout


def test_verbs_that_load_a_model_share_the_run_config_keys(capsys):
    for verb in ("train", "data inspect", "data prepare", "generate", "logits", "perplexity", "compare"):
        with pytest.raises(SystemExit):
            main([*verb.split(), "--help"])
        help_text = capsys.readouterr().out
        for key in ("model", "precision", "device", "trust_remote_code"):
            assert f"--{key}" in help_text, (verb, key)
        assert "Number format for compute" in help_text  # RunConfig's own help text, not a copy
    with pytest.raises(SystemExit):
        main(["data", "inspect", "--help"])
    help_text = capsys.readouterr().out
    assert all(f"--{key}" in help_text for key in ("data", "format", "cutoff_len", "overlap_len"))


def test_generation_flags_come_from_generation_settings(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    for name in (f for f in GenerationSettings.__dataclass_fields__):
        assert f"--{name}" in help_text and f"--{name.replace('_', '-')}" in help_text
    assert "(> 0.0 and <= 1.0; default: 1.0)" in help_text  # top_p's range from its metadata


def test_both_spellings_and_lone_true_false_flags_parse_alike():
    parser = build_parser()
    dashed = parser.parse_args(["generate", "--max-new-tokens", "3", "--chat", "Hi"])
    underscored = parser.parse_args(["generate", "--max_new_tokens=3", "--chat", "true", "Hi"])
    assert dashed.max_new_tokens == underscored.max_new_tokens == 3
    assert dashed.chat is underscored.chat is True and dashed.prompt == underscored.prompt == "Hi"
    assert parser.parse_args(["train", "--packing", "false"]).packing is False
    assert parser.parse_args(["train", "--trust-remote-code"]).trust_remote_code is True
    assert set(field_names()) <= set(vars(parser.parse_args(["train", *[f"--{n}=1" for n in field_names()]])))


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", "--learning_rat", "1e-3"], "--learning_rate"),
        (["data", "inspect", "x.txt", "--cutof-len", "64"], "--cutoff_len"),
        (["generate", "--temprature", "0.5", "hi"], "--temperature"),
        (["perplexity", "x.txt", "--strid", "8"], "--stride"),
        (["ui", "--prot", "80"], "--port"),
        # other tools' names and short habits, which no spelling distance finds
        (
            ["train", "--num_train_epochs", "1"],
            "--epochs (tuneforge's name for LLaMA-Factory's num_train_epochs)",
        ),
        (["train", "--lora_r", "8"], "--rank (tuneforge's name for axolotl's lora_r)"),
        (["train", "--lr", "1e-3"], "--learning_rate"),
        (["estimate", "--lr", "1e-3"], "--learning_rate"),
        # the other verbs' --adapter: train's is from_adapter
        (
            ["train", "--adapter", "runs/a/adapter"],
            "--from_adapter (train a saved adapter further; axolotl's adapter: lora is --method)",
        ),
    ],
)
def test_unknown_flags_name_the_closest_flag_of_their_verb(argv, hint, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"did you mean {hint}?" in error


def test_a_word_after_a_true_false_flag_is_explained_not_read_as_a_missing_config(tmp_path, capsys):
    """`--packing maybe` left 'maybe' as the config file: "config file 'maybe' does not exist"."""
    data = tmp_path / "notes.txt"
    data.write_text("one line\n")
    for verb in ("train", "estimate"):
        assert main([verb, "--data", str(data), "--packing", "maybe"]) == 2
        error = capsys.readouterr().err
        assert "it came after --packing, a true/false flag: give --packing true or --packing false" in error
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data}\nmax_steps: 1\n")
    args = build_parser().parse_args(["train", "--packing", str(config)])  # a real config after the flag
    assert args.packing is True and args.config == str(config)
    assert "a true/false flag" not in explained_missing_config(["train", "--packing", "runs/a/confg.yaml"])


def explained_missing_config(argv: list[str]) -> str:
    from tuneforge.errors import ConfigError

    try:
        run_config_from(build_parser().parse_args(argv), build_parser().parse_args(argv).config)
    except ConfigError as error:
        return str(error)
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["estimate", "--world_size", "abc"], "invalid int value: 'abc'"),
        (["estimate", "--sharding", "bogus"], "invalid choice: 'bogus'"),
        (["bogusverb"], "invalid choice: 'bogusverb'"),
    ],
)
def test_a_mistake_argparse_finds_is_one_line_not_the_whole_usage(words, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and err.startswith("tuneforge: error:") and "--help" in err


def test_a_negative_number_in_scientific_notation_gets_the_range_check_not_argparse(tmp_path, capsys):
    """argparse took "-1e-3" for a flag: "argument --learning_rate: expected one argument"."""
    data = tmp_path / "notes.txt"
    data.write_text("one line\n")
    for value in ("-1e-3", "-1E-3", "-.5", "-2"):
        assert main(["train", "--data", str(data), "--learning_rate", value]) == 2
        error = capsys.readouterr().err
        assert "learning_rate must be > 0" in error and "expected one argument" not in error, error
