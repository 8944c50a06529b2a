"""A sharded (FSDP) run checkpoints every rank's shards and resumes from them exactly.

    python -m pytest tests/unit/train/test_sharded_resume.py -q

Accelerate engages FSDP only for accelerator process groups (measured: test_scale.py), but torch's FSDP2
(`fully_shard`) itself runs on CPU processes over gloo. So each rank here starts `tuneforge train` through the
CLI with one change: Accelerate's distributed type is set to FSDP before `prepare`, so Accelerate's real FSDP2
wrapping, torch DCP shard files and tuneforge's save/resume path (train/sharded.py) all run for real.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.train.sharded_runs import LINES, assert_same_weights, left_at_checkpoint, losses

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
    done = subprocess.run(
        torchrun(script, *args),
        capture_output=True,
        text=True,
        timeout=400,
        env={"HF_HUB_OFFLINE": "1", **os.environ},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


needs_torchrun = pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None, reason="no torchrun")


def torchrun(script: Path, *args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), "train", *args]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model_dir) -> dict:
    """The uninterrupted 2-process FSDP run: {script, config, whole}."""
    folder = tmp_path_factory.mktemp("sharded")
    script = folder / "fsdp_train.py"
    script.write_text(FORCED_FSDP)
    data = folder / "lines.txt"
    data.write_text(LINES)
    config = folder / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data}\nmethod: full\nmax_steps: {STEPS}\nbatch_size: 4\n"
        "micro_batch_size: 2\nprecision: fp32\nlearning_rate: 0.001\nsave_steps: 3\nnum_threads: 1\n"
        "logging_steps: 1\nrecipe: textgen\n"
    )
    whole = folder / "whole"
    done = run_two(script, str(config), "--output_dir", str(whole))
    assert "world size: 2 processes" in (whole / "report.md").read_text(), done.stdout[-2000:]
    return {"script": script, "config": config, "whole": whole}


def assert_same_model(a_dir: Path, b_dir: Path) -> None:
    assert_same_weights(a_dir / "model" / "model.safetensors", b_dir / "model" / "model.safetensors")


@needs_torchrun
def test_fsdp_run_resumes_from_its_sharded_checkpoint_as_the_uninterrupted_run(sharded, tmp_path):
    script, config, whole = sharded["script"], sharded["config"], sharded["whole"]
    step3 = whole / "checkpoints" / "step-3"
    engine = json.loads((step3 / "sharded" / "engine.json").read_text())
    assert engine == {"engine": "FSDP", "world_size": 2}
    assert (step3 / "rng-0.pt").is_file() and (step3 / "rng-1.pt").is_file()
    assert not list((whole / "checkpoints").glob(".*")), "a save left its temporary folder"

    resumed = left_at_checkpoint(whole, 3, tmp_path / "resumed")
    done = run_two(script, str(config), "--output_dir", str(resumed), "--resume_from", "latest")
    assert "resumed from" in done.stdout + done.stderr
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-4)
    assert_same_model(whole, resumed)


@needs_torchrun
def test_kill_minus_nine_of_the_launcher_then_resume_ends_as_the_uninterrupted_run(sharded, tmp_path):
    from tuneforge.train.checkpoint import list_checkpoints

    script, config, whole = sharded["script"], sharded["config"], sharded["whole"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "killed.log").open("w") as log:
        launcher = subprocess.Popen(
            torchrun(script, str(config), "--output_dir", str(killed)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not list_checkpoints(killed) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(launcher.pid, signal.SIGKILL)  # torchrun and both ranks at once, as a lost machine would
        launcher.wait()
    assert list_checkpoints(killed) and not (killed / "model").exists(), "the run ended before it was killed"
    done = run_two(script, str(config), "--output_dir", str(killed), "--resume_from", "latest")
    assert "resumed from" in done.stdout + done.stderr
    final, expected = (
        json.loads((run / "checkpoints" / f"step-{STEPS}" / "trainer_state.json").read_text())
        for run in (killed, whole)
    )
    assert final["step"] == STEPS
    assert final["losses"] == pytest.approx(expected["losses"], rel=1e-4)
    assert_same_model(whole, killed)
    assert not list((killed / "checkpoints").glob(".*")), "a killed save's temporary folder was left behind"


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
