"""The same run scales out through Accelerate: 2 CPU processes (DDP, gloo) give the single process's losses."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate launcher not installed")
def test_two_process_ddp_run_matches_the_single_process_run(tiny_model_dir, lines_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {lines_file}\nmax_steps: 3\nbatch_size: 8\n"
                      "micro_batch_size: 2\nprecision: fp32\nrank: 4\nalpha: 8\nlearning_rate: 0.03\n"
                      "target_modules: all-linear\nlora_dropout: 0\nsave_steps: 3\n")
    launcher = str(Path(sys.executable).parent / "accelerate")
    ddp = subprocess.run([launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tuneforge.cli", "train",
                          str(config), "--output_dir", str(tmp_path / "ddp")], capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(config), "--output_dir",
                             str(tmp_path / "single")], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ddp" / "checkpoints" / "step-3" / "trainer_state.json").is_file()
