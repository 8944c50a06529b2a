"""Which examples make up each optimizer step, and how a step is split into micro batches.

    order = StepOrder(n_examples=1000, batch_size=16, seed=42)
    for step_indices in order.epoch(0):
        for micro in split_micro_batches(step_indices, micro_batch_size=4): ...

An epoch is a seeded shuffle cut into batches of `batch_size` examples, so the examples of every optimizer step
are fixed by (seed, epoch) alone: a resumed run picks up at any step, and halving the micro batch after an
out-of-memory error changes only how a step is split, never which examples it trains on.
"""

from __future__ import annotations


class StepOrder:
    def __init__(self, n_examples: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size

    def epoch(self, epoch: int) -> list[list[int]]:
        """This process's share of each optimizer step's examples, for one epoch."""
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n_examples, generator=generator).tolist()
        else:
            order = list(range(self.n_examples))
        steps = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Each process takes every world_size-th example of a step. A last step too small to give every
        # process an example is dropped on all of them (at most world_size - 1 examples an epoch).
        return [step[self.rank::self.world_size] for step in steps if len(step) >= self.world_size]

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n_examples, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)


def split_micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i:i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
