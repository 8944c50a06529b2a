"""micro_batch_size: auto — the largest micro batch the free memory holds, from an estimate checked here."""

import pytest

import tuneforge as tf
from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.train import memory


def test_micro_batch_size_accepts_auto_and_rejects_other_words():
    assert RunConfig(micro_batch_size="auto", batch_size=1024).examples_per_step == 1024
    assert RunConfig(micro_batch_size="4", batch_size=16).accumulation_steps == 4
    with pytest.raises(ConfigError, match="whole number or 'auto'"):
        RunConfig(micro_batch_size="big")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        RunConfig(micro_batch_size="auto", gradient_accumulation_steps=4)


def test_auto_picks_the_largest_power_of_two_that_fits(tiny_llm, monkeypatch):
    model = tiny_llm.model
    one = memory.training_memory(model, seq_len=128, micro_batch_size=1, precision="fp32")
    fixed = one.head * memory.FRAGMENTATION + one.trainable
    for fits, expected in ((1, 1), (5, 4), (8, 8), (1000, 64)):
        free = (fixed + fits * one.activations * memory.FRAGMENTATION) / memory.USABLE_FRACTION + 1
        monkeypatch.setattr(memory, "free_memory", lambda device, free=free: free)
        micro, why = memory.auto_micro_batch_size(
            model, batch_size=64, seq_len=128, precision="fp32", device="cpu"
        )
        assert micro == expected, fits
        assert f"micro_batch_size auto: {expected}" in why


def test_activation_estimate_matches_the_default_models_measured_size(default_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(default_model_dir)
    per_token = memory.activation_bytes_per_token(config, seq_len=256, precision="fp32")
    # measured on this model: the first training forward of 4 x 256 tokens grows the process by ~2.07 GB
    assert 1.7e9 < per_token * 1024 < 2.3e9


def test_a_run_with_auto_micro_batch_trains_and_says_what_it_chose(
    tiny_model_dir, lines_file, tmp_path, capsys
):
    run = tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file,
        output_dir=str(tmp_path / "run"),
        micro_batch_size="auto",
        batch_size=8,
        max_steps=3,
        learning_rate=1e-2,
        precision="fp32",
    )
    assert run.micro_batch_size == 8  # a tiny model: the whole batch fits at once
    assert run.losses[-1] < run.losses[0]
    assert "micro_batch_size auto: 8" in capsys.readouterr().err


def test_a_resumed_auto_run_keeps_the_micro_batch_of_its_checkpoint(tiny_model_dir, lines_file, tmp_path):
    settings = dict(
        output_dir=str(tmp_path / "run"),
        micro_batch_size="auto",
        batch_size=8,
        learning_rate=1e-2,
        precision="fp32",
        save_steps=1,
        show_progress=False,
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, max_steps=2, **settings)
    resumed = tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, max_steps=3, resume_from="latest", **settings
    )
    assert resumed.resumed_from.name == "step-2" and resumed.steps == 3 and resumed.micro_batch_size == 8
