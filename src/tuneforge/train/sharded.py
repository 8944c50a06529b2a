"""Resumable checkpoints of sharded runs (FSDP, DeepSpeed): every rank writes its shard of the weights and the
optimizer state in the engine's own format, rank 0 the rest, in checkpoint.py's layout.

    checkpoints/step-N/
        trainer_state.json, run_config.json     # as one process writes them (rank 0; the state file last)
        scheduler.pt                             # the learning rate schedule (the same on every rank)
        rng-<rank>.pt                            # each rank's RNG (their dropout masks differ)
        sharded/engine.json                      # {"engine": "FSDP", "world_size": 2}
        sharded/...                              # Accelerate's FSDP files (torch DCP) or DeepSpeed's checkpoint

Accelerate's FSDP helpers and DeepSpeed's engine are called directly instead of `accelerator.save_state`: that also
pickles RNG states that `load_state` reads back with full pickle, while here every tuneforge file is read with
`weights_only` and FSDP's shards are torch DCP files. All ranks write into one hidden folder; rank 0 renames it
once every rank is done, so a killed save never leaves a checkpoint `latest` would pick (ranks share the disk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneforge.errors import ConfigError
from tuneforge.train.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    DamagedCheckpointError,
    _read,
    prune_checkpoints,
    read_rng,
    remove_unfinished,
    train_state,
)
from tuneforge.train.rng import jsonable_rng, restore_rng_state, rng_state
from tuneforge.train.state import TrainState

SHARDS = "sharded"
ENGINE_FILE = "engine.json"
DEEPSPEED_TAG = "engine"  # DeepSpeed's checkpoint sub-folder name


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDS / ENGINE_FILE).is_file()


def save_sharded_checkpoint(
    run_dir: Path, accelerator, model, optimizer, scheduler, state: TrainState, keep=None, config=None
) -> Path:
    """Called on every rank at the same step; returns run_dir/checkpoints/step-<state.step>."""
    import torch

    engine = accelerator.distributed_type.value
    target = run_dir / "checkpoints" / f"step-{state.step}"
    folder = target.with_name(f".{target.name}.tmp-sharded")  # one name every rank knows
    if accelerator.is_main_process:
        remove_unfinished(run_dir)  # a killed save's folder of the same name included
        (folder / SHARDS).mkdir(parents=True)
    accelerator.wait_for_everyone()
    if engine == "FSDP":
        from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

        plugin = accelerator.state.fsdp_plugin
        save_fsdp_model(plugin, accelerator, model, str(folder / SHARDS))
        save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder / SHARDS))
    else:  # DeepSpeed's engine writes its ZeRO partitions of weights and optimizer state itself
        model.save_checkpoint(str(folder / SHARDS), tag=DEEPSPEED_TAG)
    torch.save(jsonable_rng(rng_state()), folder / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        engine_info = {"engine": engine, "world_size": accelerator.num_processes}
        (folder / SHARDS / ENGINE_FILE).write_text(json.dumps(engine_info))
        if config is not None:
            (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1, default=str))
        (folder / STATE_FILE).write_text(json.dumps(state.to_json(), indent=1))  # complete from here on
        os.rename(folder, target)
        if keep:
            prune_checkpoints(run_dir, keep)
    accelerator.wait_for_everyone()  # no rank goes on (or saves again) before the checkpoint is whole
    return target


def read_sharded_checkpoint(path: Path) -> dict:
    """The files of a sharded checkpoint that do not need the engine, read and checked; the shards are read by
    apply_sharded_checkpoint."""
    import torch

    return {
        "state": _read(path, STATE_FILE, train_state),
        "scheduler": _read(path, "scheduler.pt", lambda f: torch.load(f, weights_only=True)),
        "engine": _read(path / SHARDS, ENGINE_FILE, lambda f: json.loads(f.read_text())),
        "config": _read(path, CONFIG_FILE, lambda f: json.loads(f.read_text()))
        if (path / CONFIG_FILE).exists()
        else None,
    }


def check_engine(path: Path, saved: dict | None, accelerator) -> None:
    """A sharded checkpoint resumes under the engine that wrote it; DeepSpeed also needs the same world size
    (its ZeRO partitions are per rank; FSDP's DCP files re-shard to any)."""
    engine = accelerator.distributed_type.value
    if saved is None:
        if engine in ("FSDP", "DEEPSPEED"):
            raise ConfigError(
                f"cannot resume this {engine} run from {path}: it was written by one process or DDP (whole "
                "weights), not by a sharded run; resume it the way it was trained, or start a new run"
            )
        return
    if saved["engine"] != engine:
        raise ConfigError(
            f"cannot resume from {path}: its weights and optimizer state are {saved['engine']} shards of "
            f"{saved['world_size']} processes and this run is {engine}; launch it with the same Accelerate "
            f"config ({saved['engine']}) to resume"
        )
    if engine == "DEEPSPEED" and saved["world_size"] != accelerator.num_processes:
        raise ConfigError(
            f"cannot resume from {path}: DeepSpeed saved it on {saved['world_size']} processes and this run has "
            f"{accelerator.num_processes}; ZeRO partitions load on the same number of processes"
        )


def apply_sharded_checkpoint(path: Path, files: dict, accelerator, model, optimizer, scheduler) -> TrainState:
    """Load every rank's shards, the schedule and this rank's RNG; return the trainer state."""

    if files["engine"]["engine"] == "FSDP":
        from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

        plugin = accelerator.state.fsdp_plugin
        load_fsdp_model(plugin, accelerator, model, str(path / SHARDS))
        load_fsdp_optimizer(plugin, accelerator, optimizer, model, str(path / SHARDS))
    else:
        loaded, _ = model.load_checkpoint(
            str(path / SHARDS), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise DamagedCheckpointError(f"DeepSpeed could not load the shards in {path / SHARDS}")
    scheduler.load_state_dict(files["scheduler"])
    rank_rng = path / f"rng-{accelerator.process_index}.pt"
    if rank_rng.is_file():  # a rank beyond the saved world size (FSDP re-sharded) keeps its seeded RNG
        restore_rng_state(read_rng(path, rank_rng.name))
    return files["state"]
