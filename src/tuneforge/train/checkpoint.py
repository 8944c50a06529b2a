"""Checkpoints that a run can resume from exactly: weights, optimizer, scheduler, RNG states, data position.

    save_checkpoint(run_dir, model, optimizer, scheduler, state)   # -> run_dir/checkpoints/step-<state.step>
    path = find_checkpoint(run_dir, "latest")
    state = load_checkpoint(path, model, optimizer, scheduler)     # the TrainState it was saved with

Each checkpoint is written to a temporary folder and renamed when complete, so a crash or `kill -9` while
saving never leaves a checkpoint that `latest` would pick up. Optimizer/RNG tensors use torch.save and are read
back with `weights_only=True` (no arbitrary pickle); weights are safetensors. A resume reads and checks every
file before it changes anything; with `latest` a damaged checkpoint is skipped, saying so, for the one before.
A save refuses NaN/inf weights and turns a full disk into one message naming the folder. docs/reliability.md
lists the tests that prove each of these.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.models.kind import is_peft
from tuneforge.models.saving import save_active_adapter
from tuneforge.paths import write_folder_atomically
from tuneforge.train.rng import jsonable_rng, restore_rng_state, rng_state
from tuneforge.train.state import TrainState

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "run_config.json"  # the RunConfig the checkpoint was trained with
_STEP = re.compile(r"^step-(\d+)$")


def _trainable_state(model) -> dict:
    """Only what training changes: the adapter for LoRA, every weight for full fine-tuning."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model, adapter_name=model.active_adapter)  # named after its folder
    return {k: v for k, v in model.state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    keep: int | None = None,
    config=None,
    name: str | None = None,
) -> Path:
    """Write run_dir/checkpoints/step-<state.step> atomically; refuse weights that are not finite.

    `config` (the RunConfig) is saved beside the state as run_config.json, so a resume can list what changed.
    `name` (e.g. "best") writes checkpoints/<name> instead, replacing the one there only once complete.
    """
    import torch
    from safetensors.torch import save_file

    target = run_dir / "checkpoints" / (name or f"step-{state.step}")
    weights = {k: v.detach().contiguous().cpu() for k, v in _trainable_state(model).items()}
    broken = next(
        (
            name
            for name, tensor in weights.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ),
        None,
    )
    if broken:  # never leave a checkpoint that a resume (or `latest`) would pick up and train on
        raise TuneforgeError(
            f"weight {broken} holds NaN or inf after step {state.step}, so no checkpoint was "
            f"written; lower learning_rate or use precision: fp32"
        )

    def write(folder: Path) -> None:
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
        torch.save(jsonable_rng(rng_state()), folder / "rng.pt")
        if config is not None:
            (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1, default=str))
        (folder / STATE_FILE).write_text(json.dumps(state.to_json(), indent=1))
        if is_peft(model):  # a checkpoint's adapter is usable on its own, in PEFT's format
            save_active_adapter(model, folder / "adapter")

    remove_unfinished(run_dir)
    replaced = target.with_name(f".{target.name}.replaced")  # the previous checkpoints/<name>, until replaced
    if name and target.exists():
        target.rename(replaced)
    try:
        write_folder_atomically(target, write, marker=STATE_FILE)
        shutil.rmtree(replaced, ignore_errors=True)
    except Exception as error:
        if replaced.exists():
            replaced.rename(target)
        if not _is_disk_full(error):
            raise
        earlier = list_checkpoints(run_dir)
        kept = f"; the last complete checkpoint is {earlier[-1]}" if earlier else ""
        free = shutil.disk_usage(target.parent).free
        raise TuneforgeError(
            f"no space left on the disk of {target.parent} ({free / 2**20:.1f} MiB free) while "
            f"writing checkpoint {target.name}; free some space or set save_total_limit, then "
            f"resume with resume_from: latest{kept}"
        ) from None
    if keep:
        prune_checkpoints(run_dir, keep)
    return target


