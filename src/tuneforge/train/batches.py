"""Which examples make up each optimizer step, and how a step is split into micro batches.

    order = StepOrder(n_examples=1000, batch_size=16, seed=42)
    for step_indices in order.epoch(0):
        for micro in split_micro_batches(step_indices, micro_batch_size=4): ...
    order.step(64)   # the examples of optimizer step 64 (the first of epoch 1)

An epoch is a seeded shuffle cut into batches of `batch_size` examples, so the examples of every optimizer step
are fixed by (seed, epoch) alone: a resumed run picks up at any step, and halving the micro batch after an
out-of-memory error changes only how a step is split, never which examples it trains on.

With TUNEFORGE_RECORD_EXAMPLES=FOLDER set, each process appends the example indices of every step it takes to
FOLDER/examples-rank<R>.jsonl, so a test (or a doubtful user) can see that processes never share an example.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

RECORD_EXAMPLES_ENV = "TUNEFORGE_RECORD_EXAMPLES"


class StepOrder:
    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self._epoch: tuple[int, list[list[int]]] | None = None  # the last epoch's steps: one shuffle an epoch

    def epoch(self, epoch: int) -> list[list[int]]:
        """This process's share of each optimizer step's examples, for one epoch."""
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n_examples, generator=generator).tolist()
        else:
            order = list(range(self.n_examples))
        steps = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Each process takes every world_size-th example of a step. A last step too small to give every
        # process an example is dropped on all of them (at most world_size - 1 examples an epoch).
        return [step[self.rank :: self.world_size] for step in steps if len(step) >= self.world_size]

    def step(self, step: int) -> list[int]:
        """This process's share of the examples of optimizer step `step` (counted from 1 over all epochs)."""
        epoch, index = divmod(step - 1, self.steps_per_epoch())
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.epoch(epoch))
        indices = self._epoch[1][index]
        if os.environ.get(RECORD_EXAMPLES_ENV):
            record = Path(os.environ[RECORD_EXAMPLES_ENV]) / f"examples-rank{self.rank}.jsonl"
            record.parent.mkdir(parents=True, exist_ok=True)
            with record.open("a") as handle:
                handle.write(
                    json.dumps(
                        {"step": step, "rank": self.rank, "world_size": self.world_size, "examples": indices}
                    )
                    + "\n"
                )
        return indices

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n_examples, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)


def planned_steps(config, n_examples: int, world_size: int = 1) -> int:
    """Optimizer steps of a run over `n_examples` prepared examples: max_steps, else epochs' worth."""
    per_epoch = StepOrder(n_examples, config.examples_per_step, 0, world_size=world_size).steps_per_epoch()
    return config.max_steps or max(1, math.ceil(config.epochs * per_epoch))


def split_micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


def describe_batch(examples_per_step: int, micro_batch_size: int, world_size: int) -> str:
    """The effective batch as micro batch x accumulation x processes, e.g. 'batch 8 = micro batch 2 x
    accumulation 2 x 2 processes'; each process takes examples_per_step / world_size of every step."""
    per_process = -(-examples_per_step // world_size)
    accumulation = -(-per_process // micro_batch_size)
    noun = "process" if world_size == 1 else "processes"
    exact = micro_batch_size * accumulation * world_size == examples_per_step
    return (
        f"batch {examples_per_step} {'=' if exact else '<='} micro batch {micro_batch_size} x accumulation "
        f"{accumulation} x {world_size} {noun}"
    )
