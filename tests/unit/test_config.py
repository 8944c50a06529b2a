from pathlib import Path

import pytest
import yaml

from tuneforge.config import RunConfig, UniqueKeyLoader, field_names, load_config
from tuneforge.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'.*did you mean 'learning_rate'"):
        load_config(None, {"learning_rat": 1e-3})
    # a habitual short name is closer by spelling to other keys (lr: lora_dropout) and used to list all ~100
    with pytest.raises(ConfigError, match="unknown key 'lr' in config; did you mean 'learning_rate'\\?$"):
        load_config(None, {"lr": 1e-3})


def test_out_of_range_value_states_the_allowed_range():
    with pytest.raises(ConfigError, match=r"rank must be >= 1 and <= 65536; got 0"):
        RunConfig(rank=0)
    with pytest.raises(ConfigError, match="lr_scheduler must be one of .*did you mean 'cosine'"):
        RunConfig(lr_scheduler="cosin")
    with pytest.raises(ConfigError, match="got 'LoRA' \\(did you mean 'lora'\\?\\)"):  # the case, first
        RunConfig(method="LoRA")


def test_command_line_strings_are_coerced_to_each_key_type():
    config = load_config(
        None,
        {
            "rank": "16",
            "learning_rate": "1e-3",
            "add_eos_token": "false",
            "target_modules": "q_proj, k_proj",
            "max_steps": "none",
        },
    )
    assert config.rank == 16 and config.learning_rate == 1e-3 and config.add_eos_token is False
    assert config.target_modules == ["q_proj", "k_proj"] and config.max_steps is None


def test_wrong_type_is_refused_with_the_key_name():
    with pytest.raises(ConfigError, match="epochs must be a number, got 'many'"):
        RunConfig(epochs="many")


def test_batch_size_must_divide_by_micro_batch_size():
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        RunConfig(batch_size=10, micro_batch_size=4)
    assert RunConfig(batch_size=16, micro_batch_size=4).accumulation_steps == 4


def test_overlap_must_be_below_cutoff():
    with pytest.raises(ConfigError, match="overlap_len"):
        RunConfig(cutoff_len=64, overlap_len=64)


def test_saved_config_loads_back_identical(tmp_path):
    config = RunConfig(rank=8, alpha=16, target_modules=["all-linear"], data="x.txt", sample_prompts=["Hi"])
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_overrides_win_over_the_yaml_file(tmp_path):
    (tmp_path / "run.yaml").write_text("epochs: 5\nrank: 4\n")
    config = load_config(tmp_path / "run.yaml", {"epochs": "1"})
    assert config.epochs == 1 and config.rank == 4


def test_a_key_given_twice_and_a_misspelt_format_are_named(tmp_path):
    (tmp_path / "run.yaml").write_text("rank: 8\nepochs: 2\nrank: 16\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3:1 .*key 'rank' is given twice \(first on line 1\)"):
        load_config(tmp_path / "run.yaml")  # PyYAML alone keeps the last, silently
    with pytest.raises(ConfigError, match="did you mean 'alpaca'"):
        load_config(None, {"format": "alpacca"})
    # merge keys still read as YAML says (a key merged in may be given again)
    assert yaml.load("a: &b {rank: 8}\nrun: {<<: *b, rank: 16}\n", Loader=UniqueKeyLoader)["run"] == {
        "rank": 16
    }
    with pytest.raises(ConfigError, match="a key must be a name, not list"):
        (tmp_path / "listkey.yaml").write_text("? [1, 2]\n: x\n")
        load_config(tmp_path / "listkey.yaml")


def test_a_data_file_given_as_the_config_says_to_pass_it_as_data(tmp_path):
    (tmp_path / "cheese.txt").write_text("Cheese is made from milk.\nBrie is soft.\n")
    with pytest.raises(
        ConfigError, match=r"cheese.txt is not a run config .*pass it as data: --data .*cheese.txt"
    ):
        load_config(tmp_path / "cheese.txt")  # `tuneforge train cheese.txt`


def test_invalid_yaml_names_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 3\nrank: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+ is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_config_loads(path):
    values = yaml.safe_load(path.read_text())
    assert isinstance(load_config(path), RunConfig) and values


def test_overlap_defaults_to_half_the_cutoff_and_the_saved_config_keeps_it_unset(tmp_path):
    config = RunConfig(cutoff_len=64)
    assert config.overlap_len is None and config.effective_overlap_len == 32
    assert RunConfig(cutoff_len=64, overlap_len=8).effective_overlap_len == 8
    config.save(tmp_path / "config.yaml")
    reloaded = load_config(tmp_path / "config.yaml", {"cutoff_len": "512"})
    assert reloaded.overlap_len is None and reloaded.effective_overlap_len == 256


def test_raw_text_settings_are_checked_only_where_text_is_cut_into_chunks():
    assert RunConfig(format="lines", cutoff_len=64, overlap_len=128).format == "lines"  # never read for lines
    for chunked in ("raw", "text", "auto"):
        with pytest.raises(ConfigError, match=r"overlap_len \(64\) must be smaller than cutoff_len \(64\)"):
            RunConfig(format=chunked, cutoff_len=64, overlap_len=64)


