"""DeepSpeed ZeRO-2 and ZeRO-3 with offload through the shipped Accelerate configs, on 2 CPU processes: the same
run as one process, and resumable.

    python -m pytest tests/unit/train/test_deepspeed_cpu.py -q

DeepSpeed has a CPU accelerator (gloo collectives), but Accelerate engages DeepSpeed only when the Accelerator
is not made with `cpu=True`, which tuneforge passes on a machine without a GPU. So each rank here starts
`tuneforge train` through the CLI with that one flag cleared; `accelerate launch --config_file
examples/distributed/zero2.yaml` (or zero3_offload.yaml) then runs DeepSpeed's real engine, its ZeRO optimizer
(ZeRO-3: parameters partitioned and gathered in module hooks, optimizer states and parameters in CPU memory) and
its checkpoint files.
"""

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.unit.train.sharded_runs import LINES, assert_same_weights, left_at_checkpoint, losses

pytestmark = pytest.mark.skipif(
    find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install 'tuneforge[deepspeed]')"
)

BIN = Path(sys.executable).parent
CONFIGS = Path(__file__).parents[3] / "examples" / "distributed"
STEPS = 4
DEEPSPEED_ON_CPU = """
import sys
import accelerate

class Accelerator(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "cpu": False})  # DeepSpeed's CPU accelerator takes over

accelerate.Accelerator = Accelerator
from tuneforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(command: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def deepspeed(config_file: str, script: Path, *args: str) -> str:
    # the shipped config as written, in fp32 here so the comparison can be exact
    launch = [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / config_file)]
    return run([*launch, "--mixed_precision", "no", str(script), "train", *args])


def assert_same_adapter(a_run: Path, b_run: Path) -> None:
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert_same_weights(a_run / adapter, b_run / adapter)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir) -> dict:
    folder = tmp_path_factory.mktemp("deepspeed")
    script = folder / "deepspeed_on_cpu.py"
    script.write_text(DEEPSPEED_ON_CPU)
    data = folder / "lines.txt"
    data.write_text(LINES)
    config = folder / "run.yaml"
    # micro batch 1: each rank accumulates 2 micro batches a step, so the engine must step on the last only
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {data}\nmethod: lora\nmax_steps: {STEPS}\nbatch_size: 4\n"
        "micro_batch_size: 1\nprecision: fp32\nlearning_rate: 0.01\nsave_steps: 2\nnum_threads: 1\n"
        "logging_steps: 1\nrecipe: textgen\nlora_dropout: 0\n"  # each rank draws its own dropout masks
    )
    single = folder / "one"
    run([sys.executable, "-m", "tuneforge", "train", str(config), "--output_dir", str(single)])
    return {"script": script, "config": config, "one": single}


@pytest.fixture(scope="module", params=["zero2.yaml", "zero3_offload.yaml"])
def runs(request, one_process) -> dict:
    sharded = one_process["one"].with_name(request.param.removesuffix(".yaml"))
    log = deepspeed(
        request.param, one_process["script"], str(one_process["config"]), "--output_dir", str(sharded)
    )
    return {**one_process, "config_file": request.param, "sharded": sharded, "log": log}


def test_deepspeed_on_two_processes_trains_as_one_process_does(runs):
    report = (runs["sharded"] / "report.md").read_text()
    assert "world size: 2 processes" in report and "engine DEEPSPEED" in report, runs["log"][-2000:]
    assert losses(runs["sharded"]) == pytest.approx(losses(runs["one"]), rel=1e-4)
    assert losses(runs["one"])[-1] < losses(runs["one"])[0]
    assert_same_adapter(runs["sharded"], runs["one"])  # gathered to the usual PEFT folder


# ZeRO-3 with offload only: its checkpoint holds what ZeRO-2's does (partitioned optimizer states) and also
# partitioned parameters and CPU-offloaded states (one 2-process resume less: ~20 s of CI)
@pytest.mark.parametrize("runs", ["zero3_offload.yaml"], indirect=True)
def test_deepspeed_resumes_from_its_checkpoint_as_the_uninterrupted_run(runs, tmp_path):
    step2 = runs["sharded"] / "checkpoints" / "step-2"
    assert json.loads((step2 / "sharded" / "engine.json").read_text()) == {
        "engine": "DEEPSPEED",
        "world_size": 2,
    }
    resumed = left_at_checkpoint(runs["sharded"], 2, tmp_path / "resumed")
    config = str(runs["config"])
    log = deepspeed(
        runs["config_file"], runs["script"], config, "--output_dir", str(resumed), "--resume_from", "latest"
    )
    assert "resumed from" in log
    assert losses(resumed) == pytest.approx(losses(runs["sharded"]), rel=1e-4)
    assert_same_adapter(resumed, runs["sharded"])


UNWRAP_AND_SAVE_WITHOUT_DEEPSPEED = """
import sys
from pathlib import Path
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer
from tuneforge.train.loop import save_trained
from tuneforge.train.setup import unwrap_model

accelerator = Accelerator(cpu=True, mixed_precision="bf16")
model = accelerator.prepare(torch.nn.Linear(4, 4))
assert "_original_forward" in model.__dict__  # Accelerate's autocast wrapper
assert unwrap_model(accelerator, model) is model
assert unwrap_model(accelerator, model, keep_fp32_wrapper=False) is model
assert "_original_forward" not in model.__dict__  # taken off again, as accelerator.unwrap_model does
tiny = sys.argv[1]
saved = save_trained(AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny), Path(sys.argv[2]))
assert (saved / "model.safetensors").is_file()  # a full model, saved by transformers' save_pretrained
from peft import LoraConfig, get_peft_model
from tuneforge.models.export import merge_adapter
from tuneforge.models.saving import save_pretrained
adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), LoraConfig(r=2, target_modules=["q_proj"]))
save_pretrained(adapter, Path(sys.argv[2]) / "adapter")  # as a checkpoint and LLM.save write adapters
merged = merge_adapter(tiny, Path(sys.argv[2]) / "adapter", Path(sys.argv[2]) / "merged")  # the merge verb
assert (merged / "model.safetensors").is_file()
print("deepspeed imported:", "deepspeed" in sys.modules)
"""


def test_a_run_deepspeed_does_not_drive_never_imports_it(tiny_model_dir, tmp_path):
    """Accelerate's unwrap_model, also called by transformers' and PEFT's save_pretrained, imports DeepSpeed
    whenever it is installed (1.8 s and a log line a run, a checkpoint, a merge)."""
    script = [sys.executable, "-c", UNWRAP_AND_SAVE_WITHOUT_DEEPSPEED, str(tiny_model_dir), str(tmp_path)]
    done = subprocess.run(script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "deepspeed imported: False" in done.stdout
    assert "Setting accelerator to CPU" not in done.stderr
