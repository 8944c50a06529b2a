"""Training jobs are their own processes: they outlive their starter, interrupt with a checkpoint, and resume."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from tuneforge import jobs
from tuneforge.config import RunConfig
from tuneforge.train.checkpoint import find_checkpoint


def tiny_run(model_dir, data, **overrides) -> dict:
    return dict(
        model=str(model_dir),
        data=str(data),
        method="lora",
        rank=4,
        alpha=8,
        target_modules=["all-linear"],
        batch_size=4,
        micro_batch_size=2,
        cutoff_len=32,
        overlap_len=8,
        precision="fp32",
        device="cpu",
        learning_rate=1e-2,
        save_steps=2,
        num_threads=1,
        **overrides,
    )


def wait_for_step(run_dir, step: int, timeout: float = 120) -> jobs.JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = jobs.status(run_dir)
        if current.step >= step or not current.running:
            return current
        time.sleep(0.1)
    raise AssertionError(f"no step {step} within {timeout} s; log:\n{jobs.status(run_dir).log_tail}")


def test_a_job_outlives_the_process_that_started_it(tiny_model_dir, lines_file, tmp_path):
    project = tmp_path / "project"
    run_dir = project / "runs" / "outlived"
    config = tiny_run(tiny_model_dir, lines_file, max_steps=6)
    starter = (
        f"from tuneforge import jobs; jobs.start({config!r}, {str(run_dir)!r}); "
        "print('started', flush=True)"
    )  # the 'UI': it exits right after starting the job
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=60, capture_output=True)
    job = json.loads((run_dir / "job.json").read_text())
    assert job["command"][-1] == str(run_dir / "config.yaml")
    assert jobs.attach(project) == run_dir.resolve() or jobs.status(run_dir).state == "finished"

    final = jobs.wait(run_dir, timeout=180)
    assert final.state == "finished", final.log_tail
    assert [m["step"] for m in final.metrics] == [1, 2, 3, 4, 5, 6]
    assert final.total_steps == 6 and final.loss is not None
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "done: 6 steps" in (run_dir / "train.log").read_text()
    assert jobs.attach(project) is None


def test_a_job_chooses_the_keys_it_was_not_given_as_tuneforge_train_does(
    tiny_model_dir, lines_file, tmp_path
):
    """jobs.start wrote every key into the job's config.yaml, so the run counted them all as given and recipe
    auto chose nothing: the UI's Start trained other settings than its Preview showed."""
    run_dir = tmp_path / "runs" / "auto"
    given = dict(model=str(tiny_model_dir), data=str(lines_file), max_steps=2, device="cpu", num_threads=1)
    jobs.start(given, run_dir)
    assert set(yaml.safe_load((run_dir / "config.yaml").read_text())) == {*given, "output_dir"}
    final = jobs.wait(run_dir, timeout=180)
    assert final.state == "finished", final.log_tail
    saved = (run_dir / "config.yaml").read_text()
    assert "# chosen: target_modules all-linear" in saved and "# chosen: learning_rate" in saved
    assert yaml.safe_load(saved)["target_modules"] == ["all-linear"]  # not the textgen default q_proj,v_proj
    assert "## Chosen for you (recipe auto)" in (run_dir / "report.md").read_text()
    # a RunConfig: its given keys and any value set since (given_keys was fixed when it was built)
    config = RunConfig(model=str(tiny_model_dir), data=str(lines_file), device="cpu")
    config.max_steps = 1
    jobs.start(config, tmp_path / "runs" / "set-later")
    written = yaml.safe_load((tmp_path / "runs" / "set-later" / "config.yaml").read_text())
    assert written["max_steps"] == 1 and "target_modules" not in written
    assert jobs.wait(tmp_path / "runs" / "set-later", timeout=180).step == 1


def test_interrupt_checkpoints_and_exits_cleanly_then_resume_finishes(tiny_model_dir, lines_file, tmp_path):
    run_dir = tmp_path / "runs" / "interrupted"
    # compile off: recipe auto would compile a run this long right where the Interrupt lands
    started = jobs.start(tiny_run(tiny_model_dir, lines_file, max_steps=100_000, compile=False), run_dir)
    assert started.state == "running" and started.pid

    with pytest.raises(jobs.JobError, match="already running \\(interrupted\\)"):
        jobs.start(tiny_run(tiny_model_dir, lines_file, max_steps=5), tmp_path / "runs" / "second")
    assert not (tmp_path / "runs" / "second" / "job.json").exists()

    running = wait_for_step(run_dir, 3)
    assert running.state == "running", running.log_tail
    assert running.total_steps == 100_000 and running.eta
    assert jobs.running_jobs(tmp_path) == [run_dir]

    stopped = jobs.stop(run_dir, wait=120)
    assert stopped.state == "interrupted", stopped.log_tail
    assert jobs.read_job(run_dir)["exit_code"] == 0
    checkpoint = find_checkpoint(run_dir, "latest")
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 3 and stopped.checkpoints >= 1
    with pytest.raises(jobs.JobError, match="no running job"):
        jobs.stop(run_dir)

    resumed = jobs.resume(run_dir, {"max_steps": stopped_at + 3})
    assert resumed.state in ("running", "finished")
    final = jobs.wait(run_dir, timeout=180)
    assert final.state == "finished", final.log_tail
    assert f"resumed from {checkpoint}" in final.log_tail
    assert final.step == stopped_at + 3
    steps = [m["step"] for m in final.metrics]
    assert steps[-1] == stopped_at + 3 and len(set(steps)) >= stopped_at + 2
    with pytest.raises(jobs.JobError, match="already finished"):
        jobs.resume(run_dir)


def test_a_failing_job_reports_its_error(tmp_path, lines_file):
    run_dir = tmp_path / "runs" / "broken"
    jobs.start(
        dict(model=str(tmp_path / "no-such-model"), data=str(lines_file), precision="fp32", device="cpu"),
        run_dir,
    )
    final = jobs.wait(run_dir, timeout=120)
    assert final.state == "failed"
    assert "does not exist" in final.message
    assert jobs.read_job(run_dir)["exit_code"] == 2


def test_a_folder_without_a_job_is_not_started(tmp_path):
    assert jobs.status(tmp_path).state == "not started"
    with pytest.raises(jobs.JobError, match="no config.yaml"):
        jobs.resume(tmp_path)


def test_the_status_line_leaves_out_a_total_it_does_not_know_yet(tmp_path):
    resuming = jobs.JobStatus(tmp_path, "running", "training", step=12, loss=2.5)  # before "resumed from ..."
    assert resuming.progress()[:2] == ["step 12", "loss 2.5000"]
    known = jobs.JobStatus(tmp_path, "running", "training", step=12, total_steps=50)
    assert known.progress() == ["step 12/50"]


def test_the_log_tail_shows_a_redrawn_progress_bar_once_as_a_terminal_would(tmp_path):
    bar = "".join(f"Loading weights: {percent}%\r" for percent in range(0, 101, 5))
    (tmp_path / jobs.LOG_FILE).write_text(f"{jobs.START_MARK} 2026-12-06\n{bar}\nstep 1/5  loss 2.0\n")
    tail = jobs.status(tmp_path).log_tail.splitlines()
    assert tail[1:] == ["Loading weights: 100%", "step 1/5  loss 2.0"]