def _is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC/EDQUOT, also when torch or safetensors wrap it in their own error types."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left" in text or "file write failed" in text or "Disk quota" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def remove_unfinished(run_dir: Path) -> None:
    """Remove what a killed save or prune left (.step-N.tmp-*, .step-N.deleting, .best.tmp-*); one process writes
    a run. A killed replacement of checkpoints/best leaves the previous best (.best.replaced): it is put back."""
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        for leftover in folder.glob(".*"):
            kept = folder / leftover.name[1 : -len(".replaced")]
            if leftover.name.endswith(".replaced") and not kept.exists():
                leftover.rename(kept)
            elif leftover.name.startswith((".step-", ".best.")):
                shutil.rmtree(leftover, ignore_errors=True)


class DamagedCheckpointError(ConfigError):
    """A checkpoint file is missing, truncated, corrupted, or holds more than plain tensors."""


def _read(path: Path, name: str, loader):
    file = path / name
    if not file.is_file():
        raise DamagedCheckpointError(
            f"checkpoint file {file} is missing; resume from another checkpoint of "
            f"{path.parent} or start a new run without resume_from"
        )
    try:
        return loader(file)
    except Exception as error:
        import pickle

        reason = (
            "it holds pickled Python objects, not only tensors, and loading them could run code"
            if isinstance(error, pickle.UnpicklingError)
            else (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        )
        raise DamagedCheckpointError(
            f"checkpoint file {file} cannot be read ({reason}); it is damaged or was not "
            "written by tuneforge, so resume from another checkpoint or start a new "
            "run"
        ) from None


def train_state(file: Path) -> TrainState:
    """A trainer_state.json file, checked."""
    saved = json.loads(file.read_text())
    if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
        raise ValueError("not a trainer state (no integer 'step')")
    return TrainState.from_json(saved)


def read_rng(path: Path, name: str = "rng.pt") -> dict:
    """A checkpoint's RNG state file, read with weights_only and checked."""
    import numpy as np
    import torch

    rng = _read(path, name, lambda f: torch.load(f, weights_only=True))
    try:
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
        if not (isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8):
            raise TypeError("torch RNG state is not a byte tensor")
    except Exception:
        raise DamagedCheckpointError(
            f"checkpoint file {path / name} is not a tuneforge RNG state; resume "
            "from another checkpoint or start a new run"
        ) from None
    return rng


def read_checkpoint(path: Path) -> dict:
    """Every file of the checkpoint at `path`, read and checked, before anything of the run is changed.
    A sharded run's checkpoint (train/sharded.py) is read up to its shards, which need the engine."""
    import torch
    from safetensors.torch import load_file

    from tuneforge.train.sharded import is_sharded_checkpoint, read_sharded_checkpoint

    if is_sharded_checkpoint(path):
        return read_sharded_checkpoint(path)

    def tensors(file: Path):
        return torch.load(file, weights_only=True)  # never arbitrary pickle (CVE-2025-32434)

    return {
        "state": _read(path, STATE_FILE, train_state),
        "weights": _read(path, "trainable.safetensors", lambda f: load_file(str(f))),
        "optimizer": _read(path, "optimizer.pt", tensors),
        "scheduler": _read(path, "scheduler.pt", tensors),
        "rng": read_rng(path),
        "config": _read(path, CONFIG_FILE, lambda f: json.loads(f.read_text()))
        if (path / CONFIG_FILE).exists()
        else None,
    }


def apply_checkpoint(path: Path, files: dict, model, optimizer, scheduler) -> TrainState:
    """Put the read checkpoint into the model, optimizer, scheduler and RNG; return its trainer state."""
    _put_weights(path, files["weights"], model)
    try:
        optimizer.load_state_dict(files["optimizer"])
        scheduler.load_state_dict(files["scheduler"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"checkpoint {path}'s optimizer state does not fit this run's optimizer ({error}); "
            "resume with the optimizer settings it was saved with"
        ) from None
    restore_rng_state(files["rng"])
    return files["state"]


def _put_weights(path: Path, weights: dict, model) -> None:
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights, adapter_name=model.active_adapter)
    else:
        missing = model.load_state_dict(weights, strict=False).missing_keys
        tied = {n for n in missing if n.endswith("lm_head.weight")}
        if set(missing) - tied:
            raise ConfigError(f"checkpoint {path} lacks weights {sorted(set(missing) - tied)[:3]}")


def load_trainable_weights(path: Path, model) -> None:
    """Put only the trainable weights of the checkpoint at `path` into `model` (load_best_at_end)."""
    from safetensors.torch import load_file

    _put_weights(path, _read(path, "trainable.safetensors", lambda f: load_file(str(f))), model)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG from `path`; return the trainer state."""
    return apply_checkpoint(path, read_checkpoint(path), model, optimizer, scheduler)


def run_identity(config, data) -> dict:
    """What a checkpoint must match to be resumed: model, method, rank and the data's fingerprint."""
    cache_dir = getattr(data, "cache_dir", None)  # the prepared-data cache is keyed by the data's fingerprint
    fingerprint = (
        cache_dir.name
        if cache_dir
        else f"{len(data.train)} examples, {data.counts.get('train_tokens')} tokens"
    )
    return {
        "model": config.model,
        "method": config.method,
        "rank": config.rank,
        "data_fingerprint": fingerprint,
    }


def check_identity(checkpoint: Path, current: dict) -> None:
    """Refuse to resume from a checkpoint of another model, method or rank (the weights would not fit)."""
    saved = json.loads((checkpoint / STATE_FILE).read_text()).get("identity", {})
    for key, value in current.items():
        if key != "data_fingerprint" and saved.get(key) != value:
            raise ConfigError(
                f"cannot resume from {checkpoint}: it was trained with {key} {saved.get(key)!r} but "
                f"this run has {value!r}; use the same {key} or start a new run without resume_from"
            )


# Settings a resumed run may change: they decide when to stop, log or save, and how a step is split, but not
# which examples each step trains on nor how the optimizer moves. Every other change refuses to resume.
NOT_COMPARED = {"output_dir", "resume_from", "allow_resume_mismatch", "copy_parameters_from"}  # per run
RESUMABLE_CHANGES = {
    "data",
    "max_steps",
    "epochs",
    "micro_batch_size",
    "gradient_checkpointing",
    "compile",
    "lean_layers",
    "early_stopping_patience",
    "stop_at_loss",
    "max_time",  # the schedule is re-planned for the new length (train/schedule.py)
    "keep_best",
    "load_best_at_end",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "eval_steps",
    "report_to",
    "num_threads",
    "sample_prompts",
    "compare_at_save",
    "device",
    "num_proc",
    "save_removed",
    "trust_remote_code",
}


def resume_differences(files: dict, config, identity: dict) -> list[tuple[str, object, object, bool]]:
    """(key, checkpoint's value, this run's value, refuses) for every setting and the data that changed."""
    differences = []
    saved_fingerprint = files["state"].identity.get("data_fingerprint")
    if saved_fingerprint != identity.get("data_fingerprint"):
        differences.append(
            ("data (its content or preparation)", saved_fingerprint, identity.get("data_fingerprint"), True)
        )
    saved = files.get("config") or {}
    current = json.loads(json.dumps(config.to_dict(), default=str))
    # recipe auto chooses the warm-up from the run's length, which a resume may change; a resumed run follows
    # its checkpoint's schedule, warm-up included (train/setup.py), so that new choice changes nothing
    rechosen = {line.split(" ", 1)[0] for line in getattr(config, "chosen", [])} & {"warmup_ratio"}
    for key in sorted(set(saved) & set(current) - NOT_COMPARED - rechosen):
        if saved[key] != current[key]:
            differences.append((key, saved[key], current[key], key not in RESUMABLE_CHANGES))
    return differences


def check_started_from(checkpoint: Path, saved_config: dict | None, config) -> None:
    """Refuse a resume whose from_adapter is not the one the run started from: the weights would come from
    elsewhere (never allowed, mismatch or not); checked before the rank, which then differs too."""
    old, new = (saved_config or {}).get("from_adapter"), config.from_adapter
    if saved_config is None or old == new:
        return
    raise ConfigError(
        f"cannot resume from {checkpoint}: "
        + (
            f"the run started from the adapter in {old}; give from_adapter {old} again, or resume with the "
            f"run's own config.yaml (tuneforge train {checkpoint.parents[1] / 'config.yaml'} --resume_from latest)"
            if old
            else f"it trained its own adapter, so from_adapter {new} does not go with resume_from; to start a "
            "new run from that adapter, give from_adapter alone and another output_dir"
        )
    )


def check_resume_config(checkpoint: Path, files: dict, config, identity: dict, log) -> None:
    """List every change since the checkpoint; refuse those that alter data order or the optimizer unless
    allow_resume_mismatch is set."""
    check_started_from(checkpoint, files.get("config"), config)
    differences = resume_differences(files, config, identity)
    if not differences:
        return
    step = files["state"].step
    if any(key == "max_steps" for key, *_ in differences) and config.max_steps and config.max_steps <= step:
        raise ConfigError(
            f"cannot resume from {checkpoint} with max_steps {config.max_steps}: it is saved at step {step} "
            "already, so the run would end at once; give a later step"
        )
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new, _ in differences)
    refusing = [key for key, _, _, refuses in differences if refuses]
    if refusing and not config.allow_resume_mismatch:
        raise ConfigError(
            f"cannot resume from {checkpoint}: changed since it was saved: {listed}; "
            f"{', '.join(refusing)} {'change' if len(refusing) > 1 else 'changes'} what the run trains or how "
            f"(data, weights, optimizer), so put {'them' if len(refusing) > 1 else 'it'} back, "
            "or pass --allow_resume_mismatch true to resume anyway"
        )
    log(f"resuming from {checkpoint} with changed settings: {listed}")


