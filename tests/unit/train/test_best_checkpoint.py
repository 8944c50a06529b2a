"""The checkpoint of the lowest validation loss is kept as checkpoints/best, never pruned, can be the returned
weights (load_best_at_end), and the run says when the validation loss starts rising."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tuneforge as tf
from tuneforge.train.checkpoint import list_checkpoints, read_checkpoint, remove_unfinished
from tuneforge.train.validation import overfitting_note

# A full fine-tune at a high learning rate memorises the sandwich lines; the validation text is unrelated, so
# its loss falls for a few steps and then rises (best at step 5 on the tiny model).
SETTINGS = dict(
    method="full",
    batch_size=4,
    micro_batch_size=2,
    learning_rate=3e-2,
    lr_scheduler="constant",
    max_steps=8,
    eval_steps=1,
    precision="fp32",
    seed=3,
    num_threads=1,
)
OTHER_TEXT = [
    "the old river runs past the mill towards a grey sea",
    "seven geese fly over frozen hills at dawn",
    "a violin plays softly in the empty hall",
    "rain falls on the quiet harbour town",
]


@pytest.fixture()
def validation_file(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("\n".join(OTHER_TEXT) + "\n")
    return path


def train(model_dir, data, validation, run_dir, **keys):
    llm = tf.load(str(model_dir), precision="fp32")
    run = llm.train(
        data,
        output_dir=str(run_dir),
        validation_data=str(validation),
        **{"show_progress": False, **SETTINGS, **keys},
    )
    return llm, run


def test_the_best_checkpoint_is_kept_and_save_total_limit_never_prunes_it(
    tiny_model_dir, lines_file, validation_file, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    _, run = train(
        tiny_model_dir,
        lines_file,
        validation_file,
        run_dir,
        save_steps=2,
        save_total_limit=1,
        show_progress=True,
    )
    best_step, best_loss = min(run.validation_losses, key=lambda evaluation: evaluation[1])
    assert run.best_step == best_step < 8 and run.best_validation_loss == best_loss
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-8"]  # step-{best} itself was pruned
    assert run.best_checkpoint == run_dir / "checkpoints" / "best"
    files = read_checkpoint(run.best_checkpoint)  # complete: every file reads back
    assert files["state"].step == best_step and files["state"].best_validation == best_loss
    assert not run.loaded_best
    rising_at = next(step for step, loss in run.validation_losses if step > best_step and loss > best_loss)
    assert (
        f"validation loss rising since step {rising_at} (best {best_loss:.4f} at step {best_step}): "
        "the model is starting to overfit"
    ) in capsys.readouterr().err


def test_load_best_at_end_returns_the_best_checkpoints_weights(
    tiny_model_dir, lines_file, validation_file, tmp_path
):
    run_dir = tmp_path / "run"
    llm, run = train(
        tiny_model_dir, lines_file, validation_file, run_dir, save_steps=1, load_best_at_end=True
    )
    assert run.loaded_best and run.best_step < 8
    best = load_file(str(run_dir / "checkpoints" / "best" / "trainable.safetensors"))
    of_that_step = load_file(str(run_dir / "checkpoints" / f"step-{run.best_step}" / "trainable.safetensors"))
    last = load_file(str(run_dir / "checkpoints" / "step-8" / "trainable.safetensors"))
    returned = llm.model.state_dict()
    for name, weight in best.items():
        assert torch.equal(weight, of_that_step[name]), name
        assert torch.equal(returned[name].cpu(), weight), name
    assert any(not torch.equal(last[name], best[name]) for name in best)
    saved = load_file(str(run_dir / "model" / "model.safetensors"))  # the run's model/ holds the best too
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(saved[name], best[name])


def test_a_killed_replacement_of_best_puts_the_previous_best_back(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    previous = (
        checkpoints / ".best.replaced"
    )  # what a kill between moving the old best aside and the rename leaves
    previous.mkdir(parents=True)
    (previous / "trainer_state.json").write_text(json.dumps({"step": 3}))
    (checkpoints / ".best.tmp-abc").mkdir()  # the half-written new one
    remove_unfinished(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best"]
    assert json.loads((checkpoints / "best" / "trainer_state.json").read_text())["step"] == 3


def test_overfitting_is_noted_once_at_the_first_rise_after_the_best():
    losses = [(1, 3.0), (2, 2.5)]
    assert overfitting_note(losses) is None  # still falling
    losses.append((3, 2.5))
    assert overfitting_note(losses) is None  # level is not rising
    losses.append((4, 2.7))
    assert overfitting_note(losses) == (
        "validation loss rising since step 4 (best 2.5000 at step 2): the model is starting to overfit"
    )
    losses.append((5, 2.9))
    assert overfitting_note(losses) is None  # said once
    losses += [(6, 2.0), (7, 2.1)]
    assert overfitting_note(
        losses
    ) is not None and "since step 7 (best 2.0000 at step 6)" in overfitting_note(losses)
