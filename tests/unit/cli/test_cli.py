"""The CLI's contract: bad input gives one line naming the problem, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.cli import build_parser, main
from tuneforge.config import field_names


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


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
    assert_one_line_error(
        run_cli("train", "--data", "x.txt", "--learning_rat", "1e-3"),
        "unknown option '--learning_rat'",
        "--learning_rate",
    )


def test_missing_data_file(tmp_path):
    assert_one_line_error(
        run_cli("train", "--data", str(tmp_path / "missing.txt"), "--model", "default"),
        "missing.txt",
        "does not exist",
    )


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
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {lines_file}\nmax_steps: 2\nrank: 4\nalpha: 8\n"
        "batch_size: 8\nmicro_batch_size: 8\nprecision: fp32\n"
    )
    result = run_cli("train", str(config), "--output_dir", str(run_dir), "--learning_rate", "1e-2")
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stderr and "loss" in result.stderr
    # run as a program, train starts again on jemalloc where it is installed (train/host_memory.py)
    from tuneforge.train.host_memory import find_jemalloc

    on = (
        "host memory: jemalloc"
        if find_jemalloc()
        else "host memory: glibc's allocator; with jemalloc installed"
    )
    assert on in result.stdout + result.stderr
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "learning_rate: 0.01" in (run_dir / "config.yaml").read_text()
    generated = run_cli(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(run_dir / "adapter"),
        "--greedy",
        "--max-new-tokens",
        "4",
        "you can",
    )
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("you can")


def test_line_data_with_a_short_cutoff_trains_without_touching_raw_text_settings(
    tiny_model_dir, lines_file, tmp_path, capsys
):
    code = main(
        [
            "train",
            "--data",
            str(lines_file),
            "--format",
            "lines",
            "--cutoff_len",
            "64",
            "--max_steps",
            "1",
            "--model",
            str(tiny_model_dir),
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--rank",
            "4",
            "--micro_batch_size",
            "4",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "done: 1 step (" in capsys.readouterr().out
    assert "overlap_len: null" in (tmp_path / "run" / "config.yaml").read_text()  # the user's choice: none


def test_gradient_accumulation_with_batch_size_is_one_line_error():
    refused = run_cli("train", "--data", "x.txt", "--batch_size", "64", "--gradient-accumulation-steps", "4")
    assert_one_line_error(refused, "batch_size (64) and gradient_accumulation_steps (4) both set the batch")


def test_data_inspect_takes_the_data_file_as_a_flag_or_positional(
    tiny_model_dir, lines_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    common = [
        "--model",
        str(tiny_model_dir),
        "--format",
        "lines",
        "--cutoff_len",
        "32",
        "--histogram",
        str(tmp_path / "lengths.png"),
        "--examples",
        "1",
    ]
    assert main(["data", "inspect", "--data", str(lines_file), *common]) == 0
    by_flag = capsys.readouterr().out
    assert main(["data", "inspect", str(lines_file), *common]) == 0
    by_position = capsys.readouterr().out  # the same data and settings: the second preview hits the cache
    assert "cache: written" in by_flag and by_position == by_flag.replace("cache: written", "cache: hit")
    assert main(["data", "inspect", str(lines_file), "--data", str(tmp_path / "other.txt"), *common]) == 2
    assert "two data files given" in capsys.readouterr().err


def test_data_inspect_shows_the_data_train_would_train_on(
    tiny_model_dir, lines_file, tmp_path, capsys, monkeypatch
):
    from tuneforge.config import RunConfig
    from tuneforge.recipe import run_settings

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    model = ["--model", str(tiny_model_dir), "--format", "lines"]
    assert main(["data", "inspect", str(lines_file), *model, "--histogram", str(tmp_path / "h.png")]) == 0
    shown = capsys.readouterr().out
    config = RunConfig(data=str(lines_file), model=str(tiny_model_dir), format="lines")
    config, prepared = run_settings(config, "cpu", log=lambda line: None)
    assert config.validation_split and prepared.validation  # recipe auto held examples out: shown, as chosen
    assert "default chosen: validation_split" in shown and "default chosen: packing" in shown
    assert "default chosen: learning_rate" not in shown  # a training value: train and estimate show those
    counts = prepared.counts
    assert f"split {counts['train_records']} train / {counts['validation_records']} validation" in shown
    assert (
        config.packing and f"packing: {len(prepared.train)} blocks" in shown
    )  # short lines: packed, as trained


def test_a_warning_reads_as_one_line_once(tiny_model_dir, lines_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "lines.txt").write_text(lines_file.read_text())
    (folder / "todo.rst").write_text("not read\n")
    args = [
        "data",
        "inspect",
        str(folder),
        "--model",
        str(tiny_model_dir),
        "--format",
        "lines",
        "--examples",
        "0",
    ]
    assert main([*args, "--histogram", str(tmp_path / "lengths.png")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "todo.rst" in line]
    assert len(warned) == 1 and warned[0].startswith("tuneforge: warning: data folder")  # no file:line, once


def test_only_tuneforge_s_own_warnings_read_as_its_lines(capsys):
    import tuneforge
    from tuneforge.cli import _show_warning

    own = str(Path(tuneforge.__file__).parent / "data" / "sources.py")
    library = "/home/u/tuneforge/.venv/lib/python3.11/site-packages/transformers/x.py"  # a checkout's venv
    _show_warning(UserWarning("ours"), UserWarning, own, 1)
    _show_warning(UserWarning("theirs"), UserWarning, library, 3)
    err = capsys.readouterr().err
    assert "tuneforge: warning: ours" in err and "x.py:3: UserWarning: theirs" in err


def test_a_bad_record_stops_train_before_the_model_loads(capsys, monkeypatch, tiny_model_dir, tmp_path):
    import tuneforge

    (tmp_path / "a.json").write_text(
        '[{"instruction": "a", "output": "b"}, {"instruction": "c", "reply": "d"}]'
    )
    monkeypatch.setattr(tuneforge, "load", lambda *a, **k: pytest.fail("the model loaded before the data"))
    assert main(["train", "--data", str(tmp_path / "a.json"), "--model", str(tiny_model_dir)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "record 1 has non-empty keys: instruction, reply" in error


def test_a_run_folder_or_device_it_cannot_use_stops_train_before_the_model_loads(
    capsys, monkeypatch, tiny_model_dir, tmp_path
):
    import torch

    import tuneforge

    data = tmp_path / "notes.txt"
    data.write_text("one line\nanother line\n")
    finished = tmp_path / "finished"
    (finished / "adapter").mkdir(parents=True)
    (finished / "adapter" / "adapter_config.json").write_text("{}")
    (finished / "report.md").write_text("# run\n")
    monkeypatch.setattr(tuneforge, "load", lambda *a, **k: pytest.fail("the model loaded first"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["train", "--data", str(data), "--model", str(tiny_model_dir)]
    for argv, said in [
        (["--output_dir", str(finished)], "holds a finished run (report.md, adapter/)"),
        (["--output_dir", str(finished), "--resume_from", "latest"], "finished (report.md, adapter/)"),
        (["--output_dir", str(finished), "--resume_from", "latest"], f"--from_adapter {finished}"),
        (["--nproc", "0"], "nproc must be >= 1"),
        (["--output_dir", str(tmp_path / "none"), "--resume_from", "latest"], "none does not exist"),
        (["--device", "cuda"], "no CUDA GPU is visible"),
    ]:
        assert main(base + argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and said in error, error


def test_bad_generation_setting_is_one_line_before_any_model_loads(capsys):
    assert main(["generate", "--model", "no/such-model", "--temperature", "hot", "hi"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "temperature must be a number, got 'hot'" in error


def test_ui_refuses_to_listen_beyond_this_machine_without_auth():
    # A fresh interpreter: other tests in this process may already have imported gradio.
    probe = (
        "import sys; from tuneforge.cli import main; code = main(['ui', '--listen', '0.0.0.0']); "
        "print(code, 'gradio' in sys.modules, 'tuneforge.ui' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["2", "False", "False"]  # refused before anything heavy is imported
    assert done.stderr.count("\n") == 1 and "--auth user:password" in done.stderr


def test_modules_names_the_linear_layers_and_the_embedding_and_head(capsys, tiny_model_dir):
    assert main(["modules", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "usable as target_modules): down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
        in out
    )
    assert "usable as modules_to_save): embed_tokens, lm_head\n" in out


def test_debug_after_the_verb_is_the_same_switch(tmp_path):
    """`tuneforge train --debug ...` shows the traceback as `tuneforge --debug train ...` does (it was refused as
    an unknown option, with a hint at --dedup)."""
    from tuneforge.errors import TuneforgeError

    missing = ["--data", str(tmp_path / "missing.txt")]
    with pytest.raises(TuneforgeError, match="does not exist"):
        main(["train", *missing, "--debug"])
    assert main(["train", *missing]) == 2


def test_an_alias_format_that_cannot_be_scored_is_named_as_given(capsys, tmp_path):
    records = tmp_path / "a.json"
    records.write_text('[{"instruction": "Say hi", "output": "Hi"}]')
    assert main(["perplexity", str(records), "--format", "alpaca", "--model", "no/such-model"]) == 2
    error = capsys.readouterr().err
    assert "format 'alpaca' ('formatted') cannot be scored as plain text" in error, error


def test_ui_says_when_its_project_folder_is_new(capsys, monkeypatch, tmp_path):
    import tuneforge.ui

    started = []
    monkeypatch.setattr(tuneforge.ui, "launch", lambda **kwargs: started.append(kwargs["project_dir"]))
    new = tmp_path / "typo"
    assert main(["ui", "--project", str(new)]) == 0
    assert f"new project folder: {new}" in capsys.readouterr().out
    assert main(["ui", "--project", str(tmp_path)]) == 0  # an existing folder: nothing said
    assert "new project folder" not in capsys.readouterr().out and started == [str(new), str(tmp_path)]
