"""How many processes a run got, how many its launcher was asked for, and which launcher started it.

    from accelerate import PartialState
    launch = detect_launch(PartialState().num_processes)
    print(launch.describe())         # "2 processes (torchrun), rank 0 writes the run folder"
    if launch.shortfall(): warnings.warn(launch.shortfall())

Measured with accelerate 1.15 on a machine without GPUs: `accelerate launch --num_processes 2` (with or without
`--cpu`) quietly starts ONE process unless mpirun is set up; it sets MASTER_ADDR/MASTER_PORT but no WORLD_SIZE,
and no variable carries the count asked for. So the count asked is read from, in order: TUNEFORGE_NPROC (set by
`tuneforge train --nproc N`), the launcher's own command line (`--num_processes N`, `--nproc_per_node N` x
`--nnodes`), then WORLD_SIZE (torchrun and accelerate's multi-GPU path set it to the count they started).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ASKED_ENV = "TUNEFORGE_NPROC"  # the processes a tuneforge front end asked its launcher for


@dataclass
class Launch:
    world_size: int  # processes that came up and train together
    asked: int | None  # processes the launcher was asked for; None when nothing says
    launcher: str  # "torchrun", "accelerate launch", "mpirun" or "python" (no launcher)
    engine_asked: str = ""  # "FSDP" or "DEEPSPEED" when the launch asked Accelerate for a sharding engine
    engine: str = ""  # what Accelerate ran (its DistributedType: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED)

    def shortfall(self) -> str | None:
        """A warning when fewer processes came up than were asked for, else None."""
        if self.engine and self.engine_asked and self.engine != self.engine_asked:
            return (
                f"asked Accelerate for {self.engine_asked} but it ran {self.engine} (Accelerate shards only "
                "on accelerators; on CPU processes it falls back to plain data parallel)"
            )
        if self.asked is None or self.asked <= self.world_size:
            return None
        why = (
            " (accelerate launch without GPUs starts one process unless mpirun is set up; use torchrun "
            f"--nproc_per_node {self.asked} -m tuneforge train ... instead)"
            if self.launcher == "accelerate launch"
            else ""
        )
        return (
            f"asked for {self.asked} processes but {self.world_size} came up{why}; the run trains on "
            f"{self.world_size}, with the same batch, so each step takes longer"
        )

    def describe(self) -> str:
        asked = f", asked for {self.asked}" if self.asked not in (None, self.world_size) else ""
        noun = "process" if self.world_size == 1 else "processes"
        engine = f", engine {self.engine}" if self.engine not in ("", "NO") else ""  # NO: a plain run
        return f"world size: {self.world_size} {noun} ({self.launcher}{asked}{engine})"

    def describe_batch(self, examples_per_step: int, micro_batch_size: int) -> str:
        """The effective batch: micro batch x accumulation x processes."""
        from tuneforge.train.batches import describe_batch

        return describe_batch(examples_per_step, micro_batch_size, self.world_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def note_in_config(self, config_path) -> None:
        """Put the launch at the top of a saved config.yaml as comments, so the file still loads as a config."""
        from pathlib import Path

        path = Path(config_path)
        note = f"# {self.describe()}\n# launch: {json.dumps(self.to_dict())}\n"
        path.write_text(note + path.read_text())


def launch_in_config(config_path) -> Launch | None:
    """The launch a run's config.yaml records (note_in_config), or None."""
    from pathlib import Path

    for line in Path(config_path).read_text().splitlines():
        if line.startswith("# launch: "):
            return Launch(**json.loads(line.removeprefix("# launch: ")))
    return None


def detect_launch(
    world_size: int, environ: dict | None = None, launcher_command: list[str] | None = None
) -> Launch:
    """The launch of this process; `launcher_command` defaults to the parent process's command line."""
    env = os.environ if environ is None else environ
    if launcher_command is None:
        launcher_command = _parent_command()
    launcher = _launcher_name(env, launcher_command)
    asked = _int(env.get(ASKED_ENV)) or _asked_on_command_line(launcher, launcher_command)
    if asked is None and launcher in ("torchrun", "accelerate launch"):
        asked = _int(env.get("WORLD_SIZE"))
    engine_asked = next(
        (
            name
            for name in ("FSDP", "DEEPSPEED")
            if env.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"
        ),
        "",
    )
    return Launch(world_size=world_size, asked=asked, launcher=launcher, engine_asked=engine_asked)


def launched_sharding(launch: Launch, device: str, environ: dict | None = None) -> str:
    """The memory split the estimate before step 1 assumes (a key of train/estimate.py's SHARDING): the engine
    the launch asked for, with the stage and offload `accelerate launch` sets for its config file in the
    environment; Accelerate shards only on accelerators."""
    env = os.environ if environ is None else environ
    if launch.world_size <= 1:
        return "none"
    if device == "cpu":
        return "ddp"
    if launch.engine_asked == "FSDP":
        return "fsdp_offload" if env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true" else "fsdp"
    if launch.engine_asked == "DEEPSPEED":
        stage = _int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")) or 0
        offload = any(
            env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{part}_DEVICE", "none") not in ("none", "")
            for part in ("PARAM", "OPTIMIZER")
        )
        if stage == 3:
            return "zero3_offload" if offload else "zero3"
        # stage 1 shards only optimizer states: DDP's estimate errs high
        return "zero2" if stage == 2 else "ddp"
    return "ddp"


def _launcher_name(env, command: list[str]) -> str:
    words = " ".join(os.path.basename(part) for part in command[:3])
    if (
        "accelerate" in words or "ACCELERATE_MIXED_PRECISION" in env
    ):  # its multi-GPU path runs torchrun inside
        return "accelerate launch"
    if "TORCHELASTIC_RUN_ID" in env or "torchrun" in words or "torch.distributed.run" in words:
        return "torchrun"
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env:
        return "mpirun"
    return "python"


def _asked_on_command_line(launcher: str, command: list[str]) -> int | None:
    if launcher == "accelerate launch":
        asked = _flag(command, "num_processes")
        config_file = _flag_text(command, "config_file")
        if asked is None and config_file:
            asked = _num_processes_in(config_file)
        return asked
    if launcher == "torchrun":
        per_node = _flag(command, "nproc_per_node")
        nodes = _flag_text(command, "nnodes") or "1"
        nodes_max = _int(nodes.split(":")[-1]) or 1  # elastic "min:max": the most it may start
        return per_node * nodes_max if per_node else None
    return None


def _flag_text(command: list[str], name: str) -> str | None:
    """The value of --name / --name=V (hyphens or underscores) before the training script's own arguments."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    start = next(
        (
            i + 1
            for i, part in enumerate(command[:3])
            if any(word in part for word in ("accelerate", "torchrun", "torch.distributed.run"))
        ),
        0,
    )
    for i, part in enumerate(command[start:], start):
        if part in ("-m", "--module") or part.endswith(".py"):
            break  # from here on: the training script and its own arguments
        key, _, value = part.partition("=")
        if key in spellings:
            return value or (command[i + 1] if i + 1 < len(command) else None)
    return None


def _flag(command: list[str], name: str) -> int | None:
    return _int(_flag_text(command, name))


def _num_processes_in(config_file: str) -> int | None:
    import yaml

    try:
        with open(config_file) as handle:
            return _int((yaml.safe_load(handle) or {}).get("num_processes"))
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _parent_command() -> list[str]:
    try:
        import psutil

        return psutil.Process().parent().cmdline()
    except Exception:  # no psutil, no parent, or not ours to read: the environment still speaks
        return []


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
