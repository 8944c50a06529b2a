"""Order examples into micro batches and pad them into tensors.

    order = MicroBatchOrder(n_examples=1000, micro_batch_size=4, seed=42)
    for indices in order.epoch(0): batch = collate([examples[i] for i in indices], pad_id)

Each epoch is a fresh seeded shuffle, so a run's data order is fixed by (seed, epoch) alone and a resumed run
can pick up at any (epoch, micro batch) position. With several processes each takes every world-th micro batch.
"""

from __future__ import annotations

from tuneforge.data.tokenization import IGNORE_INDEX


class MicroBatchOrder:
    def __init__(self, n_examples: int, micro_batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.n_examples = n_examples
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size

    def epoch(self, epoch: int) -> list[list[int]]:
        """This process's micro batches (lists of example indices) for one epoch."""
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n_examples, generator=generator).tolist()
        else:
            order = list(range(self.n_examples))
        batches = [order[i:i + self.micro_batch_size] for i in range(0, len(order), self.micro_batch_size)]
        return batches[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.epoch(0))


def collate(examples: list[dict[str, list[int]]], pad_token_id: int, pad_to_multiple_of: int = 8) -> dict:
    """Right-pad to the longest example (rounded up); padding carries no attention and no loss.

    Packed examples (see packing.py) bring `position_ids`, which restart at 0 for every packed example; they are
    passed through, and padding gets positions 0, 1, 2, ... of its own so it reads as one more (ignored) example.
    """
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of > 1 else longest
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    packed = "position_ids" in examples[0]
    position_ids = torch.arange(length).repeat(len(examples), 1) if packed else None  # (batch, seq)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention_mask[row, :n] = 1
        if packed:
            position_ids[row, :n] = torch.tensor(example["position_ids"])
            position_ids[row, n:] = torch.arange(length - n)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if packed:
        batch["position_ids"] = position_ids
    return batch
