"""Defaults chosen from the data and the machine: the choice rules, user keys winning, the seeds' recipes exact.

python -m pytest tests/unit/test_defaults.py -q
"""

import pytest
import yaml

from tuneforge.config import RunConfig, load_config
from tuneforge.defaults import (
    CPU_STEP_TOKENS_PER_CORE,
    CPU_VALIDATION_TOKENS,
    TEXTGEN_RECIPE,
    DataStats,
    Machine,
    ModelFacts,
    apply_defaults,
    choose_defaults,
)

CPU = Machine("cpu", 2)
GPU = Machine("cuda", 16)
SMALL_PROSE = DataStats("raw", examples=140, tokens=140 * 256)
LARGE_PROSE = DataStats("raw", examples=40_000, tokens=40_000 * 256)
SHORT_LINES = DataStats("lines", examples=1_000, tokens=20_000)  # 20 tokens an example
LONG_RECORDS = DataStats("formatted", examples=1_000, tokens=200_000)  # 200 tokens an example
FEW_RECORDS = DataStats("formatted", examples=100, tokens=100 * 200)


def chosen(config, data=SMALL_PROSE, machine=CPU):
    new, choices = choose_defaults(config, data, machine)
    return new, {c.key: c for c in choices}


def assert_every_change_is_reported(before, after, choices):
    changed = {k for k, v in after.to_dict().items() if v != before.to_dict()[k]}
    assert changed <= set(choices)
    for key, choice in choices.items():
        assert getattr(after, key) == choice.value, key
        assert choice.describe().startswith(f"{key} ") and len(choice.reason) > 10
    assert after.chosen == [c.describe() for c in choices.values()]


def test_small_prose_gets_a_small_batch_one_fast_lora_epoch_and_a_held_out_split():
    config = RunConfig(recipe="auto")
    new, choices = chosen(config)
    assert new.validation_split == 0.1 and "14 of 140 examples held out" in choices["validation_split"].reason
    assert new.epochs == 1 and "one pass trains each token 2.0x" in choices["epochs"].reason  # 128/256
    assert new.examples_per_step == 8
    assert choices["batch_size"].describe() == "batch_size 8: 126 examples → 16 steps over 1 epoch"
    assert new.target_modules == ["all-linear"] and new.rank == 16 and new.alpha == 32
    assert new.learning_rate == 1e-3  # a short LoRA run
    assert new.warmup_ratio == 0 and "16 steps are too few to warm up" in choices["warmup_ratio"].reason
    assert not new.packing  # raw text is cut into full chunks already
    assert_every_change_is_reported(config, new, choices)


def test_small_lora_data_trains_each_token_twice_at_1e_3_and_three_epochs_at_a_given_learning_rate():
    # benchmarks/outcome_sweep.py: a third token pass at 1e-3 overfits (raw prose and Alpaca records alike)
    new, choices = chosen(RunConfig(recipe="auto"), FEW_RECORDS)
    assert (new.epochs, new.learning_rate) == (2, 1e-3) and "2 passes train each token 2.0x" in str(choices)
    no_overlap = load_config(None, {"recipe": "auto", "overlap_len": 0})
    assert chosen(no_overlap)[0].epochs == 2  # raw chunks that share nothing count as separate examples
    given_rate = load_config(None, {"recipe": "auto", "learning_rate": 2e-4})
    assert chosen(given_rate, FEW_RECORDS)[0].epochs == 3


def test_under_twenty_examples_get_one_pass_and_no_validation_split():
    ten_records = DataStats("formatted", examples=10, tokens=10 * 220)
    new, choices = chosen(RunConfig(recipe="auto"), ten_records)
    assert new.epochs == 1 and "a second memorises them" in choices["epochs"].reason
    # no split, and it says so: nothing will measure the fit
    assert new.validation_split == 0 and "cannot see overfitting" in choices["validation_split"].reason
    assert_every_change_is_reported(RunConfig(recipe="auto"), new, choices)


def test_full_fine_tuning_counts_raw_texts_overlapping_chunks_as_repeats():
    overlapping, choices = chosen(RunConfig(recipe="auto", method="full"))
    assert (
        overlapping.epochs == 1 and "overlap by 128 tokens" in choices["epochs"].reason
    )  # 128 of 256 shared
    no_overlap = load_config(None, {"recipe": "auto", "method": "full", "overlap_len": 0})
    assert chosen(no_overlap)[0].epochs == 3


