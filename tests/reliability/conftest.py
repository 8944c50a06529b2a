"""Shared pieces of the reliability suite: a tiny-model run config, the CLI run in-process, metrics and weights.

    python -m pytest tests/reliability -q

Every run here is the real `tuneforge train` on the tiny random llama of tests/conftest.py, on CPU in fp32
with one thread, so two runs with the same settings give the same numbers and can be compared to 1e-6.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

RUN = dict(
    method="lora",
    rank=4,
    alpha=8,
    lora_dropout=0.1,
    target_modules=["all-linear"],
    batch_size=4,
    micro_batch_size=2,
    learning_rate=1e-2,
    lr_scheduler="linear",
    warmup_steps=3,
    precision="fp32",
    device="cpu",
    num_threads=1,
    save_steps=1,
    seed=3,
    recipe="textgen",  # fixed settings: no validation split or packing chosen from the data
)


def write_config(path: Path, model_dir: Path, data: Path, run_dir: Path, **keys) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {"model": str(model_dir), "data": str(data), "output_dir": str(run_dir), **RUN, **keys}
        )
    )
    return path


def cli(*args: str) -> int:
    """`tuneforge ARGS` in this process: the same code path as the command, without its import time."""
    from tuneforge.cli import main

    return main([str(a) for a in args])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_run(actual_dir: Path, expected_dir: Path, atol: float = 1e-6) -> None:
    """Same steps, per-step losses and learning rates, and final adapter weights, within `atol`."""
    import torch

    actual, expected = metrics(actual_dir), metrics(expected_dir)
    assert [m["step"] for m in actual] == [m["step"] for m in expected]
    for a, e in zip(actual, expected, strict=True):
        assert abs(a["loss"] - e["loss"]) <= atol, (a, e)
        assert abs(a["learning_rate"] - e["learning_rate"]) <= atol * 1e-3, (a, e)
    want, got = adapter_weights(expected_dir), adapter_weights(actual_dir)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=0, atol=atol), name


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def lines28(tmp_path) -> Path:
    """28 distinct lines: 7 steps of 4 an epoch."""
    from tuneforge.data.spintax import expand

    lines = sorted(
        set(
            expand(
                "{you can|anyone can} {make|build} a {small|tasty} {cheese|ham} sandwich "
                "{quickly|slowly|today}",
                200,
                seed=1,
            )
        )
    )[:28]
    assert len(lines) == 28
    path = tmp_path / "lines28.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
