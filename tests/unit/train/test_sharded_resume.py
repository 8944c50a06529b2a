"""A sharded (FSDP) run checkpoints every rank's shards and resumes from them exactly.

    python -m pytest tests/unit/train/test_sharded_resume.py -q

Accelerate engages FSDP only for accelerator process groups (measured: test_scale.py), but torch's FSDP2
(`fully_shard`) itself runs on CPU processes over gloo. So each rank here starts `tuneforge train` through the
CLI with one change: Accelerate's distributed type is set to FSDP before `prepare`, so Accelerate's real FSDP2
wrapping, torch DCP shard files and tuneforge's save/resume path (train/sharded.py) all run for real.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
STEPS = 6

FORCED_FSDP = """
import sys
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
import tuneforge.train.setup as setup

built = setup._accelerator

def fsdp_accelerator(*args, **kwargs):
    accelerator = built(*args, **kwargs)
    accelerator.state.distributed_type = DistributedType.FSDP  # the CPU process group, sharded by FSDP2
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, state_dict_type="SHARDED_STATE_DICT", reshard_after_forward=True
    )
    return accelerator

setup._accelerator = fsdp_accelerator
from tuneforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_two(script: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), "train", *args]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=400,
        env={"HF_HUB_OFFLINE": "1", **{k: v for k, v in __import__("os").environ.items()}},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="torchrun not installed")
def test_fsdp_run_resumes_from_its_sharded_checkpoint_as_the_uninterrupted_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    script = tmp_path / "fsdp_train.py"
    script.write_text(FORCED_FSDP)
    data = tmp_path / "lines.txt"
    data.write_text("".join(f"line {i} of the cheese sandwich notes, kept short.\n" for i in range(24)))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data}\nmethod: full\nmax_steps: {STEPS}\nbatch_size: 4\n"
        "micro_batch_size: 2\nprecision: fp32\nlearning_rate: 0.001\nsave_steps: 3\nnum_threads: 1\n"
        "logging_steps: 1\nrecipe: textgen\n"
    )
    whole = tmp_path / "whole"
    done = run_two(script, str(config), "--output_dir", str(whole))
    assert "world size: 2 processes" in (whole / "report.md").read_text(), done.stdout[-2000:]
    step3 = whole / "checkpoints" / "step-3"
    engine = json.loads((step3 / "sharded" / "engine.json").read_text())
    assert engine == {"engine": "FSDP", "world_size": 2}
    assert (step3 / "rng-0.pt").is_file() and (step3 / "rng-1.pt").is_file()
    assert not list((whole / "checkpoints").glob(".*")), "a save left its temporary folder"

    resumed = tmp_path / "resumed"  # the run as a kill after step 3 would leave it: checkpoint step-3 only
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(step3, resumed / "checkpoints" / "step-3")
    lines = (whole / "metrics.jsonl").read_text().splitlines()[:3]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    done = run_two(script, str(config), "--output_dir", str(resumed), "--resume_from", "latest")
    assert "resumed from" in done.stdout + done.stderr
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-4)
    a, b = (
        load_file(whole / "model" / "model.safetensors"),
        load_file(resumed / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_a_sharded_checkpoint_refuses_another_engine(tmp_path):
    from tuneforge.errors import ConfigError
    from tuneforge.train.sharded import check_engine

    class Engine:
        def __init__(self, value, processes=2):
            self.distributed_type = type("T", (), {"value": value})()
            self.num_processes = processes

    saved = {"engine": "FSDP", "world_size": 2}
    check_engine(tmp_path, saved, Engine("FSDP", 4))  # DCP re-shards to another world size
    with pytest.raises(ConfigError, match="launch it with the same Accelerate config"):
        check_engine(tmp_path, saved, Engine("MULTI_CPU"))
    with pytest.raises(ConfigError, match="same number of processes"):
        check_engine(tmp_path, {"engine": "DEEPSPEED", "world_size": 2}, Engine("DEEPSPEED", 4))
    with pytest.raises(ConfigError, match="not by a sharded run"):
        check_engine(tmp_path, None, Engine("FSDP"))
    check_engine(tmp_path, None, Engine("NO", 1))