def test_large_data_gets_one_epoch_a_larger_batch_and_rank():
    config = RunConfig(recipe="auto")
    new, choices = chosen(config, LARGE_PROSE, GPU)
    assert new.epochs == 1 and new.examples_per_step == 64 and new.rank == 32 and new.alpha == 64
    assert new.validation_split == 200  # a count: 5% of 40,000 would be slow to evaluate
    assert new.learning_rate == 2e-4  # a long LoRA run: QLoRA's rate
    assert_every_change_is_reported(config, new, choices)


def test_a_cpu_caps_the_tokens_of_a_step_and_of_the_validation_split():
    config = RunConfig(recipe="auto")
    new, choices = chosen(config, LARGE_PROSE, CPU)
    assert (
        new.examples_per_step * 256 <= CPU_STEP_TOKENS_PER_CORE * CPU.cores < 2 * new.examples_per_step * 256
    )
    assert "a step takes seconds" in choices["batch_size"].reason
    assert new.validation_split * 256 <= CPU_VALIDATION_TOKENS and new.validation_split >= 1
    assert_every_change_is_reported(config, new, choices)


def test_a_three_step_trial_on_a_thousand_records_takes_seconds_a_step_on_a_cpu():
    alpaca = DataStats("formatted", examples=1_000, tokens=218_000)  # roleplay_alpaca: ~218 tokens a record
    new, choices = chosen(RunConfig(recipe="auto", max_steps=3), alpaca, CPU)
    assert new.examples_per_step * alpaca.mean_tokens <= CPU_STEP_TOKENS_PER_CORE * CPU.cores
    assert new.validation_split * alpaca.mean_tokens <= CPU_VALIDATION_TOKENS
    assert "epochs" not in choices and new.max_steps == 3


def test_a_small_batch_is_not_rounded_up_to_the_default_micro_batch():
    # 22 chunks: 22 / 16 steps an epoch → batch 1, not the default micro_batch_size 4 (6 steps only)
    new, choices = chosen(RunConfig(recipe="auto"), DataStats("raw", examples=22, tokens=22 * 256))
    assert new.examples_per_step == 1 and new.micro_batch_size == 1
    given = load_config(None, {"recipe": "auto", "micro_batch_size": 4})
    assert chosen(given, DataStats("raw", examples=22, tokens=22 * 256))[0].examples_per_step == 4


def test_short_examples_are_packed_and_long_ones_are_not():
    config = RunConfig(recipe="auto")
    short, short_choices = chosen(config, SHORT_LINES)
    assert short.packing and "average 20 tokens" in short_choices["packing"].reason
    assert "packed blocks" in short_choices["batch_size"].reason
    long, long_choices = chosen(config, LONG_RECORDS)
    assert not long.packing and "packing" not in long_choices
    assert long.examples_per_step > short.examples_per_step  # 950 examples against ~75 packed blocks
    sized = load_config(None, {"batch_size": 16, "micro_batch_size": 16})
    _, sized_choices = chosen(sized, SHORT_LINES)
    assert "packing" not in sized_choices  # a batch given in examples keeps examples, not packed blocks


def test_short_examples_are_not_packed_for_a_model_that_lets_packed_examples_attend_to_each_other():
    for packs, model_type in [(True, "llama"), (True, "gpt2"), (False, "opt"), (False, "unknown")]:
        new, made = choose_defaults(RunConfig(recipe="auto"), SHORT_LINES, CPU, ModelFacts(model_type))
        choices = {c.key: c for c in made}
        assert new.packing is packs, model_type
        assert ("not known to keep packed examples apart" in choices["packing"].reason) is not packs
    assert choices["packing"].describe() == (
        "packing False: examples average 20 tokens, but this model (model_type unknown) is not known to keep "
        "packed examples apart"
    )
    assert "950 examples" in choices["batch_size"].reason  # examples, not packed blocks


