"""Runs survive interruption: checkpoints are atomic, and a resumed run equals an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tuneforge as tf
from tuneforge.errors import TuneforgeError
from tuneforge.train.checkpoint import find_checkpoint, list_checkpoints

SETTINGS = dict(
    learning_rate=1e-2,
    batch_size=4,
    micro_batch_size=2,
    lr_scheduler="linear",
    warmup_steps=2,
    rank=4,
    alpha=8,
    lora_dropout=0.1,
    target_modules=["all-linear"],
    precision="fp32",
    max_steps=10,
    save_steps=4,
    recipe="textgen",  # fixed settings: no validation split or packing chosen from the data
    seed=3,
)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir, method):
    if method == "full":
        return load_file(str(run_dir / "model" / "model.safetensors"))
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def simulate_crash_after(run_dir, step):
    """What `kill -9` right after checkpoint `step` leaves: later checkpoints, final weights and log lines gone."""
    for checkpoint in list_checkpoints(run_dir):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    for name in ("adapter", "model", "report.md"):
        shutil.rmtree(run_dir / name, ignore_errors=True) if (run_dir / name).is_dir() else None
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:step]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "checkpoints" / ".step-9.tmp-half").mkdir()  # a half-written checkpoint must be ignored


def test_a_recipe_auto_run_resumes_from_its_saved_config_as_the_uninterrupted_run(
    tiny_model_dir, lines_file, tmp_path
):
    """What `tuneforge train RUN/config.yaml --resume_from latest`, jobs.resume and the UI's Resume button do:
    the validation split and packing recipe auto chose stand in that file as given values, and the data they
    give (and its fingerprint) must be the data the run started with."""
    settings = dict(precision="fp32", max_steps=6, save_steps=3, rank=4, learning_rate=1e-2, seed=3)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for folder in (whole, broken):
        tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file, output_dir=str(folder), show_progress=False, **settings
        )
    saved = yaml.safe_load((broken / "config.yaml").read_text())
    assert saved["recipe"] == "auto" and saved["packing"] and saved["validation_split"] > 0  # chosen
    simulate_crash_after(broken, 3)
    run = tf.load(str(tiny_model_dir), precision="fp32").train(
        config=broken / "config.yaml", resume_from="latest", show_progress=False
    )
    assert run.resumed_from.name == "step-3"
    assert losses(broken) == pytest.approx(losses(whole), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_resumed_run_matches_uninterrupted_run(tiny_model_dir, lines_file, tmp_path, method):
    settings = dict(SETTINGS, method=method, learning_rate=1e-3 if method == "full" else 1e-2)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(whole), show_progress=False, **settings
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(broken), show_progress=False, **settings
    )
    simulate_crash_after(broken, 4)
    assert find_checkpoint(broken, "latest").name == "step-4"
    run = tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(broken), show_progress=False, resume_from="latest", **settings
    )
    assert run.resumed_from.name == "step-4"
    assert losses(broken) == pytest.approx(losses(whole), rel=1e-5)
    # the clock goes on from the checkpoint's: elapsed_s never runs backwards, the report's speed is the run's
    records = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    elapsed = [record["elapsed_s"] for record in records]
    assert elapsed == sorted(elapsed) and run.seconds >= elapsed[-1] > elapsed[3]
    expected, actual = final_weights(whole, method), final_weights(broken, method)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.gpu
def test_resume_refuses_a_checkpoint_with_another_rank(tiny_model_dir, lines_file, tmp_path):
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    llm.train(
        lines_file, output_dir=str(tmp_path / "run"), show_progress=False, **dict(SETTINGS, max_steps=4)
    )
    saved = (tmp_path / "run" / "config.yaml").read_text()
    for changed, refusal in [(dict(rank=8), "rank"), (dict(learning_rate=0.5), "learning_rate: 0.01 -> 0.5")]:
        with pytest.raises(TuneforgeError, match=refusal):
            tf.load(str(tiny_model_dir), precision="fp32").train(
                lines_file,
                output_dir=str(tmp_path / "run"),
                show_progress=False,
                resume_from="latest",
                **dict(SETTINGS, max_steps=6, **changed),
            )
        assert (tmp_path / "run" / "config.yaml").read_text() == saved  # the refused settings left no trace
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # nothing to resume: refused before writing too
    with pytest.raises(TuneforgeError, match="finished .* and kept no step checkpoint to resume from"):
        tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file,
            output_dir=str(tmp_path / "run"),
            show_progress=False,
            resume_from="latest",
            **SETTINGS,
        )
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tiny_model_dir, lines_file, tmp_path):
    """Its checkpoints would sit beside the earlier run's (a step-N already there was kept, not replaced), and
    resume_from: latest would then continue whichever is newer."""
    settings = dict(
        SETTINGS, max_steps=4, save_steps=2, output_dir=str(tmp_path / "run"), show_progress=False
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **settings)
    before = (tmp_path / "run" / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes()
    with pytest.raises(TuneforgeError, match=r"holds checkpoints of an earlier run \(step-2, step-4\)"):
        tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **dict(settings, seed=4))
    assert (tmp_path / "run" / "checkpoints" / "step-4" / "trainable.safetensors").read_bytes() == before


def test_a_fresh_run_into_a_finished_runs_folder_is_refused(tiny_model_dir, lines_file, tmp_path):
    """Without checkpoints a second run replaced the first's adapter, config and report without a word (and a
    full run's model/ stayed beside a later LoRA run's adapter/)."""
    settings = dict(
        SETTINGS, max_steps=2, save_steps=None, output_dir=str(tmp_path / "run"), show_progress=False
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **settings)
    before = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    config = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(
        TuneforgeError,
        match=r"holds a finished run \(report.md, adapter/\), which this run would replace; train into",
    ):
        tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **dict(settings, seed=4))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == before
    assert (tmp_path / "run" / "config.yaml").read_text() == config
    # resuming it says it finished, not "set save_steps ..."; a folder that is not there says so too
    with pytest.raises(
        TuneforgeError, match=r"the run in .*run finished \(report.md, adapter/\) and kept no step"
    ):
        tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **settings, resume_from="latest")
    for resume_from, named in (
        ("latest", "the run folder .*nowhere does not exist"),
        ("nowhere/x", "'nowhere/x' does not exist"),
    ):
        with pytest.raises(TuneforgeError, match=named):
            tf.load(str(tiny_model_dir), precision="fp32").train(
                lines_file, **dict(settings, output_dir=str(tmp_path / "nowhere")), resume_from=resume_from
            )
    assert not (tmp_path / "nowhere").exists()


def test_a_resume_whose_max_steps_the_checkpoint_has_passed_is_refused(tiny_model_dir, lines_file, tmp_path):
    """max_steps 3 on a run saved at step 4 ended it at once ("step 4/3", finished), its other steps lost."""
    settings = dict(
        SETTINGS, max_steps=4, save_steps=2, output_dir=str(tmp_path / "run"), show_progress=False
    )
    tf.load(str(tiny_model_dir), precision="fp32").train(lines_file, **settings)
    with pytest.raises(TuneforgeError, match="saved at step 4 already, so the run would end at once"):
        tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file, **dict(settings, max_steps=3), resume_from="latest"
        )


def test_save_total_limit_keeps_the_newest_checkpoints(tiny_llm, lines_file, tmp_path):
    tiny_llm.train(
        lines_file,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
        **dict(SETTINGS, max_steps=9, save_steps=2, save_total_limit=2),
    )
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-8", "step-9"]
    assert (tmp_path / "run" / "checkpoints" / "step-9" / "adapter" / "adapter_config.json").is_file()


def test_trainer_state_json_keeps_the_keys_earlier_checkpoints_were_written_with(
    tiny_llm, lines_file, tmp_path
):
    from tuneforge.train.state import TrainState

    run = tiny_llm.train(
        lines_file,
        output_dir=str(tmp_path / "run"),
        show_progress=False,
        **dict(SETTINGS, max_steps=2, save_steps=2),
    )
    saved = json.loads((find_checkpoint(tmp_path / "run", "latest") / "trainer_state.json").read_text())
    assert set(saved) == {
        "step",
        "losses",
        "validation_losses",
        "train_tokens",
        "train_seconds",
        "best_validation",
        "evaluations_without_improvement",
        "micro_batch_size",
        "identity",
    }
    state = TrainState.from_json(saved)
    assert state.step == run.steps == 2 and state.losses == run.losses and state.micro_batch_size == 2
    assert set(state.identity) == {"model", "method", "rank", "data_fingerprint"}
    del saved["train_seconds"]  # written before train_seconds existed: still resumable
    assert TrainState.from_json(saved).train_seconds == 0.0


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_update(
    tiny_model_dir, tokenizer, tmp_path, monkeypatch
):
    from tuneforge.config import RunConfig
    from tuneforge.data.examples import PreparedData
    from tuneforge.models.loading import load_model
    from tuneforge.models.methods import prepare_for_training
    from tuneforge.train import step
    from tuneforge.train.loop import train

    texts = [f"sentence {i} about cheese and bread" for i in range(8)]
    data = PreparedData(
        "lines", [{"input_ids": ids, "labels": list(ids)} for ids in tokenizer(texts)["input_ids"]]
    )
    real_loss = step.batch_loss_sum
    results = []
    for failures in (0, 1):
        calls = []

        def out_of_memory_first(model, batch, direct=True, failures=failures, calls=calls):
            calls.append(len(batch["input_ids"]))
            if len(calls) <= failures:
                raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")
            return real_loss(model, batch, direct=direct)

        monkeypatch.setattr(step, "batch_loss_sum", out_of_memory_first)
        model, _, _ = load_model(str(tiny_model_dir), precision="fp32")
        config = RunConfig(method="full", batch_size=8, micro_batch_size=8, max_steps=2, learning_rate=1e-3)
        model = prepare_for_training(model, config)
        model, result = train(model, tokenizer, data, config, tmp_path / str(failures), show_progress=False)
        results.append((result, model.model.layers[0].self_attn.q_proj.weight.detach().clone()))
        assert calls == (
            [8, 8] if failures == 0 else [8, 4, 4, 4, 4]
        )  # after the failure: micro batches of 4
    (plain, plain_weight), (backed_off, backed_off_weight) = results
    assert backed_off.micro_batch_size == 4 and plain.micro_batch_size == 8
    assert backed_off.losses == pytest.approx(plain.losses, rel=1e-5)
    assert torch.allclose(plain_weight, backed_off_weight, atol=1e-6)


@pytest.mark.gpu
def test_sigterm_writes_a_checkpoint_and_exits_cleanly_with_the_resume_command(
    tiny_model_dir, lines_file, tmp_path
):
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {lines_file}\nmax_steps: 100000\nrank: 4\nalpha: 8\n"
        f"batch_size: 4\nmicro_batch_size: 4\nprecision: fp32\noutput_dir: {run_dir}\n"
        "compile: false\n"  # recipe auto would compile a run this long right where SIGTERM lands
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "--resume_from latest" in stdout
    checkpoint = find_checkpoint(run_dir, "latest")
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 3
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "train",
            str(config),
            "--resume_from",
            "latest",
            "--max_steps",
            str(stopped_at + 2),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint}" in resumed.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == stopped_at + 2


@pytest.mark.gpu
def test_a_signal_inside_a_long_step_abandons_it_and_the_resume_is_exact(
    tiny_model_dir, lines_file, tmp_path
):
    """Seed 000's batch of 1024 makes one step last minutes: Ctrl-C must not wait for it to finish."""
    settings = dict(SETTINGS, batch_size=8, micro_batch_size=2, max_steps=6, save_steps=None)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(whole), show_progress=False, **settings
    )
    llm = tf.load(str(tiny_model_dir), precision="fp32")
    forwards = []

    def ctrl_c_in_step_3(module, args):  # 4 micro batches a step: forward 10 is step 3's second micro batch
        forwards.append(1)
        if len(forwards) == 10:
            signal.raise_signal(signal.SIGINT)

    llm.model.model.layers[0].register_forward_pre_hook(ctrl_c_in_step_3)
    run = llm.train(lines_file, output_dir=str(broken), show_progress=False, **settings)
    assert run.stopped_because == "interrupted by SIGINT during step 3"
    assert len(forwards) == 10  # step 3 stopped after its second micro batch; its third never ran
    assert find_checkpoint(broken, "latest").name == "step-2"
    resumed = tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(broken), show_progress=False, resume_from="latest", **settings
    )
    assert resumed.resumed_from.name == "step-2"
    assert losses(broken) == pytest.approx(losses(whole), rel=1e-5)
    expected, actual = final_weights(whole, "lora"), final_weights(broken, "lora")
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=1e-5, atol=1e-7), name


