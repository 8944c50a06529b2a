"""Pad examples into tensors for the model.

    batch = collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}], pad_token_id=0)

Which examples form each optimizer step is decided in train/batches.py.
"""

from __future__ import annotations

from tuneforge.data.tokenization import IGNORE_INDEX


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
            assert position_ids is not None  # built above whenever packed
            position_ids[row, :n] = torch.tensor(example["position_ids"])
            position_ids[row, n:] = torch.arange(length - n)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if packed:
        assert position_ids is not None
        batch["position_ids"] = position_ids
    return batch
