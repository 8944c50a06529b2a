"""What a Python user gets back for inputs of the wrong kind, and the API paths a new user's review found
broken: an adapter folder loaded as the model, a resume through a run's config.yaml, Alpaca task prompts."""

import json

import pytest
import torch

import tuneforge as tf
from tuneforge.errors import ConfigError, ModelError, TuneforgeError
from tuneforge.evaluate.tasks import read_records
from tuneforge.happy import GENEvalArgs, GENSettings, GENTrainArgs, HappyGeneration


def test_load_names_a_wrong_device_precision_or_model_before_anything_loads():
    with pytest.raises(ModelError, match=r"precision 'float32' is not one of .*did you mean 'fp32'"):
        tf.load(precision="float32")
    with pytest.raises(ModelError, match="device 'gpu' is not one of auto, cpu, cuda, mps"):
        tf.load(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="device 'cuda:0' was asked for but no CUDA GPU is visible"):
            tf.load(device="cuda:0")
    with pytest.raises(ConfigError, match="model must be 'default', a folder.*not 123"):
        tf.load(123)  # type: ignore[arg-type]


def test_an_adapter_folder_given_as_the_model_brings_its_base(tiny_model_dir, adapter_dirs):
    both = tf.load(str(adapter_dirs[0]), precision="fp32")
    assert both.adapters == ["default"] and both.source.path == str(tiny_model_dir)
    named = tf.load(str(tiny_model_dir), adapter=adapter_dirs[0], precision="fp32")
    assert both.next_token_probs("you can", 3) == named.next_token_probs("you can", 3)
    from tuneforge.models.loading import resolve

    with pytest.raises(
        ModelError, match=f"is a LoRA adapter, not a model: load its base \\({tiny_model_dir}\\)"
    ):
        resolve(str(adapter_dirs[0]))  # the CLI's --model: says to use --adapter


def test_an_adapter_that_names_no_base_says_to_give_one(adapter_dirs, tmp_path):
    import shutil

    folder = shutil.copytree(adapter_dirs[0], tmp_path / "nameless")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ModelError, match="names no base model.*tf.load\\(BASE, adapter=FOLDER\\)"):
        tf.load(str(folder))


def test_wrong_kinds_of_input_are_named(tiny_llm, lines_file, tmp_path):
    from tuneforge.generate import GenerationError

    with pytest.raises(GenerationError, match="prompt must be a string.*not int"):
        tiny_llm.generate(123)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reads its data from a file or folder, not a list"):
        tiny_llm.train(["a b c", "d e f"])  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="no adapter named 'x' is loaded; loaded: none"):
        tiny_llm.unload_adapter("x")
    run = tiny_llm.train(  # the keys as a dict mean the same as keyword arguments
        lines_file,
        config={"method": "lora", "rank": 4},
        max_steps=1,
        output_dir=str(tmp_path / "r"),
        show_progress=False,
    )
    assert run.steps == 1 and json.loads((tmp_path / "r/adapter/adapter_config.json").read_text())["r"] == 4


def test_a_resume_through_the_runs_config_keeps_the_precision_the_model_was_loaded_in(
    tiny_model_dir, lines_file, tmp_path
):
    """config.yaml says precision: auto (the loader chose); resuming must not choose again (bf16 on AMX)."""
    run = tmp_path / "run"
    first = tf.load(str(tiny_model_dir), precision="fp32")
    keys = dict(method="lora", save_steps=1, max_steps=2, output_dir=str(run), show_progress=False)
    first.train(lines_file, **keys)
    again = tf.load(str(tiny_model_dir), precision="fp32")
    result = again.train(config=run / "config.yaml", resume_from="latest", max_steps=3, show_progress=False)
    assert result.steps == 3 and again.precision == "fp32"
    assert {p.dtype for p in again.model.parameters()} == {torch.float32}
    with pytest.raises(ConfigError, match="already holds the adapter that run .* saved.*load its base again"):
        again.train(config=run / "config.yaml", resume_from="latest", max_steps=4, show_progress=False)


def test_alpaca_records_are_prompted_as_training_renders_them(tiny_llm, tmp_path):
    data = tmp_path / "val.json"
    data.write_text(json.dumps([{"instruction": "Add", "input": "1 2", "output": "3"}]))
    ((prompt, reference),) = read_records(data, format_file="alpaca-format")
    assert (
        prompt.startswith("Below is an instruction")
        and prompt.endswith("### Response:\n")
        and "1 2" in prompt
    )
    assert reference == "3"
    scores = tiny_llm.evaluate(data, max_new_tokens=2)
    assert scores.rows[0]["input"] == prompt
    assert tiny_llm.evaluate(data, max_new_tokens=2, format_file=None).rows[0]["input"] == "Add\n1 2"


def test_the_happy_face_names_wrong_arguments_as_happytransformer_users_write_them(
    tiny_model_dir, lines_file, tmp_path
):
    happy = HappyGeneration("GPT2", str(tiny_model_dir))
    with pytest.raises(
        ValueError, match="Dictionary generation settings are not supported; pass GENSettings"
    ):
        happy.generate_text("Hi", args={"max_length": 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text input must be a string, not int"):
        happy.generate_text(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one character"):
        happy.generate_text("  ")
    with pytest.raises(ConfigError, match=r"train\(\) takes args=GENTrainArgs.*eval_filepath="):
        happy.train(str(lines_file), "eval.txt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"train\(\) takes args=GENTrainArgs\(...\), not GENEvalArgs"):
        happy.train(str(lines_file), args=GENEvalArgs())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"eval\(\) takes args=GENEvalArgs\(...\), not GENSettings"):
        happy.eval(str(lines_file), args=GENSettings())  # type: ignore[arg-type]
    with pytest.raises(TuneforgeError, match="cutoff_len"):
        happy.train(str(lines_file), args=GENTrainArgs(max_length=0, max_steps=1))  # not quietly the default
    with pytest.raises(NotImplementedError, match="no test"):
        happy.test("x.txt")
    with pytest.raises(NotImplementedError, match="hf upload me/model folder"):
        happy.push("me/model")
    run = happy.train(
        str(lines_file), args=GENTrainArgs(method="lora", target_modules="all-linear", max_steps=1)
    )
    targets = happy.model.peft_config["default"].target_modules
    assert run.steps == 1 and any(t.endswith("o_proj") for t in targets)  # every linear, not letters
    happy.save(str(tmp_path / "lora"))  # an adapter folder: loads back by itself, its base named inside
    again = HappyGeneration(model_name=str(tmp_path / "lora"))
    settings = GENSettings(max_length=4, min_length=1)
    assert again.generate_text("you can", settings).text == happy.generate_text("you can", settings).text