def refuse_resume_early(run_dir: Path, config, identity: dict) -> None:
    """The resume's refusals, before the run writes anything to its folder (a refused resume must not leave its
    settings in the run's config.yaml): no checkpoint to resume, or one of another model, rank or settings.
    Reads only the checkpoint's two small files; with `latest`, a damaged newest checkpoint is passed over for
    the one before, as the loop does (which then moves it aside, says so, and reads the whole checkpoint)."""
    if config.resume_from == "latest":  # find_checkpoint raises when there is none
        candidates = list(reversed(list_checkpoints(run_dir))) or [find_checkpoint(run_dir, "latest")]
    else:
        candidates = [find_checkpoint(run_dir, config.resume_from)]  # raises for a path that is not one
    for path in candidates:
        try:
            saved_config = path / CONFIG_FILE
            files = {
                "state": _read(path, STATE_FILE, train_state),
                "config": json.loads(saved_config.read_text()) if saved_config.exists() else None,
            }
        except (DamagedCheckpointError, OSError, ValueError):
            continue
        check_started_from(path, files["config"], config)
        check_identity(path, identity)
        check_resume_config(path, files, config, identity, log=lambda line: None)
        return


def _step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without its state file is not complete)."""
    return [p for _, p in _step_folders(run_dir) if (p / STATE_FILE).is_file()]


# Everything a run writes into its folder (what a tool that replaces its own earlier run clears).
RUN_OUTPUTS = (
    "checkpoints",
    "adapter",
    "model",
    "report.md",
    "config.yaml",
    "metrics.jsonl",
    "loss_curve.png",
)


def remove_run_outputs(run_dir: Path) -> None:
    """Delete what a run wrote into `run_dir` (RUN_OUTPUTS), leaving anything else there."""
    for name in RUN_OUTPUTS:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def finished_results(run_dir: Path) -> list[str]:
    """What a finished run left in `run_dir` (its report, trained adapter or model), by name."""
    named = [run_dir / "report.md", run_dir / "adapter", run_dir / "model"]
    return [
        p.name + ("/" if p.is_dir() else "")
        for p in named
        if p.is_file() or (p.is_dir() and any(p.iterdir()))
    ]


def refuse_earlier_run(run_dir: Path) -> None:
    """ConfigError when a fresh run into `run_dir` would mix with or replace an earlier run there: its step
    checkpoints (resume_from: latest would pick up either), or a finished run's report, adapter or model."""
    earlier = list_checkpoints(run_dir)
    if earlier:
        raise ConfigError(
            f"{run_dir} holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}); continue "
            f"it with --resume_from latest, or train into another output_dir"
        )
    results = finished_results(run_dir)
    if results:  # its adapter and report would be replaced, or a full run's model/ left beside a new adapter/
        raise ConfigError(
            f"{run_dir} holds a finished run ({', '.join(results)}), which this run would replace; train into "
            "another output_dir, or delete that folder first to train there again"
        )


