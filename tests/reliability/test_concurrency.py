"""Concurrency of training jobs through `tuneforge.jobs`, the functions behind the UI's Start and Interrupt.

    python -m pytest tests/reliability/test_concurrency.py -q

Real child processes (`tuneforge train` on the tiny model): Start twice at the same moment, Start and Resume
while a job trains, generate with the Notebook's code path while it trains, a "reloaded page" (a fresh
interpreter asking `jobs.status`), and Interrupt while a checkpoint is being written. Processes are checked in
/proc: a job runs in its own session, so every process it started carries its pid as session id.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.reliability.conftest import RUN
from tests.reliability.record_examples import saving_step
from tuneforge import jobs
from tuneforge.train.checkpoint import find_checkpoint, read_checkpoint

RECORDER = Path(__file__).with_name("record_examples.py")


def job_settings(model_dir: Path, data: Path, **keys) -> dict:
    return dict(RUN, model=str(model_dir), data=str(data), max_steps=100_000, **keys)


def session_processes(session: int) -> list[int]:
    """Pids of every process (zombies included) whose session id is `session`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def lock_is_free(runs: Path) -> bool:
    """True when no process (the job or a child it left behind) holds the runs folder's job lock."""
    fd = os.open(runs / jobs.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def status_after_reload(run_dir: Path, project: Path) -> dict:
    """What a reloaded page or a restarted UI sees: `jobs.status` and `jobs.attach` in a fresh interpreter."""
    probe = (
        "import json, sys; from tuneforge import jobs; s = jobs.status(sys.argv[1]); "
        "a = jobs.attach(sys.argv[2], stopped=True); "
        "print(json.dumps({'state': s.state, 'pid': s.pid, 'step': s.step, 'attached': a and str(a)}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(run_dir), str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def wait_until(condition, run_dir: Path, timeout: float = 240, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert jobs.status(run_dir).running, f"the job ended early:\n{jobs.status(run_dir).log_tail}"
        time.sleep(poll)
    raise AssertionError(f"timed out; log:\n{jobs.status(run_dir).log_tail}")


@pytest.fixture()
def project(tmp_path, tiny_model_dir) -> Iterator[Path]:
    root = tmp_path / "project"
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    (root / "runs").mkdir()
    yield root
    for run_dir in jobs.running_jobs(root):  # a failed test must not leave its job training
        os.killpg(jobs.read_job(run_dir)["pid"], signal.SIGKILL)
        jobs.wait(run_dir, timeout=30)


def test_one_job_at_a_time_while_the_notebook_generates_and_a_reload_sees_it(project, lines28):
    """Start clicked twice at the same moment, then Start of another run and Resume while it trains: all
    refused with a message, one training process, the running job's files untouched. Meanwhile the Notebook's
    generation works and a fresh interpreter sees the job running with its pid; after Interrupt, nothing of
    the job is left and the fresh interpreter sees it interrupted."""
    from tuneforge.ui.project import Project
    from tuneforge.ui.text_tabs import SAMPLING, settings_from
    from tuneforge.ui.workspace import Workspace

    runs = project / "runs"
    first, other = runs / "first", runs / "other"
    settings = job_settings(project / "models" / "tiny", lines28, save_steps=20)
    outcomes: list = []
    gate = threading.Barrier(2)

    def click_start(max_steps: int) -> None:
        gate.wait()
        try:
            outcomes.append((max_steps, jobs.start(dict(settings, max_steps=max_steps), first, cwd=project)))
        except jobs.JobError as refused:
            outcomes.append((max_steps, refused))

    clicks = [threading.Thread(target=click_start, args=(n,)) for n in (100_000, 99_999)]
    for click in clicks:
        click.start()
    for click in clicks:
        click.join(timeout=60)
    started = [(n, o) for n, o in outcomes if isinstance(o, jobs.JobStatus)]
    refused = [o for _, o in outcomes if isinstance(o, jobs.JobError)]
    assert len(started) == 1 and len(refused) == 1, outcomes
    assert "already running" in str(refused[0])
    max_steps, status = started[0]
    pid = status.pid
    config_before = (first / "config.yaml").read_bytes()
    assert yaml.safe_load(config_before)["max_steps"] == max_steps  # the refused click wrote nothing
    job_before = (first / "job.json").read_bytes()

    with pytest.raises(jobs.JobError, match=r"already running \(first\)"):
        jobs.start(dict(settings, max_steps=3), other, cwd=project)
    assert not other.exists()  # a refused Start leaves no half-made run behind
    with pytest.raises(jobs.JobError, match="already running"):
        jobs.start(dict(settings, max_steps=3), first, cwd=project)
    with pytest.raises(jobs.JobError, match="still running"):
        jobs.resume(first, cwd=project)
    assert (first / "config.yaml").read_bytes() == config_before
    assert (first / "job.json").read_bytes() == job_before
    assert session_processes(pid) == [pid]  # one training process, and it started nothing of its own
    assert jobs.running_jobs(project) == [first.resolve()]

    step = wait_until(lambda: jobs.status(first).step >= 2 and jobs.status(first).step, first)
    seen = status_after_reload(first, project)
    assert seen["state"] == "running" and seen["pid"] == pid and seen["step"] >= step, seen
    assert seen["attached"] == str(first.resolve())

    workspace = Workspace(Project(project))  # the UI's model holder; the Notebook streams through it
    workspace.load("models/tiny", device="cpu", precision="fp32")
    defaults = [default for _, _, default, *_ in SAMPLING] + [True, 7]
    pieces = list(workspace.require().stream("To be or not to", **settings_from(defaults)))
    assert pieces and "".join(pieces).strip()
    later = wait_until(lambda: jobs.status(first).step > step and jobs.status(first).step, first)
    assert later > step  # training kept going while the Notebook generated

    stopped = jobs.stop(first, wait=120)
    assert stopped.state == "interrupted", stopped.log_tail
    assert jobs.read_job(first)["exit_code"] == 0
    assert session_processes(pid) == [] and lock_is_free(runs)  # no orphan, no zombie, no held lock
    seen = status_after_reload(first, project)
    # a reloaded page shows the interrupted run, so its Resume button continues it
    assert seen["state"] == "interrupted" and seen["attached"] == str(first.resolve()), seen


def test_interrupt_during_a_save_leaves_a_complete_checkpoint_and_the_run_resumes(
    project, lines28, tmp_path, monkeypatch
):
    """Interrupt (jobs.stop, the UI's button) while a checkpoint's temporary folder is being written: the save
    completes, the job checkpoints that step and exits 0, no process of it remains, and Resume continues from
    that checkpoint to the end (every step logged once); a fresh interpreter then sees it finished."""
    # The job runs through the reliability recorder, which holds step 3's save open until the Interrupt
    # arrives: a save takes ~30 ms, a window a poll on a busy machine could miss.
    plain_command = jobs.train_command
    monkeypatch.setattr(
        jobs,
        "train_command",
        lambda config, resume=False: [
            sys.executable,
            str(RECORDER),
            str(tmp_path / "steps.jsonl"),
            *plain_command(config, resume)[3:],
        ],
    )
    monkeypatch.setenv("PAUSE_INSIDE_SAVES_AFTER_STEP", "2")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    run_dir = project / "runs" / "saving"
    started = jobs.start(job_settings(project / "models" / "tiny", lines28, save_steps=1), run_dir)
    checkpoints = run_dir / "checkpoints"

    def saving_after_step_2():
        # by the partial folder's own step (a glob, then a listing, can straddle step 2's rename)
        partial = list(checkpoints.glob(".step-*.tmp-*")) if checkpoints.is_dir() else []
        return [p for p in partial if saving_step(p) > 2] or None

    partial = wait_until(saving_after_step_2, run_dir, poll=0.02)
    stopped = jobs.stop(run_dir, wait=120)
    saving = saving_step(partial[0])
    monkeypatch.delenv("PAUSE_INSIDE_SAVES_AFTER_STEP")  # the resume's saves run freely
    assert (tmp_path / "steps.jsonl").is_file()  # the job ran through the recorder, which held the save

    assert stopped.state == "interrupted", stopped.log_tail
    assert jobs.read_job(run_dir)["exit_code"] == 0
    assert f"interrupted by SIGINT (step {saving}/" in stopped.log_tail, (
        f"the Interrupt must land inside the save of step {saving}, not in a later step:\n" + stopped.log_tail
    )
    latest = find_checkpoint(run_dir, "latest")
    assert latest.name == f"step-{saving}"
    files = read_checkpoint(latest)  # every file there and readable: the save was not cut short
    assert files["state"].step == saving
    assert not list(checkpoints.glob(".step-*"))  # no half-written folder left beside it
    assert session_processes(started.pid) == [] and lock_is_free(run_dir.parent)

    jobs.resume(run_dir, {"max_steps": saving + 2}, cwd=project)
    final = jobs.wait(run_dir, timeout=240)
    assert final.state == "finished", final.log_tail
    assert f"resumed from {latest}" in final.log_tail
    steps = [m["step"] for m in final.metrics]
    assert steps == list(range(1, saving + 3))  # resumed right after the saved step, nothing twice
    seen = status_after_reload(run_dir, project)
    # a newly opened page shows the finished run (its report and chart), not an empty status
    assert seen["state"] == "finished" and seen["attached"] == str(run_dir.resolve()), seen
