"""The HappyTransformer-compatible face: seed 001's (2.x) names and defaults, calling the core.

    python -m pytest tests/unit/evaluate/test_happy.py -q

3.x's documented examples are in test_happy_v3.py.
"""

import dataclasses

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.happy import GENSettings, GENTrainArgs, GENTrainArgsV2, HappyGeneration

SEED_001_TABLE = {
    "learning_rate": 5e-5,
    "num_train_epochs": 3,
    "batch_size": 1,
    "weight_decay": 0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "save_preprocessed_data": False,
    "save_preprocessed_data_path": "",
    "load_preprocessed_data": False,
    "load_preprocessed_data_path": "",
    "preprocessing_processes": 1,
    "fp16": False,
}


def test_train_args_have_every_field_of_seed_001s_table_with_its_default():
    defaults = GENTrainArgsV2()  # 2.x's defaults; GENTrainArgs has 3.x's (test_happy_v3.py)
    for name, value in SEED_001_TABLE.items():
        assert getattr(defaults, name) == value, name
    assert {"method", "rank", "alpha", "lora_dropout", "target_modules"} <= {
        f.name for f in dataclasses.fields(GENTrainArgs)
    }
    assert set(SEED_001_TABLE) <= {f.name for f in dataclasses.fields(GENTrainArgs)}  # 2.x names accepted


def test_generation_settings_keep_happytransformers_defaults():
    settings = GENSettings()
    assert (
        settings.min_length,
        settings.max_length,
        settings.do_sample,
        settings.early_stopping,
        settings.num_beams,
        settings.temperature,
        settings.top_k,
        settings.no_repeat_ngram_size,
        settings.top_p,
    ) == (10, 50, False, False, 1, 1.0, 50, 0, 1.0)


@pytest.fixture()
def happy(tiny_model_dir):
    return HappyGeneration(model_type="GPT-NEO", model_name=str(tiny_model_dir))


def test_a_refused_generation_setting_is_named_as_gensettings_names_it(happy):
    with pytest.raises(TuneforgeError, match="max_length must be >= 1") as refused:
        happy.generate_text("you can", args=GENSettings(max_length=0))
    assert "max_new_tokens" not in str(refused.value)  # tuneforge's name, which the user never wrote


def test_generate_text_returns_an_object_with_text_of_the_asked_length(happy):
    result = happy.generate_text("you can", args=GENSettings(min_length=5, max_length=5))
    assert isinstance(result.text, str) and result.text
    assert result.text == happy.generate_text("you can", args=GENSettings(min_length=5, max_length=5)).text


def test_train_lowers_eval_loss_and_save_then_load_path_restores_the_model(
    happy, tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = happy.eval(str(lines_file)).loss
    args = GENTrainArgs(
        learning_rate=3e-3,
        num_train_epochs=1,
        batch_size=8,
        max_steps=6,
        save_preprocessed_data=True,
        save_preprocessed_data_path="preprocessed-data.json",
    )
    run = happy.train(input_filepath=str(lines_file), args=args)
    assert run.steps == 6 and (tmp_path / "preprocessed-data.json").exists()
    after = happy.eval(str(lines_file)).loss
    assert after < before
    happy.save("model/")
    reloaded = HappyGeneration(model_type="GPT-NEO", model_name=str(tiny_model_dir), load_path="model/")
    assert reloaded.eval(str(lines_file)).loss == pytest.approx(after, rel=1e-4)


def test_training_from_preprocessed_data_sees_the_same_examples(happy, lines_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = dict(
        method="lora",
        rank=4,
        alpha=8,
        learning_rate=1e-2,
        batch_size=8,
        max_steps=2,
        target_modules=["q_proj", "v_proj"],
    )
    saved = happy.train(
        str(lines_file),
        GENTrainArgs(save_preprocessed_data=True, save_preprocessed_data_path="prep", **common),
    )
    again = happy.train(
        "ignored.txt", GENTrainArgs(load_preprocessed_data=True, load_preprocessed_data_path="prep", **common)
    )
    assert saved.train_tokens == again.train_tokens


def test_a_max_length_below_the_default_min_length_stops_at_max_length_as_in_happytransformer(happy):
    # HappyTransformer hands both to generate, where max wins; GENSettings' min_length defaults to 10
    result = happy.generate_text("you can", args=GENSettings(max_length=3))
    new_tokens = happy.tokenizer(result.text, add_special_tokens=False)["input_ids"]
    assert 0 < len(new_tokens) <= 3 + 1  # a word split differently when decoded on its own may add one


def test_use_auth_token_is_the_hub_token_for_that_load_only(tiny_model_dir, monkeypatch):
    import os

    import tuneforge as tf

    seen, load = [], tf.load
    monkeypatch.setattr(
        tf, "load", lambda *a, **k: (seen.append(os.environ.get("HF_TOKEN")), load(*a, **k))[1]
    )
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    happy = HappyGeneration(model_name=str(tiny_model_dir), use_auth_token="hf_given")
    assert seen == ["hf_given"] and os.environ["HF_TOKEN"] == "hf_from_the_environment"
    HappyGeneration(model_name=str(tiny_model_dir), use_auth_token=True)  # the saved login / HF_TOKEN as is
    assert seen[-1] == "hf_from_the_environment"
    assert happy.config.model_type and str(happy.device) == "cpu"  # HappyTransformer's attributes
