"""HappyTransformer 3.x's own text-generation examples, run on tuneforge's HappyTransformer face.

    python -m pytest tests/unit/evaluate/test_happy_v3.py -q

The lines under "# HappyTransformer:" are short snippets from HappyTransformer v3.0.1
(github.com/EricFillion/happy-transformer, Apache-2.0): docs/docs/text-generation/finetuning.md (Examples
1.3, 1.4), docs/docs/save-load-data.md (Example 7.0), docs/docs/save-load-model.md (Examples 8.0, 8.1),
docs/docs/deepspeed.md, and its tests/test_gen.py, tests/test_eval_data.py, tests/run_save_load.py. Only
the import line, the model name (the tiny model folder) and the data file (12 short lines) are changed;
where tuneforge's `train` returns a result (HappyTransformer returns None) we keep it to assert on.
"""

import dataclasses
import math
import os

import pytest

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.happy import GENEvalArgs, GENSettings, GENTrainArgs, HappyGeneration
from tuneforge.paths import tuneforge_home

# happytransformer/args.py (TrainArgs + GENTrainArgs, EvalArgs + GENEvalArgs) in v3.0.1
V3_TRAIN_DEFAULTS = {
    "output_dir": "happy_transformer/",
    "learning_rate": 5e-5,
    "num_train_epochs": 1.0,
    "batch_size": 1,
    "weight_decay": 0,
    "fp16": False,
    "eval_ratio": 0.1,
    "save_steps": 0.0,
    "eval_steps": 0.1,
    "logging_steps": 0.1,
    "save_path": False,
    "load_path": False,
    "report_to": (),
    "deepspeed": False,
    "project_name": "happy-transformer",
    "run_name": "test",
    "max_length": None,
}
V3_EVAL_DEFAULTS = {
    "batch_size": 1,
    "deepspeed": False,
    "save_path": False,
    "load_path": False,
    "max_length": None,
}


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """An empty current folder, to see exactly what each example writes."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture()
def MODEL(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture()
def DATA_PATH(lines_file, tmp_path):
    """HappyTransformer's data/gen/train-eval.txt, in tiny: 12 lines, so 1 held out and 11 steps an epoch."""
    path = tmp_path / "train-eval.txt"
    path.write_text("\n".join(lines_file.read_text().splitlines()[:12]) + "\n")
    return str(path)


@pytest.fixture()
def happy_gen(MODEL):
    return HappyGeneration(model_name=MODEL)


def temporary_runs() -> set[str]:
    folder = tuneforge_home() / "tmp"
    return {p.name for p in folder.glob("happy-run-*")} if folder.is_dir() else set()


def test_argument_classes_have_happytransformer_3s_fields_and_defaults():
    for cls, defaults in ((GENTrainArgs, V3_TRAIN_DEFAULTS), (GENEvalArgs, V3_EVAL_DEFAULTS)):
        made = cls()
        assert {name: getattr(made, name) for name in defaults} == defaults, cls.__name__
        assert set(defaults) <= {f.name for f in dataclasses.fields(cls)}


def test_example_1_3_holds_out_eval_ratio_evaluates_by_ratio_and_writes_nothing(work, happy_gen, DATA_PATH):
    runs_before = temporary_runs()
    # HappyTransformer: finetuning.md, Example 1.3
    args = GENTrainArgs(num_train_epochs=1)
    run = happy_gen.train(DATA_PATH, args=args)
    # eval_ratio 0.1 holds out 1 of 12 lines: 11 steps of batch 1; eval_steps 0.1 = every ceil(1.1) = 2 steps,
    # and the last
    assert run.steps == 11
    assert [step for step, _ in run.validation_losses] == [2, 4, 6, 8, 10, 11]
    assert all(math.isfinite(loss) for _, loss in run.validation_losses)
    assert list(work.iterdir()) == [] and not (work / "runs").exists()
    assert temporary_runs() == runs_before and not run.run_dir.exists() and run.saved_to is None