def test_a_runs_model_type_is_read_from_its_config_json_and_packing_given_for_opt_is_warned_about(
    tokenizer, tiny_model_dir, tmp_path
):
    import json

    from tuneforge.data.examples import prepare_examples

    opt_dir = tmp_path / "opt"
    opt_dir.mkdir()
    (opt_dir / "config.json").write_text(json.dumps({"model_type": "opt"}))
    assert ModelFacts.of_run(load_config(None, {"model": str(tiny_model_dir)})) == ModelFacts("llama", 0)
    assert ModelFacts.of_run(load_config(None, {"model": str(opt_dir)})) == ModelFacts("opt", 0)
    assert (
        ModelFacts.of_run(load_config(None, {"method": "scratch", "model": str(opt_dir)})).model_type
        == "gpt2"
    )
    path = tmp_path / "notes.txt"
    path.write_text("".join(f"Note {i} says the oven was at {150 + i} degrees today.\n" for i in range(60)))
    config = load_config(None, {"model": str(opt_dir), "data": str(path), "packing": True, "cutoff_len": 128})
    prepared = prepare_examples(path, tokenizer, config, use_cache=False)
    with pytest.warns(UserWarning, match="model_type opt, which is not known to keep packed examples apart"):
        apply_defaults(config, prepared, tokenizer, "cpu", log=lambda line: None)


def test_model_facts_come_from_the_loaded_model_or_its_config_and_find_nested_experts(tiny_llm):
    assert ModelFacts.of_model(tiny_llm.model) == ModelFacts("llama", 0)
    llama4 = {"model_type": "llama4", "text_config": {"num_local_experts": 16}}
    assert ModelFacts.of_config(llama4) == ModelFacts("llama4", 16)
    assert ModelFacts.of_config({"model_type": "ernie4_5_moe", "moe_num_experts": 64}).experts == 64
    assert ModelFacts.of_config({}) == ModelFacts("unknown", 0)
    missing = load_config(None, {"model": "/nowhere/at/all"})
    assert ModelFacts.of_run(missing) == ModelFacts("unknown", 0)  # reported where the model is loaded


def test_full_fine_tuning_gets_a_lower_learning_rate_and_no_lora_settings():
    new, choices = chosen(RunConfig(recipe="auto", method="full"))
    assert new.learning_rate == 5e-5
    assert not {"rank", "alpha", "target_modules"} & set(choices)


def test_a_gpu_gets_an_automatic_micro_batch():
    new, choices = chosen(RunConfig(recipe="auto"), machine=Machine("cuda", 16))
    assert new.micro_batch_size == "auto" and "micro_batch_size" in choices


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: RunConfig(recipe="auto", **kw),
        lambda **kw: load_config(None, {"recipe": "auto", **kw}),
    ],
    ids=["keywords", "load_config"],
)
def test_keys_the_user_gave_always_win(make):
    config = make(
        batch_size=16,
        learning_rate=1e-3,
        rank=8,
        target_modules=["q_proj"],
        packing=False,
        validation_split=0.0,
    )
    new, choices = chosen(config, SHORT_LINES)
    assert not {"batch_size", "learning_rate", "rank", "target_modules", "packing", "validation_split"} & set(
        choices
    )
    assert (new.examples_per_step, new.learning_rate, new.rank, new.target_modules) == (
        16,
        1e-3,
        8,
        ["q_proj"],
    )
    assert new.alpha == 16 and not new.packing and new.validation_split == 0  # alpha follows the given rank
    assert_every_change_is_reported(config, new, choices)


def test_a_key_given_at_its_default_value_still_wins():
    config = load_config(None, {"recipe": "auto", "epochs": 3, "warmup_ratio": 0.0})
    new, choices = chosen(config, LARGE_PROSE)
    assert new.epochs == 3 and new.warmup_ratio == 0 and not {"epochs", "warmup_ratio"} & set(choices)


def test_only_a_run_long_enough_for_a_warm_up_of_two_steps_or_more_gets_one():
    # transformers' linear warm-up trains its first step at rate 0: a one-step warm-up would only lose a step
    long_run, choices = chosen(RunConfig(recipe="auto"), LARGE_PROSE, GPU)
    assert long_run.warmup_ratio == 0.05 and "first 5% of steps" in choices["warmup_ratio"].reason
    for steps in (3, 20):
        trial, choices = chosen(load_config(None, {"recipe": "auto", "max_steps": steps}), LARGE_PROSE, GPU)
        assert trial.warmup_ratio == 0 and f"{steps} steps are too few" in choices["warmup_ratio"].reason
    longer, _ = chosen(load_config(None, {"recipe": "auto", "max_steps": 21}), LARGE_PROSE, GPU)
    assert longer.warmup_ratio == 0.05  # ceil(0.05 x 21) = 2 steps: the second trains at half the rate


