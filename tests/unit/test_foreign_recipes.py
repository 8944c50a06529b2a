"""axolotl and LLaMA-Factory recipes read as tuneforge configs: the mapping, the ignored keys, the refusals.

python -m pytest tests/unit/test_foreign_recipes.py -q
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.foreign_recipes import AXOLOTL, LLAMA_FACTORY, detect_tool, read_foreign_recipe

ROOT = Path(__file__).resolve().parents[2]
AXOLOTL_EXAMPLE = ROOT / "examples" / "from_other_tools" / "axolotl_lora.yml"
LLAMA_FACTORY_EXAMPLE = ROOT / "examples" / "from_other_tools" / "llamafactory_lora_sft.yaml"
ALPACA = "../shared/data/roleplay_alpaca.json"


def write_recipe(tmp_path, values, name="recipe.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_the_axolotl_example_maps_to_exactly_these_tuneforge_keys():
    recipe = yaml.safe_load(AXOLOTL_EXAMPLE.read_text())
    assert detect_tool(recipe) == AXOLOTL
    reading = read_foreign_recipe(recipe, AXOLOTL, str(AXOLOTL_EXAMPLE), AXOLOTL_EXAMPLE.parent)
    assert reading.values == {
        "model": "HuggingFaceTB/SmolLM2-135M",
        "data": ALPACA,
        "format": "formatted",
        "format_file": "alpaca-format",
        "validation_split": 0.05,
        "output_dir": "./runs/axolotl-lora",
        "method": "lora",
        "cutoff_len": 512,
        "packing": True,
        "rank": 16,
        "alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": ["all-linear"],
        "gradient_accumulation_steps": 4,
        "micro_batch_size": 2,
        "epochs": 1,
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "learning_rate": 0.0002,
        "train_on_source": False,
        "precision": "auto",
        "gradient_checkpointing": True,
        "logging_steps": 1,
        "warmup_steps": 10,
        "weight_decay": 0.0,
    }
    config = load_config(AXOLOTL_EXAMPLE)
    assert (config.method, config.rank, config.alpha, config.target_modules) == (
        "lora",
        16,
        32,
        ["all-linear"],
    )
    assert config.examples_per_step == 8 and config.epochs == 1.0 and config.format_file == "alpaca-format"
    assert "  base_model: HuggingFaceTB/SmolLM2-135M -> model" in config.recipe_notes
    assert "  lora_target_linear: true -> target_modules: all-linear" in config.recipe_notes


def test_the_llamafactory_example_maps_to_exactly_these_tuneforge_keys():
    recipe = yaml.safe_load(LLAMA_FACTORY_EXAMPLE.read_text())
    assert detect_tool(recipe) == LLAMA_FACTORY
    reading = read_foreign_recipe(recipe, LLAMA_FACTORY, "x.yaml", LLAMA_FACTORY_EXAMPLE.parent)
    assert reading.values == {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "method": "lora",
        "rank": 8,
        "target_modules": ["all-linear"],
        "data": ALPACA,
        "cutoff_len": 512,
        "num_proc": 2,
        "output_dir": "saves/smollm2-135m/lora/sft",
        "logging_steps": 10,
        "save_steps": 500,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 8,
        "learning_rate": 1e-4,
        "epochs": 3.0,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "precision": "bf16",
        "validation_split": 0.05,
        "eval_steps": 500,
        "alpha": 16,  # LLaMA-Factory's default: 2 x lora_rank
        "lora_dropout": 0.0,  # LLaMA-Factory's default
    }
    assert "lora_alpha (not given) -> alpha: 16 (LLaMA-Factory's default: 2 x rank)" in reading.lines
    assert load_config(LLAMA_FACTORY_EXAMPLE).examples_per_step == 8


def test_every_ignored_key_is_listed_in_one_warning():
    notes = load_config(LLAMA_FACTORY_EXAMPLE).recipe_notes
    warnings = [line for line in notes if line.startswith("warning:")]
    assert warnings == [
        "warning: ignored 8 LLaMA-Factory keys that tuneforge does not use: template (tuneforge renders chat "
        "with the model's own chat template), max_samples (tuneforge trains on every record; shorten the file "
        "to match), overwrite_cache, plot_loss, overwrite_output_dir (tuneforge never replaces a finished run; delete "
        "the folder or give another output_dir), ddp_timeout, per_device_eval_batch_size, "
        "eval_strategy"
    ]
    axolotl_warning = load_config(AXOLOTL_EXAMPLE).recipe_notes[-1]
    for key in ("strict", "dataset_prepared_path", "flash_attention", "special_tokens", "evals_per_epoch"):
        assert key in axolotl_warning
    assert axolotl_warning.startswith("warning: ignored 10 axolotl keys")


def test_a_mistyped_key_of_the_tool_is_ignored_with_a_hint(tmp_path):
    recipe = write_recipe(tmp_path, {"base_model": "m", "adapter": "lora", "lora_rr": 8})
    assert "lora_rr (did you mean lora_r?)" in load_config(recipe).recipe_notes[-1]


@pytest.mark.parametrize(
    ("recipe", "refusal"),
    [
        (
            {"model_name_or_path": "m", "stage": "dpo", "dataset": ALPACA},
            "stage: dpo trains on preference pairs (DPO), which tuneforge does not train; tuneforge trains "
            "supervised fine-tuning",
        ),
        (
            {"model_name_or_path": "m", "stage": "kto"},
            "stage: kto trains on answers marked good or bad (KTO), which tuneforge does not train",
        ),
        (
            {"base_model": "m", "adapter": "lora", "rl": "dpo"},
            "rl: dpo is preference or reinforcement training, which tuneforge does not train; tuneforge "
            "trains supervised fine-tuning",
        ),
        ({"model_name_or_path": "m", "finetuning_type": "freeze"}, "finetuning_type: freeze is a method"),
        ({"base_model": "m", "adapter": "lora", "relora_steps": 100}, "relora_steps: 100 is ReLoRA"),
        (
            {"base_model": "m", "load_in_4bit": True},
            "load_in_4bit: true quantizes a model that is not trained",
        ),
    ],
)
def test_what_tuneforge_cannot_train_is_refused_by_name(tmp_path, recipe, refusal):
    with pytest.raises(ConfigError, match="tuneforge cannot train as written") as refused:
        load_config(write_recipe(tmp_path, recipe))
    assert refusal in str(refused.value)


def test_every_refused_key_is_named_in_one_error(tmp_path):
    recipe = {"model_name_or_path": "m", "stage": "ppo", "pissa_init": True, "dataset": "a,b"}
    with pytest.raises(ConfigError) as refused:
        load_config(write_recipe(tmp_path, recipe))
    message = str(refused.value)
    assert "stage: ppo trains by reinforcement learning" in message
    assert "pissa_init: true is PiSSA" in message
    assert "dataset: a,b names 2 datasets, but tuneforge trains on one data file or folder" in message


def test_a_mapped_value_tuneforge_rejects_names_the_recipe_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"lora_r in .*recipe.yml \(tuneforge's rank, an axolotl key\): rank must"
    ):
        load_config(write_recipe(tmp_path, {"base_model": "m", "adapter": "lora", "lora_r": 0}))
    with pytest.raises(ConfigError, match=r"lr_scheduler_type .*tuneforge's lr_scheduler.*must be one of"):
        load_config(write_recipe(tmp_path, {"model_name_or_path": "m", "lr_scheduler_type": "cosin"}))
    with pytest.raises(
        ConfigError, match=r"validation_split 0.6 would hold out most.*validation_split is val_set_size"
    ):
        load_config(write_recipe(tmp_path, {"base_model": "m", "val_set_size": 0.6}))


def test_keys_the_recipe_leaves_out_get_the_tools_defaults_and_command_line_keys_win(tmp_path):
    recipe = write_recipe(tmp_path, {"base_model": "m", "datasets": [{"path": ALPACA, "type": "completion"}]})
    config = load_config(recipe)
    assert (config.method, config.epochs, config.micro_batch_size, config.examples_per_step) == (
        "full",
        1.0,
        1,
        1,
    )
    assert (config.format, config.cutoff_len, config.lr_scheduler) == ("text", 512, "cosine")
    assert (
        "  adapter (not given) -> method: full (axolotl's default: without an adapter every weight trains)"
        in (config.recipe_notes)
    )
    overridden = load_config(recipe, {"epochs": "2", "batch_size": "4", "model": "other"})
    assert (overridden.epochs, overridden.examples_per_step, overridden.model) == (2.0, 4, "other")
    assert overridden.gradient_accumulation_steps is None


def test_chat_and_quantized_axolotl_recipes(tmp_path):
    recipe = {
        "base_model": "m",
        "adapter": "qlora",
        "load_in_4bit": True,
        "datasets": [{"path": ALPACA, "type": "chat_template", "field_messages": "conversations"}],
    }
    config = load_config(write_recipe(tmp_path, recipe))
    assert (config.method, config.bits, config.format) == ("qlora", 4, "chat")
    recipe["datasets"][0]["field_messages"] = "dialogue"
    with pytest.raises(
        ConfigError, match="field_messages: dialogue renames a field tuneforge reads as messages"
    ):
        load_config(write_recipe(tmp_path, recipe))


def test_hub_datasets_and_several_datasets_are_refused(tmp_path):
    hub = {
        "base_model": "m",
        "adapter": "lora",
        "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}],
    }
    with pytest.raises(ConfigError, match="teknium/GPT4-LLM-Cleaned is not a local file or folder"):
        load_config(write_recipe(tmp_path, hub))
    two = {
        "base_model": "m",
        "datasets": [{"path": ALPACA, "type": "alpaca"}, {"path": ALPACA, "type": "alpaca"}],
    }
    with pytest.raises(
        ConfigError, match="datasets: 2 entries but tuneforge trains on one data file or folder"
    ):
        load_config(write_recipe(tmp_path, two))
    odd_type = {"base_model": "m", "datasets": [{"path": ALPACA, "type": "jeopardy"}]}
    with pytest.raises(ConfigError, match="type: jeopardy is not a data shape tuneforge reads"):
        load_config(write_recipe(tmp_path, odd_type))


def test_llamafactory_dataset_names_are_looked_up_in_dataset_info(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "talk.json").write_text("[]")
    (data_dir / "dataset_info.json").write_text(
        json.dumps(
            {
                "talk": {
                    "file_name": "talk.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "conversations"},
                },
                "pairs": {"file_name": "pairs.json", "ranking": True},
                "hub": {"hf_hub_url": "org/set"},
            }
        )
    )
    recipe = {"model_name_or_path": "m", "dataset": "talk", "dataset_dir": str(data_dir)}
    config = load_config(write_recipe(tmp_path, recipe))
    assert (config.data, config.format) == (str(data_dir / "talk.json"), "chat")
    for name, refusal in (
        ("pairs", "is preference data (ranking: true)"),
        ("hub", "not a local file or folder"),
    ):
        with pytest.raises(ConfigError, match=re.escape(refusal)):
            load_config(write_recipe(tmp_path, {**recipe, "dataset": name}))
    with pytest.raises(
        ConfigError,
        match="dataset: alpaca_en_demo is a LLaMA-Factory dataset name and .*dataset_info.json has no entry; "
        "give dataset the path of a local data file",
    ):
        load_config(write_recipe(tmp_path, {**recipe, "dataset": "alpaca_en_demo"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(
        ConfigError, match=r"data/dataset_info.json does not exist \(here or beside the recipe\)"
    ):
        load_config(write_recipe(elsewhere, {"model_name_or_path": "m", "dataset": "alpaca_en_demo"}))


def test_a_tuneforge_config_with_one_foreign_key_stays_a_tuneforge_config(tmp_path):
    assert detect_tool({"data": "x.txt", "lora_rank": 8}) is None
    with pytest.raises(
        ConfigError, match="unknown key 'lora_rank'.*did you mean 'rank', tuneforge's name for"
    ):
        load_config(write_recipe(tmp_path, {"data": "x.txt", "lora_rank": 8}))


def test_the_saved_config_records_how_the_recipe_was_read_and_reloads_as_tuneforge_keys(tmp_path):
    config = load_config(AXOLOTL_EXAMPLE)
    config.save(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "# base_model: HuggingFaceTB/SmolLM2-135M -> model\n" in text
    reloaded = load_config(tmp_path / "config.yaml")
    assert reloaded == config and reloaded.recipe_notes == []


def test_tuneforge_train_with_a_recipe_gets_past_config_loading(tiny_model_dir, monkeypatch, capsys):
    from tuneforge.cli import build_parser, main
    from tuneforge.cli.flags import run_config_from
    from tuneforge.data import preflight

    monkeypatch.chdir(ROOT)  # the recipe's data path is relative to the repository, like examples/*.yaml
    argv = ["train", str(AXOLOTL_EXAMPLE), "--max_steps", "1", "--model", str(tiny_model_dir)]
    args = build_parser().parse_args(argv)
    config = run_config_from(args, args.config)
    assert (config.model, config.max_steps, config.rank) == (str(tiny_model_dir), 1, 16)
    preflight(config)  # every data argument checks out before a model would load
    assert main(["estimate", str(AXOLOTL_EXAMPLE), "--max_steps", "1", "--model", str(tiny_model_dir)]) == 0
    printed = capsys.readouterr().out
    assert "read " in printed and "  sequence_len: 512 -> cutoff_len\n" in printed
    assert "warning: ignored 10 axolotl keys that tuneforge does not use: strict," in printed


def test_an_existing_adapter_to_train_further_is_read_as_from_adapter(tmp_path):
    axolotl = {"base_model": "m", "adapter": "lora", "lora_r": 8, "lora_model_dir": "runs/earlier/adapter"}
    assert load_config(write_recipe(tmp_path, axolotl)).from_adapter == "runs/earlier/adapter"
    factory = {"model_name_or_path": "m", "finetuning_type": "lora", "adapter_name_or_path": "saves/lora"}
    assert load_config(write_recipe(tmp_path, factory)).from_adapter == "saves/lora"


def test_dora_rslora_and_loraplus_are_read_as_tuneforge_s_keys(tmp_path):
    axolotl = {
        "base_model": "m",
        "adapter": "lora",
        "peft_use_dora": True,
        "peft_use_rslora": True,
        "loraplus_lr_ratio": 16,
    }
    config = load_config(write_recipe(tmp_path, axolotl))
    assert (config.use_dora, config.use_rslora, config.loraplus_lr_ratio) == (True, True, 16)
    factory = {"model_name_or_path": "m", "finetuning_type": "lora", "use_dora": True}
    assert load_config(write_recipe(tmp_path, factory)).use_dora
