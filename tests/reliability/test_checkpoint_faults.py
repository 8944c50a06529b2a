"""A checkpoint write that crashes, a full disk and a damaged checkpoint never cost more than the last save.

Injected: an OSError before each of a save's 7 writes in turn; a disk that fills up (a 24 MiB tmpfs); five
kinds of damage to the newest checkpoint (truncated or flipped safetensors, an empty optimizer file, a missing
state file, a crafted pickle). What must hold: earlier checkpoints byte-identical, `latest` the newest complete
one, one error naming the file, and a resume that continues.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import tuneforge as tf
from tests.reliability.conftest import RUN, cli, folder_digest, metrics, write_config
from tuneforge.errors import TuneforgeError
from tuneforge.train.checkpoint import (
    DamagedCheckpointError,
    find_checkpoint,
    list_checkpoints,
    read_checkpoint,
)

SETTINGS = {k: v for k, v in RUN.items() if k not in ("device",)}


def train(model_dir, data, run_dir, **keys):
    return tf.load(str(model_dir), precision="fp32").train(
        data, output_dir=str(run_dir), show_progress=False, **{**SETTINGS, **keys}
    )


def test_a_crash_at_each_write_of_a_save_leaves_the_previous_checkpoints_untouched(
    tiny_model_dir, lines_file, tmp_path, monkeypatch
):
    import peft
    import safetensors.torch

    run_dir = tmp_path / "run"
    train(tiny_model_dir, lines_file, run_dir, max_steps=2)
    before = {p.name: folder_digest(p) for p in list_checkpoints(run_dir)}
    writes = []  # the save's writes in order: weights, optimizer, scheduler, rng, run config, state, adapter

    def counted(real, crash_at):
        def write(*args, **kwargs):
            if len(writes) == crash_at:
                raise OSError(f"injected crash before write {crash_at}")
            writes.append(real.__name__)
            return real(*args, **kwargs)

        return write

    real = (safetensors.torch.save_file, torch.save, Path.write_text, peft.PeftModel.save_pretrained)
    for crash_at in range(7):
        writes.clear()
        monkeypatch.setattr(safetensors.torch, "save_file", counted(real[0], crash_at))
        monkeypatch.setattr(torch, "save", counted(real[1], crash_at))
        monkeypatch.setattr(Path, "write_text", counted(real[2], crash_at))
        monkeypatch.setattr(peft.PeftModel, "save_pretrained", counted(real[3], crash_at))
        monkeypatch.setattr("tuneforge.train.loop.save_trained", lambda *a: None)  # only checkpoints count
        from tuneforge.train import checkpoint

        real_save = checkpoint.save_checkpoint

        def save_counting_only_inside(*args, real_save=real_save, **kwargs):
            writes.clear()
            return real_save(*args, **kwargs)

        monkeypatch.setattr("tuneforge.train.loop.save_checkpoint", save_counting_only_inside)
        with pytest.raises(OSError, match=f"before write {crash_at}"):
            train(tiny_model_dir, lines_file, run_dir, max_steps=3, resume_from="latest")
        monkeypatch.undo()
        assert len(writes) == crash_at
        assert [p.name for p in list_checkpoints(run_dir)] == ["step-1", "step-2"], crash_at
        assert find_checkpoint(run_dir, "latest").name == "step-2"
        assert {p.name: folder_digest(p) for p in list_checkpoints(run_dir)} == before, crash_at
        assert not list((run_dir / "checkpoints").glob(".step-*")), crash_at  # the partial folder is gone
    run = train(tiny_model_dir, lines_file, run_dir, max_steps=3, resume_from="latest")
    assert run.resumed_from.name == "step-2" and run.steps == 3
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3]  # the crashed attempts' step 3 is not kept


def test_a_full_disk_at_a_save_gives_one_message_and_the_run_resumes_after_freeing_space(
    tiny_model_dir, lines_file, tmp_path, capsys
):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        run_dir = (
            disk / "run"
        )  # full fine-tuning: ~19 MB a checkpoint (weights + AdamW), so step 2 cannot fit
        config = write_config(
            tmp_path / "run.yaml",
            tiny_model_dir,
            lines_file,
            run_dir,
            method="full",
            learning_rate=1e-3,
            max_steps=3,
        )
        assert cli("train", config) == 2
        error = capsys.readouterr().err
        assert "no space left" in error and str(run_dir / "checkpoints") in error and "step-1" in error, error
        assert [p.name for p in list_checkpoints(run_dir)] == ["step-1"]
        read_checkpoint(run_dir / "checkpoints" / "step-1")  # intact
        subprocess.run(["mount", "-o", "remount,size=128m", str(disk)], check=True)
        assert cli("train", config, "--resume_from", "latest") == 0
        assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def truncate_weights(folder: Path) -> Path:
    file = folder / "trainable.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return file


def flip_header(folder: Path) -> Path:
    file = folder / "trainable.safetensors"
    data = bytearray(file.read_bytes())
    for i in range(8, 40):  # inside the JSON header that follows its 8-byte length
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))
    return file


def empty_optimizer(folder: Path) -> Path:
    (folder / "optimizer.pt").write_bytes(b"")
    return folder / "optimizer.pt"


def remove_state(folder: Path) -> Path:
    (folder / "trainer_state.json").unlink()
    return folder / "trainer_state.json"


class Marker:
    """Unpickling this creates the file `path`: how a crafted pickle would run code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def crafted_pickle(name: str):
    def craft(folder: Path) -> Path:
        torch.save({"state": Marker(folder.parent.parent / "PWNED"), "param_groups": []}, folder / name)
        return folder / name

    craft.__name__ = f"crafted_{name}"
    return craft