def test_max_steps_given_leaves_epochs_alone():
    new, choices = chosen(RunConfig(recipe="auto", max_steps=3), SHORT_LINES)
    assert "epochs" not in choices and new.max_steps == 3


@pytest.mark.parametrize("recipe", ["seed000", "textgen"])
@pytest.mark.parametrize("data", [SMALL_PROSE, LARGE_PROSE, SHORT_LINES], ids=["small", "large", "short"])
def test_the_seed_recipes_give_text_generation_webuis_numbers_exactly(recipe, data):
    config = load_config(None, {"recipe": recipe})
    new, choices = chosen(config, data, Machine("cuda", 16))
    assert set(choices) == set(TEXTGEN_RECIPE)
    assert (
        new.examples_per_step,
        new.micro_batch_size,
        new.rank,
        new.alpha,
        new.target_modules,
        new.epochs,
        new.learning_rate,
    ) == (128, 4, 32, 64, ["q_proj", "v_proj"], 3, 3e-4)
    assert (new.packing, new.validation_split, new.warmup_ratio) == (False, 0, 0)
    assert_every_change_is_reported(config, new, choices)


def test_a_seed_recipe_keeps_a_given_micro_batch_and_rounds_its_batch_to_it():
    new, choices = chosen(load_config(None, {"recipe": "textgen", "micro_batch_size": 6}))
    assert new.micro_batch_size == 6 and new.examples_per_step == 126 and "micro_batch_size" not in choices


@pytest.mark.parametrize("recipe", ["auto", "textgen"])
@pytest.mark.parametrize(("batch", "micro"), [(1, 1), (2, 2), (6, 3), (16, 4)])
def test_a_batch_given_alone_sizes_the_micro_batch_instead_of_failing(recipe, batch, micro):
    """`--batch_size 1` with no micro batch once failed: "must be a multiple of micro_batch_size (4)"."""
    config = load_config(None, {"recipe": recipe, "batch_size": batch})
    assert "micro_batch_size" not in config.given_keys
    new, choices = chosen(config)
    assert (new.examples_per_step, new.micro_batch_size) == (batch, micro)
    assert "batch_size" not in choices


