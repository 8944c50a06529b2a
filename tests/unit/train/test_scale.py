"""The shipped Accelerate configs (examples/distributed/) are what docs/scale.md says, and Accelerate takes them.

    python -m pytest tests/unit/train/test_scale.py -q

Each config goes through `accelerate launch`'s own parsing (its --config_file path) and environment building,
then into the plugin object the training process would build from that environment. FSDP on CPU processes is
tried for real and skipped with what was measured when this Accelerate/torch does not engage it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "distributed"
BIN = Path(sys.executable).parent

# What docs/scale.md promises of each file.
EXPECTED = {
    "ddp.yaml": {"distributed_type": "MULTI_GPU"},
    "fsdp_offload.yaml": {
        "distributed_type": "FSDP",
        "sharding_strategy": "FULL_SHARD",
        "offload_params": True,
        "state_dict_type": "FULL_STATE_DICT",
        "use_orig_params": True,
    },
    "qlora_fsdp.yaml": {
        "distributed_type": "FSDP",
        "sharding_strategy": "FULL_SHARD",
        "offload_params": False,
        "state_dict_type": "FULL_STATE_DICT",
        "use_orig_params": True,
    },
    "zero2.yaml": {
        "distributed_type": "DEEPSPEED",
        "zero_stage": 2,
        "offload_optimizer_device": "none",
        "offload_param_device": "none",
    },
    "zero3_offload.yaml": {
        "distributed_type": "DEEPSPEED",
        "zero_stage": 3,
        "offload_optimizer_device": "cpu",
        "offload_param_device": "cpu",
        "zero3_save_16bit_model": True,
    },
}


def launch_environment(config_file: Path) -> tuple[object, dict]:
    """(launch args, environment) as `accelerate launch --config_file FILE -m tuneforge train` would set them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "-m", "tuneforge", "train", "run.yaml"]
    )
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(
            defaults.deepspeed_config
        )  # as launch_command
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_every_shipped_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_parses_and_builds_the_plugin_the_docs_describe(name, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    expected = dict(EXPECTED[name])
    loaded = load_config_from_file(str(CONFIGS / name))
    assert loaded.distributed_type.value == expected.pop("distributed_type")
    assert loaded.num_processes == 2 and loaded.mixed_precision == "bf16"
    args, env = launch_environment(CONFIGS / name)
    assert args.num_processes == 2
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if loaded.distributed_type.value == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()
        got = {key: getattr(plugin, key) for key in expected}
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == expected["zero_stage"]
    elif loaded.distributed_type.value == "FSDP":
        from accelerate.utils import FullyShardedDataParallelPlugin

        # sync_module_states asks for the current GPU while the plugin is built; the settings checked here
        # do not depend on it, so on a machine without one it is off for the check.
        if not _has_accelerator():
            monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
            monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
        plugin = FullyShardedDataParallelPlugin()
        got = {
            "sharding_strategy": plugin.sharding_strategy.name,
            "offload_params": plugin.cpu_offload.offload_params,
            "state_dict_type": plugin.state_dict_type.name,
            "use_orig_params": plugin.use_orig_params,
        }
        assert plugin.auto_wrap_policy is not None  # one FSDP unit per decoder layer
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    else:
        got = {}
        assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env
    assert got == expected


ESTIMATED_AS = {
    "ddp.yaml": "ddp",
    "fsdp_offload.yaml": "fsdp_offload",
    "qlora_fsdp.yaml": "fsdp",
    "zero2.yaml": "zero2",
    "zero3_offload.yaml": "zero3_offload",
}


@pytest.mark.parametrize("name", sorted(ESTIMATED_AS))
def test_the_estimate_before_step_1_assumes_the_sharding_each_shipped_config_launches(name):
    from tuneforge.train.estimate import SHARDING
    from tuneforge.train.launch import detect_launch, launched_sharding

    _, env = launch_environment(CONFIGS / name)
    two, one = (detect_launch(n, env, launcher_command=["accelerate", "launch"]) for n in (2, 1))
    assert launched_sharding(two, "cuda", env) == ESTIMATED_AS[name] and ESTIMATED_AS[name] in SHARDING
    assert launched_sharding(two, "cpu", env) == "ddp"  # Accelerate shards only on accelerators
    assert launched_sharding(one, "cuda", env) == "none"


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


FSDP_PROBE = """
import os
os.environ["ACCELERATE_USE_FSDP"] = "true"
from accelerate import Accelerator
accelerator = Accelerator(cpu=True)
if accelerator.is_main_process:
    print("engine:", accelerator.distributed_type.value)
"""


def test_fsdp_on_two_cpu_processes_matches_one_process(tmp_path):
    """Measured first: does Accelerate engage FSDP for 2 gloo CPU processes? If it does, run the comparison."""
    script = tmp_path / "probe.py"
    script.write_text(FSDP_PROBE)
    probe = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    engine = probe.stdout.split("engine:")[-1].strip()
    if engine != "FSDP":
        import accelerate
        import torch

        pytest.skip(
            f"measured: with ACCELERATE_USE_FSDP=true, Accelerate {accelerate.__version__} on torch "
            f"{torch.__version__} runs 2 CPU (gloo) processes as {engine}, not FSDP (it engages FSDP "
            "only for accelerator process groups), so a CPU FSDP run cannot be compared here; "
            "benchmarks/gpu_check.sh runs the FSDP smoke test on GPUs"
        )
    pytest.fail("Accelerate now engages FSDP on CPU: add the 2-process full fine-tune comparison here")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_gathered_state_dict_saves_the_same_folder_as_the_model_itself(method, tiny_model_dir, tmp_path):
    """A sharded run saves from the state dict gathered on rank 0 (Accelerator.get_state_dict); PEFT keeps only
    the adapter's entries of the full dict, so the saved folder equals the one a single process writes."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.train.loop import save_trained

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if method == "lora":
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    own = save_trained(model, tokenizer, tmp_path / "own")
    gathered = save_trained(model, tokenizer, tmp_path / "gathered", state_dict=dict(model.state_dict()))
    (own_file,) = own.glob("*.safetensors")
    own_weights, gathered_weights = load_file(own_file), load_file(gathered / own_file.name)
    assert own_weights.keys() == gathered_weights.keys() and len(own_weights) > 0
    assert all(own_weights[k].equal(gathered_weights[k]) for k in own_weights)
    if method == "lora":
        assert all("lora_" in key for key in own_weights)


def test_qlora_under_an_fsdp_launch_stores_its_4_bit_weights_in_the_compute_dtype(monkeypatch):
    """FSDP shards only parameters of one dtype: launched with FSDP, the 4-bit base's packed weights are stored
    as bf16 bytes (bnb_4bit_quant_storage), as the QLoRA + FSDP recipes of PEFT and Answer.AI do."""
    import torch

    from tuneforge.models.quantization import bnb_config

    pytest.importorskip("bitsandbytes")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert bnb_config(4, compute_precision="bf16").bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert bnb_config(4, compute_precision="bf16").bnb_4bit_quant_storage == torch.bfloat16
