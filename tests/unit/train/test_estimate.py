"""The estimate before a run: Transformer Math 101 on the tiny model, sharding, the verdict and a measured step.

python -m pytest tests/unit/train/test_estimate.py -q
"""

from pathlib import Path

import pytest

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.train.estimate import GIB, Estimate, estimate_run


def config(tiny_model_dir, **keys) -> RunConfig:
    settings = dict(
        model=str(tiny_model_dir),
        device="cpu",
        precision="fp32",
        micro_batch_size=2,
        batch_size=8,
        cutoff_len=64,
    )
    return RunConfig(**{**settings, **keys})


def test_full_fine_tune_counts_fp32_weights_gradients_and_two_adam_moments(tiny_model_dir, tiny_llm):
    estimate = estimate_run(config(tiny_model_dir, method="full"))
    parameters = sum(p.numel() for p in tiny_llm.model.parameters())  # tied head: counted once
    assert estimate.parameters == estimate.trainable_parameters == parameters
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (
        4 * parameters,
        4 * parameters,
        8 * parameters,
    )


def test_lora_trains_only_the_adapters_and_qlora_stores_the_base_in_four_bits(tiny_model_dir):
    lora = estimate_run(config(tiny_model_dir, method="lora", rank=4, target_modules=["all-linear"]))
    qlora = estimate_run(config(tiny_model_dir, method="qlora", rank=4, target_modules=["all-linear"]))
    # 2 layers x (q 32x32, k 32x16, v 32x16, o 32x32, gate/up 32x64, down 64x32): r x (in + out) each
    assert lora.trainable_parameters == 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)
    assert lora.optimizer == 8 * lora.trainable_parameters and lora.gradients == 4 * lora.trainable_parameters
    assert qlora.weights < lora.weights and qlora.trainable_parameters == lora.trainable_parameters


def test_sharding_divides_what_the_strategy_splits(tiny_model_dir):
    alone = estimate_run(config(tiny_model_dir, method="full"))
    zero2 = estimate_run(config(tiny_model_dir, method="full"), world_size=4, sharding="zero2")
    fsdp = estimate_run(config(tiny_model_dir, method="full"), world_size=4, sharding="fsdp")
    offload = estimate_run(config(tiny_model_dir, method="full"), world_size=4, sharding="fsdp_offload")
    assert zero2.weights == alone.weights and zero2.optimizer == alone.optimizer // 4
    assert fsdp.weights == alone.weights // 4 and fsdp.gradients == alone.gradients // 4
    assert (
        offload.weights == offload.optimizer == 0
        and offload.offloaded == (alone.weights + alone.optimizer) // 4
    )
    with pytest.raises(ConfigError, match="sharding"):
        estimate_run(config(tiny_model_dir), sharding="zero9")


def test_gradient_checkpointing_and_smaller_micro_batches_shrink_activations(tiny_model_dir):
    base = estimate_run(config(tiny_model_dir, micro_batch_size=4, batch_size=8))
    assert (
        estimate_run(
            config(tiny_model_dir, micro_batch_size=4, batch_size=8, gradient_checkpointing=True)
        ).activations
        < base.activations
    )
    assert (
        estimate_run(config(tiny_model_dir, micro_batch_size=1, batch_size=8)).activations < base.activations
    )
    assert base.tokens_per_step == 8 * 64


