"""A run resumed with a different length (or a max_time plan) re-plans the rest of its learning rate schedule:
no step ever trains at learning rate 0 because the run got longer, and the re-planned run resumes exactly."""

import json
import shutil

import pytest
import torch

import tuneforge as tf
from tests.reliability.conftest import RUN, assert_same_run
from tuneforge.config import RunConfig
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.optim import build_scheduler
from tuneforge.train.schedule import replan_schedule

SETTINGS = {**RUN, "warmup_steps": 0, "validation_split": 0}  # the reliability suite's run, no warm-up


def stepped(scheduler, optimizer, steps: int) -> list[float]:
    """The learning rate each of `steps` more steps trains with."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def scheduler_for(name: str, warmup: int, total: int):
    config = RunConfig(lr_scheduler=name, warmup_steps=warmup, learning_rate=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    return config, optimizer, build_scheduler(optimizer, config, total)


@pytest.mark.parametrize("name", ["linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_a_finished_schedule_made_longer_decays_from_the_last_rate_to_the_new_end(name):
    config, optimizer, scheduler = scheduler_for(name, warmup=0, total=4)
    before = stepped(scheduler, optimizer, 4)
    end_of_old = scheduler.get_last_lr()[0]  # what the old plan would train step 5 with: its end
    assert "decays from" in replan_schedule(scheduler, config, step=4, total_steps=8)
    after = stepped(scheduler, optimizer, 4)
    assert after[0] == pytest.approx(before[-1])  # steps 5.. start where step 4 was
    assert all(rate > 0 for rate in after) and after == sorted(after, reverse=True) and after[0] > after[-1]
    assert scheduler.get_last_lr()[0] == pytest.approx(end_of_old)  # and end where the old plan ended


def test_inside_the_warm_up_the_warm_up_is_kept_then_the_decay_ends_at_the_new_end():
    config, optimizer, scheduler = scheduler_for("linear", warmup=4, total=6)
    _, reference_optimizer, reference = scheduler_for("linear", warmup=4, total=10)
    stepped(scheduler, optimizer, 2)
    assert "keeps its warm-up to step 4" in replan_schedule(scheduler, config, step=2, total_steps=10)
    expected = stepped(reference, reference_optimizer, 10)[2:]
    assert stepped(scheduler, optimizer, 8) == pytest.approx(expected)
    assert scheduler.get_last_lr()[0] == 0.0


def test_a_mid_run_plan_continues_from_the_next_steps_rate():
    config, optimizer, scheduler = scheduler_for("cosine", warmup=0, total=20)
    stepped(scheduler, optimizer, 3)
    next_rate = optimizer.param_groups[0]["lr"]
    replan_schedule(scheduler, config, step=3, total_steps=6)
    rates = stepped(scheduler, optimizer, 3)
    assert rates[0] == pytest.approx(next_rate) and rates == sorted(rates, reverse=True)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_unchanged_length_and_fixed_length_schedules_are_left_alone():
    config, optimizer, scheduler = scheduler_for("linear", warmup=0, total=4)
    stepped(scheduler, optimizer, 2)
    assert replan_schedule(scheduler, config, step=2, total_steps=4) is None
    config, optimizer, scheduler = scheduler_for("constant", warmup=0, total=4)
    stepped(scheduler, optimizer, 4)
    assert replan_schedule(scheduler, config, step=4, total_steps=8) is None
    assert optimizer.param_groups[0]["lr"] == 1.0


def test_resuming_with_more_steps_never_trains_at_learning_rate_zero(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    from tuneforge.train import loop

    real, used = loop.accumulate_gradients, {}

    def recording(*args, step, optimizer, **kwargs):  # the learning rate the step's update will use
        used[step] = optimizer.param_groups[0]["lr"]
        return real(*args, step=step, optimizer=optimizer, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", recording)

    def train(run_dir, **keys):
        return tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file, output_dir=str(run_dir), show_progress=False, **{**SETTINGS, **keys}
        )

    train(tmp_path / "whole", max_steps=4)
    with pytest.warns(UserWarning, match="planned for 4 steps and this run has 8, so it is re-planned"):
        run = train(tmp_path / "whole", max_steps=8, resume_from="latest")
    assert run.resumed_from.name == "step-4" and run.steps == 8
    resumed = [used[step] for step in range(5, 9)]
    assert all(rate > 0 for rate in resumed) and resumed == sorted(resumed, reverse=True)
    assert resumed[0] == pytest.approx(used[4])  # the decay continues from the last step's rate
    logged = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 9))
    assert [m["learning_rate"] for m in logged] == pytest.approx([used[step] for step in range(1, 9)])

    # the re-planned run, killed after step 6 and resumed (same length): the same steps as without the kill
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "whole", broken)
    for checkpoint in list_checkpoints(broken):
        if int(checkpoint.name.split("-")[1]) > 6:
            shutil.rmtree(checkpoint)
    shutil.rmtree(broken / "adapter")
    train(broken, max_steps=8, resume_from="latest")
    assert_same_run(broken, tmp_path / "whole")


def test_a_ratio_warm_up_shrinks_with_a_run_made_shorter_and_a_given_warm_up_is_kept():
    # max_time: planned for 400 steps (a 5% warm-up: 20), measured to fit 25 after step 3
    config = RunConfig(lr_scheduler="linear", warmup_ratio=0.05, learning_rate=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = build_scheduler(optimizer, config, 400)
    stepped(scheduler, optimizer, 3)
    assert "decays from 1.00e+00 at step 4" in replan_schedule(scheduler, config, step=3, total_steps=25)
    after = stepped(scheduler, optimizer, 22)
    assert after[0] == pytest.approx(1.0) and after == sorted(after, reverse=True) and after[-1] > 0
    assert (
        scheduler.get_last_lr()[0] == 0.0
    )  # the decay takes the whole rest of the run, not its last 5 steps
    given, optimizer, scheduler = scheduler_for("linear", warmup=20, total=400)
    stepped(scheduler, optimizer, 3)
    assert "keeps its warm-up to step 20" in replan_schedule(scheduler, given, step=3, total_steps=25)


def test_recipe_autos_ratio_warm_up_is_never_one_step_at_rate_0_and_a_given_one_is_as_transformers_has_it():
    from tuneforge.config import load_config
    from tuneforge.train.optim import warmup_steps

    auto = load_config(None, {"recipe": "auto"}).replace(warmup_ratio=0.05)
    auto.given_keys = auto.given_keys - {"warmup_ratio"}  # as recipe auto chose it
    assert [warmup_steps(auto, n) for n in (3, 20, 21, 40)] == [0, 0, 2, 2]
    given = load_config(None, {"recipe": "auto", "warmup_ratio": 0.05})
    assert [warmup_steps(given, n) for n in (3, 20, 21)] == [1, 1, 2]  # math.ceil, as the HF Trainer
