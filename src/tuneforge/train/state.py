"""What a run carries from step to step (`TrainState`, also exactly a checkpoint's trainer_state.json) and what
it hands back when it ends (`TrainResult`, read from the state).

    state = TrainState(identity={"model": "HuggingFaceTB/SmolLM2-135M", ...}, micro_batch_size=4)
    state.record_step(loss=2.31, tokens=812)
    TrainState.from_json(json.loads(Path("runs/demo/checkpoints/step-4/trainer_state.json").read_text()))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class TrainState:
    """Everything a resumed run needs to continue exactly where the checkpoint left off."""

    step: int = 0  # optimizer steps done
    losses: list[float] = field(default_factory=list)  # training loss of each step
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    train_tokens: int = 0  # loss-carrying tokens trained on, all processes
    train_seconds: float = 0.0  # seconds in the training loop, every session of a resumed run together
    best_validation: float | None = None
    evaluations_without_improvement: int = 0  # early stopping counts these
    micro_batch_size: int = 1  # after any out-of-memory back-off; a resumed run keeps it
    identity: dict = field(default_factory=dict)  # what a checkpoint must match to be resumed (run_identity)

    def record_step(self, loss: float, tokens: int) -> None:
        self.step += 1
        self.losses.append(loss)
        self.train_tokens += tokens

    def record_validation(self, loss: float) -> None:
        self.validation_losses.append((self.step, loss))
        if self.best_validation is None or loss < self.best_validation:
            self.best_validation, self.evaluations_without_improvement = loss, 0
        else:
            self.evaluations_without_improvement += 1

    @property
    def best_step(self) -> int | None:
        """The step of the lowest validation loss (the first, if equal), or None before any evaluation."""
        return (
            min(self.validation_losses, key=lambda evaluation: evaluation[1])[0]
            if self.validation_losses
            else None
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainState:
        return cls(**{**saved, "validation_losses": [tuple(v) for v in saved.get("validation_losses", [])]})


@dataclass
class TrainResult:
    """What a run did: its folder, per-step losses, why it stopped and where the weights are."""

    run_dir: Path
    total_steps: int  # as planned at the end (max_time may have planned fewer than configured)
    state: TrainState = field(default_factory=TrainState)
    stopped_because: str = "finished"
    saved_to: Path | None = None
    seconds: float = 0.0
    resumed_from: Path | None = None
    tokenizer: object = None  # the tokenizer the run trained with (a new one for scratch + tokenizer: train)
    best_checkpoint: Path | None = (
        None  # checkpoints/best (keep_best): the lowest validation loss's checkpoint
    )
    loaded_best: bool = (
        False  # load_best_at_end: the weights returned are best_checkpoint's, not the last step's
    )
    gathered_state: dict | None = (
        None  # FSDP/DeepSpeed: the full state dict, gathered from every rank, that rank 0 saves
    )
    compiled_after: int | None = None  # recipe auto compiled the blocks after this step (train/levers.py)
    compile_undone_after: int | None = None  # ... and went back to eager after this one: it was no faster

    @property
    def steps(self) -> int:
        return self.state.step

    @property
    def losses(self) -> list[float]:
        return self.state.losses

    @property
    def validation_losses(self) -> list[tuple[int, float]]:
        return self.state.validation_losses

    @property
    def train_tokens(self) -> int:
        return self.state.train_tokens

    @property
    def micro_batch_size(self) -> int:
        return self.state.micro_batch_size

    @property
    def best_step(self) -> int | None:
        return self.state.best_step

    @property
    def best_validation_loss(self) -> float | None:
        return self.state.best_validation

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0

    @property
    def interrupted(self) -> bool:
        return self.stopped_because.startswith("interrupted")