def test_a_run_that_does_not_fit_says_so_and_suggests_a_setting_that_does(tiny_model_dir, monkeypatch):
    from tuneforge.train import memory

    needed = estimate_run(config(tiny_model_dir, micro_batch_size=8, batch_size=8))
    smaller = estimate_run(config(tiny_model_dir, micro_batch_size=4, batch_size=8))
    monkeypatch.setattr(memory, "free_memory", lambda device: (needed.total + smaller.total) // 2)
    squeezed = estimate_run(config(tiny_model_dir, micro_batch_size=8, batch_size=8))
    assert squeezed.fits is False
    assert squeezed.suggestions[0] == "micro_batch_size: 4"
    assert "does NOT fit" in squeezed.describe() and "to fit: micro_batch_size: 4" in squeezed.describe()


def test_measure_times_real_steps_and_an_epoch(tiny_model_dir, tiny_llm):
    estimate = estimate_run(
        config(tiny_model_dir, method="full"), model=tiny_llm.model, measure=True, n_examples=24
    )
    assert 0 < estimate.seconds_per_step < 60
    assert estimate.seconds_per_epoch == pytest.approx(3 * estimate.seconds_per_step)
    assert "s per step" in estimate.describe() and isinstance(estimate, Estimate) and GIB == 2**30


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is read from Linux's /proc")
def test_measure_measures_the_peak_memory_of_its_passes(tiny_model_dir, tiny_llm):
    peaks = {}
    for micro in (64, 1):  # the larger first: a peak not reset before the second would not fall
        keys = dict(method="full", micro_batch_size=micro, batch_size=64, cutoff_len=128)
        estimate = estimate_run(config(tiny_model_dir, **keys), model=tiny_llm.model, measure=True)
        if estimate.measured_peak is None:
            pytest.skip("this process may not reset its peak (writing /proc/self/clear_refs was refused)")
        peaks[micro] = estimate.measured_peak
    # 8,192 tokens' activations against 128 tokens': ~150 MB more measured on the tiny model (RSS noise ~20 MB)
    assert peaks[64] - peaks[1] > 64 * 2**20
    assert "memory (measured): " in estimate.describe() and "optimizer states" in estimate.describe()


def test_measure_runs_the_passes_as_the_run_would_with_gradient_checkpointing(
    tiny_model_dir, tiny_llm, monkeypatch
):
    import tuneforge.train.memory as memory

    during = []
    original = memory.enable_gradient_checkpointing
    monkeypatch.setattr(memory, "enable_gradient_checkpointing", lambda m: (original(m), during.append(m))[0])
    keys = dict(method="full", gradient_checkpointing=True)
    estimate_run(config(tiny_model_dir, **keys), model=tiny_llm.model, measure=True)
    assert during == [tiny_llm.model]  # checkpointed while measured, as set_up_training would
    assert not tiny_llm.model.is_gradient_checkpointing  # and the model left as it was


def test_the_estimate_verb_estimates_the_run_train_would_start(tiny_model_dir, lines_file, capsys):
    """Recipe auto chooses rank, batch, packing from the data: `tuneforge estimate --data` chooses (and prints)
    them as `train` does, instead of estimating the keys' defaults (batch 128 of unpacked lines)."""
    from tuneforge.cli import main

    assert (
        main(["estimate", "--data", str(lines_file), "--model", str(tiny_model_dir), "--cutoff_len", "64"])
        == 0
    )
    out = capsys.readouterr().out
    assert "default chosen: rank 16" in out and "default chosen: packing True" in out
    chosen = config(tiny_model_dir, rank=16, alpha=32, target_modules=["all-linear"], micro_batch_size=1)
    expected = estimate_run(chosen.replace(batch_size=1), device="cpu")
    assert f"trainable: {expected.trainable_parameters:,} " in out
    assert "tokens per step: up to 64\n" in out  # one packed block a step, not 128 examples


def test_scratch_estimates_the_model_its_sizes_build(tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneforge.models.scratch import build_scratch_model

    sizes = dict(n_layer=3, n_head=4, n_embd=64, n_positions=128)
    for architecture in ("gpt2", "llama"):
        estimate = estimate_run(config(tiny_model_dir, method="scratch", architecture=architecture, **sizes))
        built = build_scratch_model(
            architecture, AutoTokenizer.from_pretrained(str(tiny_model_dir)), **sizes, seed=0
        )
        assert estimate.parameters == estimate.trainable_parameters == built.num_parameters()
    trained = estimate_run(
        config(tiny_model_dir, method="scratch", tokenizer="train", vocab_size=300, **sizes)
    )
    assert trained.parameters < estimate.parameters  # a 300-token vocabulary, not the base model's


def test_optimizer_states_are_the_optimizers_own(tiny_model_dir, tiny_llm):
    parameters = sum(p.numel() for p in tiny_llm.model.parameters())
    assert estimate_run(config(tiny_model_dir, method="full", optimizer="sgd")).optimizer == 0  # no momentum
    adafactor = estimate_run(config(tiny_model_dir, method="full", optimizer="adafactor")).optimizer
    assert 0 < adafactor < parameters  # a row and a column a matrix, not two moments a weight


@pytest.mark.parametrize("keep", [False, True])
def test_attention_probabilities_count_only_where_the_run_keeps_them(tiny_model_dir, monkeypatch, keep):
    from tuneforge.train import attention

    monkeypatch.setattr(attention, "KEEP_PROBABILITIES", keep)

    # one more sequence in the micro batch, per token (the head cancels)
    def per_token(seq_len: int) -> float:
        one, two = (
            estimate_run(config(tiny_model_dir, cutoff_len=seq_len, micro_batch_size=micro), device="cpu")
            for micro in (1, 2)
        )
        return (two.activations - one.activations) / seq_len

    # CPU matmul attention makes heads x seq probabilities a token and by default makes them again in the
    # backward pass, as SDPA's flash kernels (past MAX_SEQUENCE) do: then a longer sequence costs no more a
    # token. With KEEP_PROBABILITIES it keeps them, up to MAX_SEQUENCE.
    short, longest, long = (per_token(n) for n in (64, attention.MAX_SEQUENCE, 2 * attention.MAX_SEQUENCE))
    if keep:
        assert short < longest and long < longest and long < short
    else:
        assert short == longest == long


def test_with_data_sequences_are_as_long_as_its_longest_example_and_auto_picks_as_the_run(
    tiny_model_dir, lines_file
):
    import tuneforge as tf
    from tuneforge.recipe import run_settings
    from tuneforge.train.memory import auto_micro_batch_size

    keys = config(tiny_model_dir, data=str(lines_file), recipe="textgen", cutoff_len=256, packing=False)
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    keys, prepared = run_settings(keys, "cpu", llm.tokenizer)
    longest = max(len(e["input_ids"]) for e in prepared.train)
    assert longest < 256
    estimate = estimate_run(keys, data=prepared)
    assert f"x {longest} tokens" in estimate.describe() and estimate.tokens_per_step == 8 * longest
    auto = estimate_run(keys.replace(micro_batch_size="auto"), llm.prepared_for(keys), data=prepared)
    picked = auto_micro_batch_size(llm.prepared_for(keys), 8, longest, "fp32", "cpu")[0]
    assert f"micro batch {picked} (auto) x {longest} tokens" in auto.describe()


def test_processes_on_one_cpu_share_its_memory_and_suggestions_are_distinct(tiny_model_dir, monkeypatch):
    from tuneforge.train import memory

    one = estimate_run(config(tiny_model_dir, method="full", micro_batch_size=8, batch_size=8))
    monkeypatch.setattr(memory, "free_memory", lambda device: int(one.total * 2.5))
    assert estimate_run(config(tiny_model_dir, method="full", micro_batch_size=8, batch_size=8)).fits
    four = estimate_run(config(tiny_model_dir, method="full", micro_batch_size=8, batch_size=8), world_size=4)
    assert four.needed == 4 * four.total and four.fits is False and "4 processes" in four.describe()
    assert len(set(four.suggestions)) == len(four.suggestions)
    monkeypatch.setattr(memory, "free_memory", lambda device: 1)
    nothing = estimate_run(
        config(tiny_model_dir, method="full", micro_batch_size=2, batch_size=8), world_size=2
    )
    assert (
        nothing.suggestions[0].startswith("none of these fits")
        and "FSDP with CPU offload" in nothing.suggestions[0]
    )
    with pytest.raises(ConfigError, match="world_size"):
        estimate_run(config(tiny_model_dir), world_size=0)


def test_a_loaded_models_weights_are_not_counted_twice(tiny_model_dir, tiny_llm, monkeypatch):
    from tuneforge.train import memory

    monkeypatch.setattr(memory, "free_memory", lambda device: 10 * GIB)
    loaded = estimate_run(config(tiny_model_dir, method="full"), model=tiny_llm.model)
    resident = sum(p.numel() * 4 for p in tiny_llm.model.parameters())  # fp32, the tied head once
    assert loaded.loaded == resident  # free memory was read after they were loaded
    assert "besides the" in loaded.describe()
    assert estimate_run(config(tiny_model_dir, method="full")).loaded == 0  # a meta model holds nothing
    monkeypatch.setattr(memory, "free_memory", lambda device: loaded.total - resident)
    assert estimate_run(config(tiny_model_dir, method="full"), model=tiny_llm.model).fits
