"""What the sharded-engine tests (FSDP2 over gloo, DeepSpeed's CPU accelerator) share: their data, their
readings of a run folder, and the run folder a kill after a checkpoint leaves."""

import json
import shutil
from pathlib import Path

LINES = "".join(f"line {i} of the cheese sandwich notes, kept short.\n" for i in range(24))


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a_file: Path, b_file: Path) -> None:
    """Two safetensors files hold the same tensors within 1e-4."""
    from safetensors.torch import load_file

    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def left_at_checkpoint(run: Path, step: int, folder: Path) -> Path:
    """`folder` as a kill right after step `step` would leave `run`: that checkpoint and its metrics only."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / f"step-{step}", folder / "checkpoints" / f"step-{step}")
    lines = (run / "metrics.jsonl").read_text().splitlines()[:step]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder
