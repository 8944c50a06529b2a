"""The CLI's contract: bad input gives one line naming the problem, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from tuneforge.cli import build_parser, main
from tuneforge.config import field_names


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("tuneforge: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_config_key_in_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text("data: x.txt\nlora_rank: 8\n")
    assert_one_line_error(run_cli("train", str(tmp_path / "run.yaml")), "unknown key 'lora_rank'", "'rank'")


def test_unknown_command_line_option():
    assert_one_line_error(run_cli("train", "--data", "x.txt", "--learning_rat", "1e-3"),
                          "unknown option '--learning_rat'", "--learning_rate")


def test_missing_data_file(tmp_path):
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "missing.txt"), "--model", "default"),
                          "missing.txt", "does not exist")


def test_empty_data_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "empty.txt")), "empty.txt", "empty")


def test_bad_value_states_the_allowed_range():
    assert_one_line_error(run_cli("train", "--data", "x.txt", "--rank", "0"), "rank must be >= 1")


def test_every_config_key_is_a_documented_train_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for name in field_names():
        assert f"--{name}" in help_text
    assert "Micro batch size" in help_text and "Stop at loss" in help_text


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "generate", "logits", "modules", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: tuneforge " + name in capsys.readouterr().out


def test_train_and_generate_from_the_command_line(tiny_model_dir, lines_file, tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {lines_file}\nmax_steps: 2\nrank: 4\nalpha: 8\n"
                      "batch_size: 8\nmicro_batch_size: 8\nprecision: fp32\n")
    result = run_cli("train", str(config), "--output_dir", str(run_dir), "--learning_rate", "1e-2")
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stderr and "loss" in result.stderr
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "learning_rate: 0.01" in (run_dir / "config.yaml").read_text()
    generated = run_cli("generate", "--model", str(tiny_model_dir), "--adapter", str(run_dir / "adapter"),
                        "--greedy", "--max-new-tokens", "4", "you can")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("you can")
