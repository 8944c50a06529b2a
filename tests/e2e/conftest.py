"""One short cheese LoRA on the real default model, shared by the end-to-end checks (one run, not two)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

CHEESE = SHARED_DATA / "cheese_instructions.txt"
PROMPT = "To make a cheese sandwich "


@dataclass
class CheeseRun:
    run: object  # tuneforge's run result
    before: str  # greedy text of PROMPT before training
    after: str  # and after
    heldout: Path  # the last 100 cheese lines, never trained on
    root: Path


@pytest.fixture(scope="session")
def cheese_run(tmp_path_factory) -> CheeseRun:
    """A 12-step LoRA on 1,900 cheese lines of seed 001; the last 100 lines are held out (loss 4.37 -> 0.66)."""
    import tuneforge as tf

    root = tmp_path_factory.mktemp("cheese")
    lines = CHEESE.read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines[:-100]) + "\n")
    (root / "heldout.txt").write_text("\n".join(lines[-100:]) + "\n")
    llm = tf.load("default")
    before = llm.generate(PROMPT, do_sample=False, max_new_tokens=20)
    run = llm.train(
        root / "train.txt",
        method="lora",
        format="lines",
        rank=16,
        alpha=32,
        target_modules="all-linear",
        learning_rate=2e-3,
        batch_size=16,
        micro_batch_size=16,
        max_steps=12,
        warmup_steps=2,
        output_dir=str(root / "run"),
        show_progress=False,
    )
    after = llm.generate(PROMPT, do_sample=False, max_new_tokens=20)
    return CheeseRun(run, before, after, root / "heldout.txt", root)