def test_training_lowers_the_eval_loss_and_example_1_4_evaluates(work, MODEL, DATA_PATH):
    # HappyTransformer: tests/test_gen.py, test_gen_train_effectiveness
    happy = HappyGeneration("GPT-2", MODEL)
    before_result = happy.eval(DATA_PATH)
    happy.train(DATA_PATH, args=GENTrainArgs(learning_rate=5e-4, num_train_epochs=3))
    after_result = happy.eval(DATA_PATH)
    assert after_result.loss < before_result.loss
    # HappyTransformer: finetuning.md, Example 1.4 (preprocessing_processes: a 2.x name tuneforge still takes)
    args = GENEvalArgs(preprocessing_processes=2)
    result = happy.eval(DATA_PATH, args=args)
    assert math.isfinite(result.loss) and result.loss == pytest.approx(after_result.loss, rel=1e-5)
    assert list(work.iterdir()) == []


def test_saved_data_is_trained_again_from_load_path(work, happy_gen, DATA_PATH):
    # HappyTransformer: tests/test_eval_data.py, test_gen_saved_data
    save_path = "data/test/"
    args_save = GENTrainArgs(eval_ratio=0.1, num_train_epochs=1, save_path=save_path)
    saved = happy_gen.train(DATA_PATH, args=args_save)
    args_load = GENTrainArgs(num_train_epochs=1, load_path=save_path)
    # Should still work even if eval_filepath is provided
    with pytest.warns(UserWarning, match="eval data comes from data/test/"):
        with_eval_file = happy_gen.train(DATA_PATH, eval_filepath=DATA_PATH, args=args_load)
    # HappyTransformer: save-load-data.md, Example 7.0 -- "if you're loading data, then you can set
    # input_filepath to anything"
    anything = happy_gen.train(input_filepath="", args=args_load)
    assert saved.steps == 11 and saved.validation_losses
    assert math.isfinite(happy_gen.eval("", args=GENEvalArgs(load_path=save_path)).loss)  # its eval split
    for run in (with_eval_file, anything):  # the saved split, not eval_filepath nor a new one
        assert (run.steps, run.train_tokens) == (saved.steps, saved.train_tokens)
        assert [step for step, _ in run.validation_losses] == [step for step, _ in saved.validation_losses]
    assert [p.name for p in work.iterdir()] == ["data"] and (work / "data" / "test" / "meta.json").is_file()


def test_saved_eval_data_scores_the_same_from_load_path(work, happy_gen, DATA_PATH):
    # HappyTransformer: tests/run_save_load.py with tests/test_gen.py's test_gen_save_load_eval
    output_path = "data/gen-eval/eval/"
    args = GENEvalArgs()
    args.save_path = output_path
    args.load_path = False
    result = happy_gen.eval(DATA_PATH, args=args)
    args.save_path = False
    args.load_path = output_path
    again = happy_gen.eval(DATA_PATH, args=args)
    assert math.isfinite(result.loss) and again.loss == result.loss
    assert (work / "data" / "gen-eval" / "eval" / "meta.json").is_file()


def test_saved_model_loads_back_from_model_name_and_load_path_with_the_same_greedy_text(
    work, happy_gen, MODEL, DATA_PATH
):
    happy_gen.train(DATA_PATH, args=GENTrainArgs(learning_rate=5e-4, num_train_epochs=1))
    # HappyTransformer: save-load-model.md, Examples 8.0 and 8.1, as tests/test_gen.py's test_gen_save runs
    happy_gen.save("model/")
    result_before = happy_gen.generate_text("Natural language processing is")
    happy = HappyGeneration(model_name="model/")
    result_after = happy.generate_text("Natural language processing is")
    assert result_before == result_after and result_after.text
    # seed 001's (and 3.x's deprecated) way: load_path beside the base model's name
    happy_gen = HappyGeneration(model_type="GPT-NEO", model_name=MODEL, load_path="model/")
    assert happy_gen.generate_text("Natural language processing is", args=GENSettings()) == result_before
    assert [p.name for p in work.iterdir()] == ["model"]


