"""Run `tuneforge train ...` while appending, per optimizer step, the examples it trains on to a JSONL file.

    python tests/reliability/record_examples.py steps.jsonl train run.yaml --resume_from latest

Observation only (the reliability tests read it to prove none is repeated or skipped across a kill -9): it
wraps the loop's `accumulate_gradients` and writes {"step", "examples": [input_ids, ...]} before each step runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def record_steps_to(path: Path):
    """Install the recorder in this process; returns a function that removes it."""
    from tuneforge.train import loop

    real = loop.accumulate_gradients

    def recording(model, examples, *args, step, **kwargs):
        with path.open("a") as file:
            file.write(
                json.dumps({"step": step, "examples": [list(e["input_ids"]) for e in examples]}) + "\n"
            )
        return real(model, examples, *args, step=step, **kwargs)

    loop.accumulate_gradients = recording
    return lambda: setattr(loop, "accumulate_gradients", real)


def steps_trained(path: Path) -> dict[int, list]:
    """Step -> its examples; a step recorded twice (started, killed, redone) keeps its last record."""
    return {r["step"]: r["examples"] for r in map(json.loads, path.read_text().splitlines())}


def pause_inside_saves_after(step: int, seconds: float = 120.0) -> None:
    """Hold every checkpoint save after `step` for `seconds` once its weights file is written, still inside
    its temporary folder: a kill -9 test then kills mid-save every time, however fast the disk is."""
    import time

    import safetensors.torch

    real = safetensors.torch.save_file

    def pausing(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        folder = Path(filename).parent.name  # .step-N.tmp-XXXX while a checkpoint is being written
        if folder.startswith(".step-") and int(folder.split(".")[1].split("-")[1]) > step:
            time.sleep(seconds)

    safetensors.torch.save_file = pausing


if __name__ == "__main__":
    record_steps_to(Path(sys.argv[1]))
    if os.environ.get("PAUSE_INSIDE_SAVES_AFTER_STEP"):
        pause_inside_saves_after(int(os.environ["PAUSE_INSIDE_SAVES_AFTER_STEP"]))
    from tuneforge.cli import main

    sys.exit(main(sys.argv[2:]))