def find_checkpoint(run_dir: Path, resume_from: str) -> Path:
    """`latest` → the newest complete checkpoint of the run; otherwise a checkpoint folder path."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            return checkpoints[-1]
        if not run_dir.is_dir():
            raise ConfigError(
                f"resume_from: latest, but the run folder {run_dir} does not exist; check output_dir (or the "
                "config file's folder), or start without resume_from"
            )
        finished = finished_results(run_dir)
        if finished:
            further = (
                f"; to train its adapter further, start a new run into another output_dir with from_adapter: "
                f"{run_dir} (--from_adapter {run_dir})"
                if "adapter/" in finished
                else f"; to train its model further, start a new run with model: {run_dir / 'model'}"
                if "model/" in finished
                else ""
            )
            raise ConfigError(
                f"resume_from: latest, but the run in {run_dir} finished ({', '.join(finished)}) and kept no "
                f"step checkpoint to resume from (save_steps keeps them){further}"
            )
        raise ConfigError(
            f"resume_from: latest, but {run_dir}/checkpoints holds no complete checkpoint; "
            "set save_steps so the run writes some, or start without resume_from"
        )
    path = Path(resume_from)
    if not path.exists():
        raise ConfigError(
            f"resume_from '{resume_from}' does not exist; use 'latest' or a folder like "
            f"{run_dir}/checkpoints/step-100"
        )
    if not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"resume_from '{resume_from}' is not a complete checkpoint folder ({path / STATE_FILE} "
            "is missing); "
            f"use 'latest' or a folder like {run_dir}/checkpoints/step-100"
        )
    return path


def open_resume_checkpoint(run_dir: Path, resume_from: str, log) -> tuple[Path, dict]:
    """The checkpoint to resume from and its files, read and checked.

    With `latest`, a damaged newest checkpoint is skipped — and `log` says so — for the one before it; a
    checkpoint named by its folder is used or refused, never swapped for another.
    """
    if resume_from != "latest":
        path = find_checkpoint(run_dir, resume_from)
        return path, read_checkpoint(path)
    for _, path in reversed(_step_folders(run_dir)):
        try:
            if not (path / STATE_FILE).is_file():
                raise DamagedCheckpointError(f"checkpoint file {path / STATE_FILE} is missing")
            return path, read_checkpoint(path)
        except DamagedCheckpointError as error:
            aside = path.with_name(f"{path.name}.damaged")  # kept for a look, never picked again
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            log(
                f"skipping checkpoint {path.name} (moved to {aside.name}): {error}; falling back to the "
                "checkpoint before it"
            )
    find_checkpoint(run_dir, "latest")  # raises: no complete checkpoint
    raise DamagedCheckpointError(
        f"every checkpoint in {run_dir / 'checkpoints'} is damaged; start a new run without resume_from"
    )


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (save_total_limit); each is renamed away first, so one half-deleted
    by a crash is never listed as complete."""
    for old in list_checkpoints(run_dir)[:-keep]:
        doomed = old.with_name(f".{old.name}.deleting")
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
