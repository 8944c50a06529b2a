"""A run never trains on garbage silently: NaN stops it before the weights change, examples without a trained
token are dropped (none left refuses), and a resume with changed settings lists them and refuses the risky ones.
"""

from __future__ import annotations

import math
import signal

import pytest
import torch
from safetensors.torch import load_file

import tuneforge as tf
from tests.reliability.conftest import RUN, metrics
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.train.checkpoint import list_checkpoints

SETTINGS = {k: v for k, v in RUN.items() if k != "device"}


def train(model_dir, data, run_dir, **keys):
    return tf.load(str(model_dir), precision="fp32").train(
        data, output_dir=str(run_dir), show_progress=False, **{**SETTINGS, **keys}
    )


def all_checkpoints_finite(run_dir) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for c in list_checkpoints(run_dir)
        for t in load_file(str(c / "trainable.safetensors")).values()
    )


def test_a_nan_loss_at_step_5_stops_the_run_before_any_non_finite_checkpoint(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    from tuneforge.train import step

    real, steps = step.batch_loss_sum, []

    def nan_at_step_5(model, batch, direct=True):
        loss = real(model, batch, direct=direct)
        return loss * float("nan") if len(steps) == 5 else loss

    from tuneforge.train import loop

    real_accumulate = loop.accumulate_gradients

    def counting(*args, step, **kwargs):
        steps.append(step) if step not in steps else None
        return real_accumulate(*args, step=step, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", counting)
    monkeypatch.setattr(step, "batch_loss_sum", nan_at_step_5)
    with pytest.raises(TuneforgeError, match=r"loss became nan at step 5.*before updating the weights"):
        train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=10)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-1", "step-2", "step-3", "step-4"]
    assert all_checkpoints_finite(tmp_path / "run")
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_huge_learning_rate_never_writes_a_non_finite_checkpoint(tiny_model_dir, lines_file, tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):  # 1e6 is refused before anything loads
        train(tiny_model_dir, lines_file, tmp_path / "refused", max_steps=2, learning_rate=1e6)
    try:  # the largest allowed (10) with no clipping: finite all the way, or stopped showing the bad value
        run = train(
            tiny_model_dir, lines_file, tmp_path / "run", max_steps=8, learning_rate=10.0, max_grad_norm=0.0
        )
        assert all(math.isfinite(loss) for loss in run.losses)
    except TuneforgeError as error:
        assert "nan" in str(error) or "inf" in str(error)
    assert all_checkpoints_finite(tmp_path / "run")


def test_examples_whose_prompt_fills_the_cutoff_are_dropped_with_their_ids(tokenizer):
    from tuneforge.config import RunConfig
    from tuneforge.data.examples import PreparedData
    from tuneforge.recipe import drop_examples_without_loss

    ids = tokenizer(["a sandwich of ham", "cheese on bread", "a prompt only"])["input_ids"]
    examples = [{"input_ids": i, "labels": list(i)} for i in ids[:2]] + [
        {"input_ids": ids[2], "labels": [-100] * len(ids[2])}
    ]
    said = []
    kept = drop_examples_without_loss(
        PreparedData("formatted", examples, counts={}), RunConfig(cutoff_len=8), said.append
    )
    assert len(kept.train) == 2 and kept.counts["dropped_without_loss"] == 1
    assert "ids 2" in said[0] and "cutoff_len" in said[0]
    with pytest.raises(ConfigError, match="cutoff_len.*train_on_source"):
        drop_examples_without_loss(
            PreparedData("formatted", examples[2:], counts={}), RunConfig(cutoff_len=8)
        )


def test_data_where_every_prompt_fills_the_cutoff_never_trains_at_loss_zero(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"input": "{"word " * 40}{i}", "output": "yes"}}\n' for i in range(6)))
    try:
        run = train(tiny_model_dir, data, tmp_path / "run", max_steps=2, cutoff_len=8, train_on_source=False)
    except TuneforgeError as error:  # refused before step 1, naming the setting
        assert "cutoff_len" in str(error)
        assert not list_checkpoints(tmp_path / "run")
        return
    assert run.train_tokens > 0 and all(loss > 0 for loss in run.losses)  # the data layer kept the targets


@pytest.mark.parametrize(
    "change",
    [dict(learning_rate=2e-2), dict(batch_size=2), dict(seed=4), dict(cutoff_len=64), "edited row"],
    ids=str,
)
def test_a_resume_with_changed_settings_lists_them_and_refuses(tiny_model_dir, lines_file, tmp_path, change):
    run_dir = tmp_path / "run"
    train(tiny_model_dir, lines_file, run_dir, max_steps=2)
    if change == "edited row":
        lines = lines_file.read_text().splitlines()
        lines_file.write_text("\n".join(["an edited first row about mustard"] + lines[1:]) + "\n")
        change, key = {}, "data"
    else:
        key = next(iter(change))
    with pytest.raises(
        ConfigError, match=rf"changed since it was saved: .*{key}.*allow_resume_mismatch"
    ) as refused:
        train(tiny_model_dir, lines_file, run_dir, max_steps=3, resume_from="latest", **change)
    assert "max_steps: 2 -> 3" in str(refused.value)  # every difference is listed, also the harmless ones
    with pytest.warns(UserWarning, match=rf"changed settings: .*{key}"):
        run = train(
            tiny_model_dir,
            lines_file,
            run_dir,
            max_steps=3,
            resume_from="latest",
            allow_resume_mismatch=True,
            **change,
        )
    assert run.resumed_from.name == "step-2" and run.steps == 3


def test_a_second_signal_during_the_save_still_leaves_a_complete_checkpoint(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    """SIGTERM during a step, then SIGINT while its checkpoint is being written: the save completes, then the
    run stops (KeyboardInterrupt: exit 130 in the CLI); the resume continues from that checkpoint."""
    from tuneforge.train import checkpoint, loop

    real_save, saves = checkpoint.save_checkpoint, []

    def second_signal_inside(*args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            signal.raise_signal(signal.SIGTERM)  # the first: stop after this step
            signal.raise_signal(signal.SIGINT)  # the second, inside the save
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", second_signal_inside)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=8)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-1", "step-2", "step-3"]
    monkeypatch.undo()
    run = train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=8, resume_from="latest")
    assert run.resumed_from.name == "step-3" and run.steps == 8


def test_resume_inside_and_after_warmup_logs_the_uninterrupted_learning_rates(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    """Interrupted (SIGINT) after step 2 (inside the 4 warm-up steps) and again after step 6; every step's learning rate
    and loss equals the uninterrupted run's."""
    from tests.reliability.conftest import assert_same_run
    from tuneforge.train import loop

    keys = dict(max_steps=9, warmup_steps=4, save_steps=None)
    train(tiny_model_dir, lines_file, tmp_path / "whole", **keys)
    real = loop.MetricsLog.record
    for stop_after in (2, 6):

        def interrupt(self, step, *args, stop_after=stop_after, **kwargs):
            real(self, step, *args, **kwargs)
            if step == stop_after:
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(loop.MetricsLog, "record", interrupt)
        run = train(
            tiny_model_dir,
            lines_file,
            tmp_path / "broken",
            resume_from="latest" if stop_after > 2 else None,
            **keys,
        )
        assert run.interrupted and run.steps == stop_after
    monkeypatch.undo()
    train(tiny_model_dir, lines_file, tmp_path / "broken", resume_from="latest", **keys)
    assert_same_run(tmp_path / "broken", tmp_path / "whole")