def test_a_signal_after_the_last_step_lets_the_finished_run_end_as_finished(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    from tuneforge.train import loop

    measured = loop.validation_loss

    def ctrl_c_in_the_last_validation(run, data, config, state, step, total_steps):
        if step == total_steps:
            signal.raise_signal(signal.SIGINT)
        return measured(run, data, config, state, step, total_steps)

    monkeypatch.setattr(loop, "validation_loss", ctrl_c_in_the_last_validation)
    settings = dict(SETTINGS, max_steps=2, validation_split=0.25, eval_steps=1)
    run = tf.load(str(tiny_model_dir), precision="fp32").train(
        lines_file, output_dir=str(tmp_path / "run"), show_progress=False, **settings
    )
    assert run.stopped_because == "finished" and not run.interrupted and run.steps == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_recipe_autos_warm_up_chosen_again_for_another_length_is_no_difference_but_a_given_one_is():
    from tuneforge.config import load_config
    from tuneforge.train.checkpoint import resume_differences
    from tuneforge.train.state import TrainState

    saved = load_config(None, {"max_steps": 40}).replace(warmup_ratio=0.05).to_dict()
    files = {"state": TrainState(identity={}), "config": json.loads(json.dumps(saved, default=str))}
    shorter = load_config(None, {"max_steps": 10})
    shorter.chosen = ["warmup_ratio 0: 10 steps are too few to warm up: step 1 would train at rate 0"]
    assert [d[0] for d in resume_differences(files, shorter, {})] == ["max_steps"]
    given = load_config(None, {"max_steps": 10, "warmup_ratio": 0.0})
    assert ("warmup_ratio", 0.05, 0.0, True) in resume_differences(files, given, {})
