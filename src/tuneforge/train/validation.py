"""Validation during a run: the loss at the evaluation steps, the checkpoint of the lowest one kept as
checkpoints/best, and the first sign of overfitting.

    loss = validation_loss(setup, data, config, state, step=20, total_steps=100)   # None: no evaluation now
    best.keep(setup.bare_model, state)     # a new lowest loss: written as run_dir/checkpoints/best
    overfitting_note(state.validation_losses)
    # -> "validation loss rising since step 30 (best 2.1042 at step 20): the model is starting to overfit"
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.train.checkpoint import STATE_FILE, load_trainable_weights, save_checkpoint
from tuneforge.train.loss import evaluate_loss
from tuneforge.train.state import TrainState
from tuneforge.train.step import signals_wait_for_save


def validation_loss(setup, data, config, state: TrainState, step: int, total_steps: int) -> float | None:
    """Every eval_steps steps and at the last step (with validation data): the validation loss, recorded in
    `state`; None when this step has no evaluation."""
    if not data.validation or not (
        (config.eval_steps and step % config.eval_steps == 0) or step == total_steps
    ):
        return None
    loss = evaluate_loss(
        setup.model,
        data.validation,
        state.micro_batch_size,
        setup.pad_token_id,
        setup.accelerator.device,
        setup.accelerator.autocast,
        direct=setup.direct_head,
    )
    state.record_validation(loss)
    return loss


def overfitting_note(validation_losses: list[tuple[int, float]]) -> str | None:
    """When the latest evaluation is the first since the best one with a higher loss: the note saying so."""
    if not validation_losses:
        return None
    best = min(validation_losses, key=lambda evaluation: evaluation[1])
    after = validation_losses[validation_losses.index(best) + 1 :]
    rising = [evaluation for evaluation in after if evaluation[1] > best[1]]
    if len(rising) != 1 or rising[0] is not validation_losses[-1]:
        return None
    return (
        f"validation loss rising since step {rising[0][0]} (best {best[1]:.4f} at step {best[0]}): "
        "the model is starting to overfit"
    )


class BestCheckpoint:
    """checkpoints/best: the checkpoint of the lowest validation loss so far (keep_best, load_best_at_end),
    written by the main process when an evaluation beats every earlier one. save_total_limit never prunes it."""

    def __init__(self, run_dir: Path, setup, config, stop: dict, enabled: bool):
        self.path = run_dir / "checkpoints" / "best"
        self.run_dir, self.setup, self.config, self.stop = run_dir, setup, config, stop
        self.enabled = enabled

    def keep(self, bare_model, state: TrainState) -> None:
        if not self.enabled or state.best_step != state.step:
            return
        if self.setup.accelerator.is_main_process:
            with signals_wait_for_save(self.stop):  # a second signal waits until best is complete
                save_checkpoint(
                    self.run_dir,
                    bare_model,
                    self.setup.optimizer,
                    self.setup.scheduler,
                    state,
                    config=self.config,
                    name="best",
                )

    def step(self, state: TrainState) -> int | None:
        """The step of checkpoints/best when it holds this run's best (also one written before a resume)."""
        step = state.best_step
        if not self.enabled or step is None or not (self.path / STATE_FILE).is_file():
            return None
        return step if json.loads((self.path / STATE_FILE).read_text()).get("step") == step else None

    def load_into(self, model, state: TrainState) -> int | None:
        """Put the best checkpoint's trainable weights into `model`; its step, or None when there is none."""
        self.setup.accelerator.wait_for_everyone()  # the main process wrote it
        step = self.step(state)
        if step is not None:
            load_trainable_weights(self.path, model)
        return step