def test_chosen_values_are_saved_with_their_reasons_in_config_yaml(tmp_path):
    new, choices = chosen(RunConfig(recipe="auto"))
    new.replace(output_dir=str(tmp_path)).save(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    for choice in choices.values():
        assert f"# chosen: {choice.describe()}\n" in text
    assert yaml.safe_load(text)["batch_size"] == 8


def test_auto_is_the_default_recipe_and_textgen_leaves_the_prepared_data_untouched(tokenizer, tmp_path):
    from tuneforge.data.examples import prepare_examples

    path = tmp_path / "notes.txt"
    path.write_text("".join(f"Note {i} says the oven was at {150 + i} degrees today.\n" for i in range(60)))
    config = load_config(None, {"recipe": "textgen", "cutoff_len": 128, "data": str(path)})
    prepared = prepare_examples(path, tokenizer, config, use_cache=False)
    textgen, same = apply_defaults(config, prepared, tokenizer, "cpu", log=lambda line: None)
    assert same is prepared and textgen.batch_size == 128 and not textgen.packing

    printed = []
    auto = load_config(None, {"cutoff_len": 128, "data": str(path)})
    assert auto.recipe == "auto"
    new, carved = apply_defaults(auto, prepared, tokenizer, "cpu", log=printed.append)
    assert printed == [f"default chosen: {line}" for line in new.chosen]
    assert any(line.startswith("default chosen: packing True: examples average") for line in printed)
    assert len(prepared.train) == 60 and len(carved.validation) > 0  # 6 held-out lines, packed into a block
    assert new.packing and len(carved.train) < 60  # the 54 short lines packed into a few blocks
    held_out = {tuple(e["input_ids"]) for e in carved.validation}
    assert not held_out & {tuple(e["input_ids"]) for e in carved.train}


def test_saved_preprocessed_data_trains_as_saved_without_a_chosen_split_or_packing(tokenizer, tmp_path):
    from tuneforge.data import save_preprocessed_data
    from tuneforge.data.examples import prepare_examples

    path = tmp_path / "notes.txt"
    path.write_text("".join(f"Note {i} says the oven was at {150 + i} degrees today.\n" for i in range(60)))
    config = load_config(None, {"recipe": "textgen", "cutoff_len": 128, "data": str(path)})
    save_preprocessed_data(prepare_examples(path, tokenizer, config, use_cache=False), tmp_path / "saved")
    auto = load_config(None, {"cutoff_len": 128, "data": str(tmp_path / "saved")})
    saved = prepare_examples(tmp_path / "saved", tokenizer, auto)
    new, same = apply_defaults(auto, saved, tokenizer, "cpu", log=lambda line: None)
    assert same is saved and len(same.train) == 60  # what the folder holds, as the config now says
    assert not new.packing and new.validation_split == 0 and new.batch_size is not None


def test_a_run_with_recipe_auto_prints_each_chosen_value_before_step_1_and_saves_it(
    tiny_llm, tiny_model_dir, tmp_path, capsys
):
    import tuneforge as tf

    path = tmp_path / "notes.txt"
    path.write_text("".join(f"Note {i} says the oven was at {150 + i} degrees today.\n" for i in range(60)))
    run_dir = tmp_path / "run"
    tiny_llm.train(path, max_steps=2, save_steps=2, cutoff_len=128, output_dir=str(run_dir))  # recipe auto
    out = capsys.readouterr().out
    config_text = (run_dir / "config.yaml").read_text()
    chosen_lines = [
        line.removeprefix("# chosen: ") for line in config_text.splitlines() if line.startswith("# chosen: ")
    ]
    assert {line.split()[0] for line in chosen_lines} >= {"validation_split", "packing", "batch_size", "rank"}
    for line in chosen_lines:
        assert f"default chosen: {line}" in out
    assert out.index("default chosen: ") < out.index(
        "method: lora"
    )  # before the model is readied, and step 1
    saved = yaml.safe_load(config_text)
    assert saved["recipe"] == "auto" and saved["packing"] and saved["target_modules"] == ["all-linear"]
    assert saved["max_steps"] == 2 and saved["cutoff_len"] == 128  # given, so kept
    report = (run_dir / "report.md").read_text()
    assert "## Chosen for you (recipe auto)" in report
    for line in chosen_lines:
        key, _, reason = line.partition(" ")
        assert f"- `{key}` {reason}" in report
    # the run continued from its own config.yaml keeps saying why (it lost every reason)
    resumed = load_config(run_dir / "config.yaml", {"max_steps": 3, "resume_from": "latest"})
    tf.load(str(tiny_model_dir), precision="fp32").train(config=resumed, show_progress=False)
    config_text, report = (run_dir / "config.yaml").read_text(), (run_dir / "report.md").read_text()
    assert "resumed from" in report
    for line in chosen_lines:
        key, _, reason = line.partition(" ")
        assert f"# chosen: {line}" in config_text and f"- `{key}` {reason}" in report
    # ... but not for a value given or edited since (that one is the user's), nor for another run
    resume = {"resume_from": "latest"}
    (run_dir / "config.yaml").write_text(config_text.replace("\nrank: 16\n", "\nrank: 8\n"))
    assert not any(line.startswith("rank ") for line in load_config(run_dir / "config.yaml", resume).chosen)
    (run_dir / "config.yaml").write_text(config_text)
    given = load_config(run_dir / "config.yaml", {**resume, "alpha": 8}).chosen
    assert not any(line.startswith("alpha ") for line in given) and any(
        line.startswith("rank ") for line in given
    )
    for other_run in ({"output_dir": str(tmp_path / "other")}, {**resume, "output_dir": str(tmp_path / "b")}):
        assert load_config(run_dir / "config.yaml", other_run).chosen == []  # its values are given there


def test_a_run_warns_when_cutoff_len_cuts_many_examples_or_empties_some():
    from tuneforge.recipe import warn_about_cut_examples

    said: list[str] = []
    counts = {"train_examples": 7, "dropped_without_loss": 5, "truncated": 12}  # 12 Alpaca records at 64
    warn_about_cut_examples(counts, RunConfig(cutoff_len=64), said.append)
    assert said == [
        "warning: cutoff_len 64 cut 12 of 12 examples and left 5 with no token to learn from (dropped); "
        "raise cutoff_len (e.g. 128) to keep their answers"
    ]
    warn_about_cut_examples({"train_examples": 100, "truncated": 9}, RunConfig(), said.append)
    assert len(said) == 1  # a few long examples cut: the data line's count is enough
    said.clear()
    pairs = {"length_bounds": "source_max_len, target_max_len"}  # input/output pairs: cutoff_len cuts nothing
    warn_about_cut_examples(
        {"train_examples": 4, "truncated": 4}, RunConfig(target_max_len=40), said.append, pairs
    )
    assert said == [
        "warning: source_max_len 1024 / target_max_len 40 cut 4 of 4 examples; raise source_max_len or "
        "target_max_len to keep their answers"
    ]
    said.clear()
    warn_about_cut_examples({"train_examples": 4}, RunConfig(cutoff_len=64), said.append, pairs)
    assert said == [
        "note: cutoff_len 64 does not bound input/output pairs; source_max_len (1024) and target_max_len (256) "
        "cut their two parts"
    ]


def test_raw_texts_held_out_chunks_and_their_overlapping_neighbours_leave_the_counted_training_chunks():
    """The UI's Preview said "4 of 36 examples held out" and "32 examples" while the run trained 31: the chunk
    before the held-out ones shares half its text with them and trains neither (data.examples' split)."""
    raw = DataStats("raw", examples=36, tokens=36 * 64, lengths=(64,) * 36)
    reasons = {key: c.reason for key, c in chosen(RunConfig(recipe="auto", cutoff_len=64), raw)[1].items()}
    assert reasons["validation_split"] == (
        "no validation data given: the last 4 of 36 chunks held out to measure the fit, the 1 before them "
        "(sharing their text) not trained on"
    )
    assert "31 examples" in reasons["batch_size"]
    no_overlap = chosen(RunConfig(recipe="auto", cutoff_len=64, overlap_len=0), raw)[1]
    assert no_overlap["validation_split"].reason.endswith("the fit")
    assert "32 examples" in no_overlap["batch_size"].reason
    short_sections = DataStats("raw", examples=30, tokens=30 * 40, lengths=(40,) * 30)  # hard-cut sections
    new, choices = chosen(RunConfig(recipe="auto", cutoff_len=256), short_sections)  # the split takes all
    assert new.validation_split == 0 and "batch_size" in choices
    assert "would take all 30: the report cannot see overfitting" in choices["validation_split"].reason


def test_rslora_and_loraplus_get_a_scale_and_rate_that_train_as_plain_lora_does():
    """At recipe auto's plain-LoRA alpha and rate, rsLoRA (scale alpha / sqrt(rank)) and LoRA+ 16 (B at 16x)
    diverged within 3 steps on the default model (4.26 -> 5.93, 4.26 -> 6.60)."""
    plain = {c.key: c.value for c in choose_defaults(RunConfig(data="x"), SMALL_PROSE, CPU)[1]}
    rs = {c.key: c for c in choose_defaults(RunConfig(data="x", use_rslora=True), SMALL_PROSE, CPU)[1]}
    assert rs["alpha"].value / rs["rank"].value ** 0.5 == pytest.approx(plain["alpha"] / plain["rank"])
    assert "rsLoRA" in rs["alpha"].reason
    plus = {c.key: c for c in choose_defaults(RunConfig(data="x", loraplus_lr_ratio=16), SMALL_PROSE, CPU)[1]}
    assert plus["learning_rate"].value == pytest.approx(plain["learning_rate"] / 4)
    assert "LoRA+ trains B at 16x" in plus["learning_rate"].reason
    given = choose_defaults(RunConfig(data="x", loraplus_lr_ratio=16, learning_rate=1e-4), SMALL_PROSE, CPU)[
        1
    ]
    assert "learning_rate" not in {c.key for c in given}  # a given rate always wins