@pytest.fixture(scope="module")
def three_checkpoints(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "lines.txt"
    data.write_text("\n".join(f"line {i} about bread and cheese" for i in range(16)) + "\n")
    run_dir = tmp_path_factory.mktemp("three") / "run"
    train(tiny_model_dir, data, run_dir, max_steps=3)
    return run_dir, data


@pytest.mark.parametrize(
    "damage",
    [
        truncate_weights,
        flip_header,
        empty_optimizer,
        remove_state,
        crafted_pickle("optimizer.pt"),
        crafted_pickle("rng.pt"),
    ],
    ids=lambda d: d.__name__,
)
def test_a_damaged_checkpoint_is_named_or_skipped_for_the_one_before(
    three_checkpoints, tiny_model_dir, tmp_path, damage
):
    original, data = three_checkpoints
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    step_2 = folder_digest(run_dir / "checkpoints" / "step-2")
    file = damage(run_dir / "checkpoints" / "step-3")
    with pytest.raises(TuneforgeError) as named:  # named by its folder: refused, naming the file
        train(tiny_model_dir, data, run_dir, max_steps=3, resume_from=str(run_dir / "checkpoints" / "step-3"))
    assert str(file) in str(named.value) and type(named.value).__name__ in (
        "DamagedCheckpointError",
        "ConfigError",
    )
    with pytest.warns(UserWarning, match=r"skipping checkpoint step-3 .*falling back") as said:
        run = train(tiny_model_dir, data, run_dir, max_steps=4, resume_from="latest")
    assert any("skipping checkpoint step-3" in str(w.message) and file.name in str(w.message) for w in said)
    assert run.resumed_from.name == "step-2" and run.steps == 4
    assert folder_digest(run_dir / "checkpoints" / "step-2") == step_2
    assert (run_dir / "checkpoints" / "step-3.damaged").is_dir()  # kept aside, and replaced by a good step-3
    read_checkpoint(run_dir / "checkpoints" / "step-3")
    assert not (run_dir / "PWNED").exists()


def test_a_crafted_pickle_is_live_when_loaded_unsafely(tmp_path):
    """The crafted files above are real attacks: plain unpickling creates the marker (so its absence counts)."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    crafted_pickle("optimizer.pt")(folder)
    with pytest.raises(DamagedCheckpointError, match="pickled Python objects"):
        from tuneforge.train.checkpoint import _read

        _read(folder, "optimizer.pt", lambda f: torch.load(f, weights_only=True))
    assert not (tmp_path / "PWNED").exists()
    torch.load(folder / "optimizer.pt", weights_only=False)
    assert (tmp_path / "PWNED").exists()
