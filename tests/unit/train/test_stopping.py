"""A run stops at the right time and leaves what a resume needs: a signal during evaluation, the max_time
budget (planned from the measured step time), and the warning when a step is suddenly slow."""

import signal

import torch

import tuneforge as tf
from tests.reliability.conftest import assert_same_run, cli, metrics, write_config
from tuneforge.train.checkpoint import find_checkpoint, list_checkpoints, read_checkpoint
from tuneforge.train.progress import TrainingProgress, slow_step_warning

SETTINGS = dict(
    method="lora",
    rank=4,
    alpha=8,
    target_modules=["all-linear"],
    batch_size=4,
    micro_batch_size=2,
    learning_rate=1e-2,
    lr_scheduler="linear",
    warmup_steps=0,
    precision="fp32",
    num_threads=1,
    seed=3,
    validation_split=0,
)


def train(model_dir, data, run_dir, **keys):
    return tf.load(str(model_dir), precision="fp32").train(
        data, output_dir=str(run_dir), show_progress=False, **{**SETTINGS, **keys}
    )


def test_sigterm_during_evaluation_leaves_the_finished_steps_checkpoint_and_the_resume_continues(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    from tuneforge.train import validation

    keys = dict(max_steps=8, eval_steps=2, validation_split=0.25, save_steps=None)
    whole_dir, run_dir = tmp_path / "whole", tmp_path / "run"
    assert (
        cli("train", write_config(tmp_path / "whole.yaml", tiny_model_dir, lines_file, whole_dir, **keys))
        == 0
    )
    real, evaluations = validation.evaluate_loss, []

    def sigterm_inside_the_second(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 2:  # step 4's evaluation
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "evaluate_loss", sigterm_inside_the_second)
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, lines_file, run_dir, **keys)
    assert (
        cli("train", config) == 0
    )  # the documented exit code of an interrupted run: 0, with the resume command
    checkpoint = find_checkpoint(run_dir, "latest")
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-4"]
    state = read_checkpoint(checkpoint)["state"]  # complete: every file reads back
    assert state.step == 4 and [step for step, _ in state.validation_losses] == [2, 4]
    monkeypatch.undo()
    assert cli("train", config, "--resume_from", "latest") == 0
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, 9))
    assert_same_run(run_dir, whole_dir)


class FakeClock:
    """Seconds that pass only when a training step runs: `step_seconds[i]` for the i-th step."""

    def __init__(self, step_seconds):
        self.now, self.step_seconds = 0.0, list(step_seconds)

    def __call__(self) -> float:
        return self.now


def with_fake_clock(monkeypatch, step_seconds) -> FakeClock:
    from tuneforge.train import loop, stopping

    clock, real = FakeClock(step_seconds), loop.accumulate_gradients

    def timed(*args, **kwargs):
        done = real(*args, **kwargs)
        clock.now += clock.step_seconds.pop(0) if clock.step_seconds else 10.0
        return done

    monkeypatch.setattr(stopping, "clock", clock)
    monkeypatch.setattr(loop, "accumulate_gradients", timed)
    return clock


def test_max_time_plans_the_schedule_to_end_decayed_when_the_time_is_up(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    with_fake_clock(monkeypatch, [10.0] * 20)  # 10 s a step: 6 steps fit in one minute
    run = train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=20, max_time=1.0)
    assert run.steps == 6 and run.total_steps == 6
    assert "max_time of 1 minute" in run.stopped_because
    rates = [m["learning_rate"] for m in metrics(tmp_path / "run")]
    assert rates == sorted(rates, reverse=True)  # logged: the rate each step applied
    assert 0 < rates[-1] < rates[2] / 2  # steps 4-6 decay towards 0 at the deadline
    assert rates[2] > 1e-2 * 16 / 20  # steps 1-3 followed the 20-step plan, then it was re-planned


def test_max_time_stops_the_run_when_the_steps_get_slower_than_planned(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    with_fake_clock(monkeypatch, [10.0, 10.0, 10.0, 25.0, 25.0, 25.0])  # planned 6, slowed down after 3
    run = train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=20, max_time=1.0)
    assert run.steps == 5 and run.stopped_because == "max_time of 1 minute used up at step 5"


