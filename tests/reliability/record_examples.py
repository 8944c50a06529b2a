"""Run `tuneforge train ...` while appending, per optimizer step, the examples it trains on to a JSONL file.

    python tests/reliability/record_examples.py steps.jsonl train run.yaml --resume_from latest

PAUSE_BEFORE_STEP=N holds the run before it trains step N; PAUSE_INSIDE_SAVES_AFTER_STEP=N holds each save
after step N inside its temporary folder (until a SIGINT arrives) — so a test's signal lands where it must.

Observation only (the reliability tests read it to prove none is repeated or skipped across a kill -9): it
wraps the loop's `accumulate_gradients` and writes {"step", "examples": [input_ids, ...]} before each step runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path


def record_steps_to(path: Path, pause_at: int | None = None, seconds: float = 600.0):
    """Install the recorder in this process; returns a function that removes it. With `pause_at`, the run
    holds for `seconds` once that step is recorded, before it trains it (its previous step is saved)."""
    from tuneforge.train import loop

    real = loop.accumulate_gradients

    def recording(model, examples, *args, step, **kwargs):
        with path.open("a") as file:
            file.write(
                json.dumps({"step": step, "examples": [list(e["input_ids"]) for e in examples]}) + "\n"
            )
        if step == pause_at:
            time.sleep(seconds)  # a kill -9 test kills here, however fast the run is
        return real(model, examples, *args, step=step, **kwargs)

    loop.accumulate_gradients = recording
    return lambda: setattr(loop, "accumulate_gradients", real)


def steps_trained(path: Path) -> dict[int, list]:
    """Step -> its examples; a step recorded twice (started, killed, redone) keeps its last record."""
    return {r["step"]: r["examples"] for r in map(json.loads, path.read_text().splitlines())}


def saving_step(folder: Path) -> int | None:
    """The step of a checkpoint being written (its temporary folder .step-N.tmp-XXXX), else None."""
    match = re.fullmatch(r"\.step-(\d+)\.tmp-.*", folder.name)
    return int(match.group(1)) if match else None


def pause_inside_saves_after(step: int, seconds: float = 120.0) -> None:
    """Hold every checkpoint save after `step` for `seconds` once its weights file is written, still inside
    its temporary folder, or until a SIGINT arrives (the run's own handler is called too): a kill -9 or an
    Interrupt then lands mid-save every time, however fast the disk is."""
    import safetensors.torch

    real = safetensors.torch.save_file
    # every SIGINT this process gets, also those before a pause began (between the temporary folder's creation,
    # which a test waits for, and the weights' write): such a pause must not wait for another one
    interrupted: list[int] = []
    install = signal.signal

    def installing(signum, handler):
        if signum != signal.SIGINT or not callable(handler):
            return install(signum, handler)

        def noted(received, frame):
            interrupted.append(received)
            handler(received, frame)

        return install(signum, noted)

    signal.signal = installing

    def pausing(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        saving = saving_step(Path(filename).parent)
        if saving is None or saving <= step:
            return
        end = time.monotonic() + seconds  # the run's SIGINT handler (train/step.py) notes it in `interrupted`
        while not interrupted and time.monotonic() < end:
            time.sleep(0.01)

    safetensors.torch.save_file = pausing


if __name__ == "__main__":
    record_steps_to(Path(sys.argv[1]), pause_at=int(os.environ.get("PAUSE_BEFORE_STEP", 0)) or None)
    if os.environ.get("PAUSE_INSIDE_SAVES_AFTER_STEP"):
        pause_inside_saves_after(int(os.environ["PAUSE_INSIDE_SAVES_AFTER_STEP"]))
    from tuneforge.cli import main

    sys.exit(main(sys.argv[2:]))