def test_gradient_accumulation_with_a_given_batch_size_is_refused_in_one_sentence():
    with pytest.raises(
        ConfigError,
        match=r"batch_size \(64\) and gradient_accumulation_steps \(4\) both "
        "set the batch; give only one",
    ) as refused:
        RunConfig(batch_size=64, gradient_accumulation_steps=4)
    assert str(refused.value).count(". ") == 0
    config = RunConfig(micro_batch_size=2, gradient_accumulation_steps=4)
    assert config.examples_per_step == 8 and config.accumulation_steps == 4 and config.batch_size is None


def test_an_untouched_batch_size_never_conflicts_with_the_micro_batch_size():
    assert RunConfig().examples_per_step == 128 and RunConfig().accumulation_steps == 32
    config = RunConfig(micro_batch_size=3)
    assert config.examples_per_step == 126 and config.accumulation_steps == 42
    assert RunConfig(micro_batch_size=256).examples_per_step == 256


def test_scratch_model_must_read_at_least_cutoff_len_tokens():
    with pytest.raises(ConfigError, match=r"n_positions \(128\) must be at least cutoff_len \(256\)"):
        RunConfig(method="scratch", n_positions=128, cutoff_len=256)
    assert (
        RunConfig(method="lora", n_positions=128, cutoff_len=256).cutoff_len == 256
    )  # only scratch reads it


def test_other_tools_format_names_become_tuneforge_formats():
    alpaca = RunConfig(format="alpaca")
    assert (alpaca.format, alpaca.format_file) == ("formatted", "alpaca-format")
    assert RunConfig(format="alpaca", format_file="alpaca-chat-format").format_file == "alpaca-chat-format"
    assert (RunConfig(format="sharegpt").format, RunConfig(format="sharegpt").format_file) == ("chat", None)


def test_every_unknown_key_is_named_in_one_error_each_with_its_hint(tmp_path):
    (tmp_path / "run.yaml").write_text("learning_rat: 1e-3\nepoch: 3\nlora_r: 8\nzqxw: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "run.yaml", {"micro_batch": 2})
    message = str(refused.value)
    assert message.startswith(f"5 unknown keys in {tmp_path / 'run.yaml'}: ")
    assert "'learning_rat' (did you mean 'learning_rate'?)" in message
    assert "'epoch' (did you mean 'epochs'?)" in message
    assert "'lora_r' (did you mean 'rank', tuneforge's name for axolotl's lora_r?)" in message
    assert "'micro_batch' (did you mean 'micro_batch_size'?)" in message
    assert "'zqxw', 'micro_batch' (did you mean" in message  # the file's keys, then the overrides
    assert "; valid keys: model, method," in message  # 'zqxw' has no close key: the valid keys, once
    assert message.count("valid keys:") == 1


def test_unknown_keys_that_all_have_a_hint_do_not_list_every_valid_key():
    with pytest.raises(ConfigError) as refused:
        load_config(None, {"epoch": 1, "rnak": 4})
    assert str(refused.value) == (
        "2 unknown keys in config: 'epoch' (did you mean 'epochs'?), 'rnak' (did you mean 'rank'?)"
    )


def test_the_readme_lists_every_run_config_key():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [name for name in field_names() if f"`{name}`" not in readme] == []


def test_resume_from_latest_without_the_run_folder_is_explained():
    with pytest.raises(ConfigError, match="resume_from: latest needs the run to continue"):
        load_config(None, {"resume_from": "latest"})
    assert load_config(None, {"resume_from": "latest", "output_dir": "runs/x"}).resume_from == "latest"


def test_prompts_and_patterns_keep_their_commas():
    from tuneforge.cli import build_parser
    from tuneforge.cli.flags import run_config_from

    words = ["train", "--data", "x.txt", "--sample_prompts", "Hello, how are you?", "--sample_prompts", "Bye"]
    words += ["--filter_patterns", r"\d{3,4}"]
    config = run_config_from(build_parser().parse_args(words), None)
    assert config.sample_prompts == ["Hello, how are you?", "Bye"] and config.filter_patterns == [r"\d{3,4}"]
    # as text (the web UI's box, a YAML string): one a line, or a JSON list
    assert RunConfig(sample_prompts="Hello, you\nSecond").sample_prompts == ["Hello, you", "Second"]
    assert RunConfig(filter_patterns='["\\\\d{3,4}", "[abc]"]').filter_patterns == [r"\d{3,4}", "[abc]"]
    assert RunConfig(filter_patterns="[0-9]+").filter_patterns == ["[0-9]+"]  # a regex, not JSON
    assert RunConfig(filter_patterns="[12]").filter_patterns == ["[12]"]  # JSON numbers: still a regex
    assert RunConfig(target_modules="q_proj,v_proj").target_modules == ["q_proj", "v_proj"]  # names: commas


def test_a_value_refused_in_a_config_file_names_the_file_and_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nrank: eight\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: rank must be a whole number"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"^rank must be >= 1"):  # given on the command line: no file named
        load_config(config, {"rank": 0})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_refused_by_name(value):
    with pytest.raises(ConfigError, match=f"neftune_noise_alpha must be a finite number; got {value}"):
        load_config(None, {"data": "x.txt", "neftune_noise_alpha": value})


def test_lora_only_settings_are_refused_for_a_full_fine_tune():
    with pytest.raises(
        ConfigError, match="use_dora, use_rslora shape how a LoRA adapter trains, but method is full"
    ):
        load_config(None, {"data": "x.txt", "method": "full", "use_dora": True, "use_rslora": True})
