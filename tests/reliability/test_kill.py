"""kill -9 at any moment loses nothing: a resumed run equals the uninterrupted one, step for step.

The training run is a real child process (`tuneforge train`) killed with SIGKILL — no handler runs, exactly
as an out-of-memory kill or a pulled plug of the process. The comparison runs and the resumes run in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.conftest import assert_same_run, cli, folder_digest, metrics, write_config
from tests.reliability.record_examples import record_steps_to, saving_step, steps_trained
from tuneforge.train.checkpoint import find_checkpoint, list_checkpoints

RECORDER = Path(__file__).with_name("record_examples.py")


def start_child(config: Path, record: Path, **env_vars: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), **env_vars)
    return subprocess.Popen(
        [sys.executable, str(RECORDER), str(record), "train", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 300, poll: float = 0.002):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the run ended before the kill: {process.stderr.read()[-2000:]}"
        time.sleep(poll)
    raise AssertionError("the run never reached the point to kill it at")


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return len(lines)


def run_recorded(record: Path, *args) -> int:
    remove = record_steps_to(record)
    try:
        return cli(*args)
    finally:
        remove()


def test_kill_9_mid_epoch_of_a_shuffled_3_epoch_run_resumes_exactly(tiny_model_dir, lines28, tmp_path):
    """21 steps (3 epochs x 7, shuffled). Killed as step 10 begins (mid epoch 2): after `--resume_from latest`
    every step's loss and learning rate, the final weights and the examples of every step equal the
    uninterrupted run's; every epoch trains each example exactly once."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole_config = write_config(tmp_path / "whole.yaml", tiny_model_dir, lines28, whole, epochs=3)
    broken_config = write_config(tmp_path / "broken.yaml", tiny_model_dir, lines28, broken, epochs=3)
    record = tmp_path / "broken-steps.jsonl"
    # the child holds before training step 10 (step 9 saved), so the kill lands there however fast it runs
    child = start_child(broken_config, record, PAUSE_BEFORE_STEP="10")
    assert run_recorded(tmp_path / "whole-steps.jsonl", "train", whole_config) == 0  # meanwhile, in-process
    wait_for(lambda: record.exists() and '"step": 10,' in record.read_text(), child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    resumed_at = int(find_checkpoint(broken, "latest").name.split("-")[1])
    assert resumed_at == 9 and logged_steps(broken) == 9 and not (broken / "adapter").exists()

    assert (
        run_recorded(tmp_path / "broken-steps.jsonl", "train", broken_config, "--resume_from", "latest") == 0
    )
    assert_same_run(broken, whole)
    assert [m["step"] for m in metrics(broken)] == list(range(1, 22))  # no step logged twice or lost
    expected, actual = (
        steps_trained(tmp_path / "whole-steps.jsonl"),
        steps_trained(tmp_path / "broken-steps.jsonl"),
    )
    assert actual == expected
    resumed_steps = [
        json.loads(line)["step"] for line in (tmp_path / "broken-steps.jsonl").read_text().splitlines()
    ]
    assert resumed_steps[-(21 - resumed_at) :] == list(range(resumed_at + 1, 22))  # resume starts right after
    for epoch in range(3):
        seen = [tuple(e) for step in range(epoch * 7 + 1, epoch * 7 + 8) for e in expected[step]]
        assert len(seen) == len(set(seen)) == 28, epoch


def test_kill_9_during_a_checkpoint_save_keeps_earlier_checkpoints_and_resumes(
    tiny_model_dir, lines28, tmp_path
):
    """SIGKILL while a checkpoint's temporary folder is being written: `latest` is the newest complete one,
    the earlier checkpoints are byte-identical, the leftover is ignored and removed, and the resume is exact."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    settings = dict(max_steps=8)
    child = start_child(
        write_config(tmp_path / "broken.yaml", tiny_model_dir, lines28, broken, **settings),
        tmp_path / "steps.jsonl",
        PAUSE_INSIDE_SAVES_AFTER_STEP="3",  # the child holds step 4's save open, so the kill lands inside it
    )
    assert (
        cli("train", write_config(tmp_path / "whole.yaml", tiny_model_dir, lines28, whole, **settings)) == 0
    )

    def saving_after_step_3():
        # by the partial folder's own step: a glob, then a listing, could see step 3's save on both sides
        # of its rename and kill after it finished
        folder = broken / "checkpoints"
        partial = [p for p in folder.glob(".step-*.tmp-*")] if folder.is_dir() else []
        return [p for p in partial if saving_step(p) > 3] or None

    wait_for(saving_after_step_3, child, poll=0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    before = {p.name: folder_digest(p) for p in list_checkpoints(broken)}
    leftovers = list((broken / "checkpoints").glob(".step-*"))
    assert leftovers, "the kill came after the save finished; the test must kill inside it"
    latest = find_checkpoint(broken, "latest")
    assert len(before) >= 3 and latest == list_checkpoints(broken)[-1] and latest.name in before
    assert cli("train", tmp_path / "broken.yaml", "--resume_from", "latest") == 0
    assert {name: folder_digest(broken / "checkpoints" / name) for name in before} == before
    assert not list((broken / "checkpoints").glob(".step-*"))  # the half-written folder was cleared
    assert_same_run(broken, whole)