def test_dictionary_args_are_refused_with_happytransformers_message(happy_gen, DATA_PATH):
    # HappyTransformer: tests/test_gen.py, test_wp_train_eval_with_dic
    train_args = {"learning_rate": 0.01, "num_train_epochs": 1}
    with pytest.raises(
        ValueError,
        match="Dictionary training arguments are no longer supported as of Happy Transformer version 3.0.0",
    ):
        happy_gen.train(DATA_PATH, args=train_args)
    eval_args = {}
    with pytest.raises(ValueError, match="Dictionary evaluating arguments are no longer supported"):
        happy_gen.eval(DATA_PATH, args=eval_args)


def test_deepspeed_is_refused_naming_accelerate_launch(work, happy_gen, DATA_PATH):
    # HappyTransformer: deepspeed.md
    train_args = GENTrainArgs(deepspeed="ZERO-3")
    eval_args = GENEvalArgs(deepspeed="ZERO-3")
    with pytest.raises(ConfigError, match="accelerate launch --use_deepspeed"):
        happy_gen.train(DATA_PATH, args=train_args)
    with pytest.raises(ConfigError, match="accelerate launch --use_deepspeed"):
        happy_gen.eval(DATA_PATH, args=eval_args)
    assert list(work.iterdir()) == []


def test_save_steps_keep_checkpoints_in_output_dir_as_happytransformer_does(work, happy_gen, DATA_PATH):
    run = happy_gen.train(DATA_PATH, args=GENTrainArgs(num_train_epochs=1, save_steps=0.5, logging_steps=5))
    checkpoints = work / "happy_transformer" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-11", "step-6"]  # every ceil(5.5) steps
    assert run.run_dir.resolve() == (work / "happy_transformer").resolve()
    assert [p.name for p in work.iterdir()] == ["happy_transformer"] and os.listdir(checkpoints / "step-11")
    with pytest.warns(UserWarning, match="replacing the earlier run's 2 checkpoints"):  # as its Trainer would
        happy_gen.train(DATA_PATH, args=GENTrainArgs(num_train_epochs=1, max_steps=4, save_steps=2))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2", "step-4"]  # this run's alone

    def fails(*args, **kwargs):
        raise RuntimeError("the run failed before its first checkpoint")

    happy_gen.llm.train, real = fails, happy_gen.llm.train
    try:
        with pytest.warns(UserWarning, match="replacing"), pytest.raises(RuntimeError, match="failed before"):
            happy_gen.train(DATA_PATH, args=GENTrainArgs(num_train_epochs=1, max_steps=4, save_steps=2))
    finally:
        happy_gen.llm.train = real
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step-2",
        "step-4",
    ]  # put back: nothing replaced them
    chosen = happy_gen.train(DATA_PATH, args=GENTrainArgs(num_train_epochs=1, max_steps=1, output_dir="mine"))
    assert chosen.saved_to.resolve() == work / "mine" / "model"  # an output_dir of your own keeps the run


def test_a_folder_that_is_no_run_keeps_its_files(work, happy_gen, DATA_PATH):
    """Only an earlier tuneforge run (its config.yaml) is set aside; a project folder's own model/ is refused
    as the run's output_dir, never moved or deleted."""
    mine = work / "project"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights.bin").write_bytes(b"mine")
    with pytest.raises(TuneforgeError, match=r"holds a finished run \(model/\)"):
        happy_gen.train(DATA_PATH, args=GENTrainArgs(max_steps=1, save_steps=1, output_dir=str(mine)))
    assert (mine / "model" / "weights.bin").read_bytes() == b"mine" and not (mine / ".replaced").exists()