def test_a_sudden_slow_step_is_pointed_out_once_in_a_while():
    usual = [5.0, 3.0, 2.0] + [1.0, 1.1, 0.9, 1.0, 1.05]  # the first 3 steps are warm-up, not the usual
    assert slow_step_warning(8, usual, None) is None
    warning = slow_step_warning(9, [*usual, 3.0], None)
    assert warning == "step 9 took 3.00 s, 3.0x the usual 1.00 s: is another process using the CPU?"
    assert slow_step_warning(9, [*usual, 2.4], None) is None  # 2.4x: within the noise of a shared machine
    assert slow_step_warning(30, [*usual, 3.0], warned_at=9) is None  # at most one warning per 50 steps
    assert slow_step_warning(59, [*usual, 3.0], warned_at=9) is not None
    assert slow_step_warning(5, [5.0, 3.0, 2.0, 1.0, 9.0], None) is None  # too few usual steps to judge


def test_a_slow_step_on_a_machine_that_got_busy_drops_a_thread_for_the_rest_of_the_run(
    tiny_model_dir, lines_file, tmp_path, monkeypatch, capsys
):
    """Threads chosen from the free cores (num_threads unset): idle at the start (2 threads), then step 5 is
    slow and the load reading says another process holds a core, so the run goes on with 1 thread and says so."""
    import torch

    from tuneforge.train import progress

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    readings = iter([0.0])  # idle when the run starts, a core busy after that
    monkeypatch.setattr("tuneforge.hardware.busy_cores", lambda seconds=0.2: next(readings, 1.0))
    real = progress.slow_step_warning
    monkeypatch.setattr(
        progress,
        "slow_step_warning",
        lambda step, *a, **k: "step 5 was slow" if step == 5 else real(step, *a, **k),
    )
    before = torch.get_num_threads()
    try:
        tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file, output_dir=str(tmp_path / "run"), **{**SETTINGS, "max_steps": 7, "num_threads": None}
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    shown = capsys.readouterr()
    assert (
        "1 CPU thread from now on: other processes keep 1 of the run's 2 cores busy" in shown.out + shown.err
    )


def test_a_resumed_runs_eta_counts_the_speed_of_its_own_steps_and_elapsed_goes_on(monkeypatch):
    import io

    clock = iter([100.0, 100.0, 130.0])  # created, resumed at step 50, step 51 done 30 s later
    monkeypatch.setattr("tuneforge.train.progress.time.perf_counter", lambda: next(clock))
    shown = io.StringIO()
    progress = TrainingProgress(total_steps=60, stream=shown)
    progress.resume_at(50, seconds_before=600.0)  # the sessions before trained for 10 minutes
    progress.update(51, loss=1.0, learning_rate=1e-4, tokens_per_second=100.0)
    assert "step 51/60" in shown.getvalue() and "eta 4:30" in shown.getvalue()  # 9 steps left of 30 s
    assert "elapsed 10:30" in shown.getvalue()


def test_threads_follow_the_free_cores_unless_num_threads_or_omp_num_threads_is_set(
    tiny_model_dir, lines_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("tuneforge.hardware.busy_cores", lambda seconds=0.2: 3.0)  # others keep 3 cores busy
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        keys = dict(max_steps=1, num_threads=None)
        tf.load(str(tiny_model_dir), precision="fp32").train(
            lines_file, output_dir=str(tmp_path / "a"), show_progress=True, **{**SETTINGS, **keys}
        )
        assert torch.get_num_threads() == 1
        assert "1 CPU thread of 4 cores: other processes keep 3.0 cores busy" in capsys.readouterr().err
        train(tiny_model_dir, lines_file, tmp_path / "b", max_steps=1, num_threads=3)
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what torchrun sets for each of its processes
        train(tiny_model_dir, lines_file, tmp_path / "c", max_steps=1, num_threads=None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_without_max_time_the_clock_changes_nothing(tiny_model_dir, lines_file, tmp_path, monkeypatch):
    with_fake_clock(monkeypatch, [10.0] * 8)
    run = train(tiny_model_dir, lines_file, tmp_path / "run", max_steps=8)
    assert run.steps == 8 and run.stopped_because == "finished"
