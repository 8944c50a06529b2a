"""Checkpoints that a run can resume from exactly: weights, optimizer, scheduler, RNG states, data position.

    save_checkpoint(run_dir, step, model, optimizer, scheduler, state)   # -> run_dir/checkpoints/step-N
    path = find_checkpoint(run_dir, "latest")

Each checkpoint is written to a temporary folder and renamed when complete, so a crash or `kill -9` while
saving never leaves a checkpoint that `latest` would pick up. Optimizer/RNG tensors use torch.save and are read
back with `weights_only=True` (no arbitrary pickle); weights are safetensors.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from tuneforge.errors import ConfigError
from tuneforge.models.loading import write_folder_atomically

STATE_FILE = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_state(model) -> dict:
    """Only what training changes: the adapter for LoRA, every weight for full fine-tuning."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return {k: v for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int | None = None
                    ) -> Path:
    import torch
    from safetensors.torch import save_file

    target = run_dir / "checkpoints" / f"step-{step}"

    def write(folder: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in _trainable_state(model).items()}
        # tied weights (embed_tokens / lm_head) share storage; safetensors wants each stored once
        seen, unique = {}, {}
        for name, tensor in weights.items():
            key = (tensor.data_ptr(), tensor.shape)
            if key not in seen:
                seen[key] = name
                unique[name] = tensor.clone()
        save_file(unique, str(folder / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save(_jsonable_rng(rng_state()), folder / "rng.pt")
        (folder / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
        if hasattr(model, "peft_config"):  # a checkpoint's adapter is usable on its own, in PEFT's format
            model.save_pretrained(folder / "adapter")

    write_folder_atomically(target, write, marker=STATE_FILE)
    if keep:
        prune_checkpoints(run_dir, keep)
    return target


def _jsonable_rng(state: dict) -> dict:
    # numpy's state tuple holds an ndarray; torch.save(weights_only) accepts tensors, not ndarrays
    import torch

    kind, keys, pos, has_gauss, cached = state["numpy"]
    state = dict(state)
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; return the trainer state."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        missing = model.load_state_dict(weights, strict=False).missing_keys
        tied = {n for n in missing if n.endswith("lm_head.weight")}
        if set(missing) - tied:
            raise ConfigError(f"checkpoint {path} lacks weights {sorted(set(missing) - tied)[:3]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    rng["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    restore_rng_state(rng)
    return json.loads((path / STATE_FILE).read_text())


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without its state file is not complete)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(run_dir: Path, resume_from: str) -> Path:
    """`latest` → the newest complete checkpoint of the run; otherwise a checkpoint folder path."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ConfigError(f"resume_from: latest, but {run_dir}/checkpoints holds no complete checkpoint; "
                              "set save_steps so the run writes some, or start without resume_from")
        return checkpoints[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from '{resume_from}' is not a complete checkpoint folder (no {STATE_FILE}); "
                          f"use 'latest' or a folder like {run_dir}/checkpoints/step-100")
    return path


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (save_total_limit)."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
