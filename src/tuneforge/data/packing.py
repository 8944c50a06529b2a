"""Pack short examples into blocks of up to `block_size` tokens, with positions restarting per example.

    from tuneforge.data.packing import pack_examples
    blocks = pack_examples([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8, 9], "labels": [7, 8, 9]}],
                           block_size=8)
    # [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "position_ids": [0, 1, 0, 1, 2]}]

`position_ids` restarting at 0 is how transformers recognises packed sequences and builds a block-diagonal
causal mask (when no attention_mask is passed), so no token attends across an example boundary. The first label
of every example is set to -100: otherwise the last token of one example would be trained to predict the first
token of the next. An example is never split.

Blocks are filled best-fit decreasing (TRL's `packing_strategy="bfd"` does the same): the longest example
first, each into the fullest block it still fits. Taking examples in order (next-fit) closes a block as soon as
the next example does not fit; best fit fills those gaps with later, shorter examples: 1,345 -> 1,322 blocks of
256 tokens for tinyshakespeare.txt's lines, 3,057 -> 2,880 for roleplay_alpaca.json's records, so an epoch has
fewer blocks and the recipe's plan of tokens / cutoff_len blocks (defaults.py) is closer to what training gets.
Within a block the examples keep their order, and blocks are ordered by their first example; training shuffles
blocks anyway (train/batches.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from tuneforge.data.tokenization import IGNORE_INDEX

WINDOW = 1000  # examples packed together: one Arrow map batch (blocks never span two)


def pack_groups(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Indices of the examples of each block, best-fit decreasing (a longer example is a block of its own)."""
    blocks: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (free tokens, block number) of blocks with room left, ascending
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        at = bisect.bisect_left(space, (length, -1))  # the fullest block with room for it
        if at < len(space):
            free, number = space.pop(at)
            blocks[number].append(index)
            free -= length
        else:
            number, free = len(blocks), block_size - length
            blocks.append([index])
        if free > 0:
            bisect.insort(space, (free, number))
    return sorted(sorted(block) for block in blocks)


def pack_examples(examples: Iterable[dict], block_size: int) -> list[dict[str, list[int]]]:
    """Blocks of whole examples, each at most block_size tokens (a longer example is a block of its own)."""
    examples = list(examples)
    blocks = []
    for group in pack_groups([len(e["input_ids"]) for e in examples], block_size):
        block: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for index in group:
            ids = list(examples[index]["input_ids"])
            block["input_ids"] += ids
            block["labels"] += [IGNORE_INDEX] + list(examples[index]["labels"][1:])
            block["position_ids"] += list(range(len(ids)))
        blocks.append(block)
    return blocks


def pack_dataset(dataset, block_size: int, num_proc: int = 1, fingerprint: str = "packed"):
    """pack_examples over an Arrow dataset, WINDOW examples at a time (blocks never span two batches)."""

    def pack(batch: dict) -> dict:
        rows = [
            {"input_ids": i, "labels": labels}
            for i, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        ]
        blocks = pack_examples(rows, block_size)
        return {key: [b[key] for b in blocks] for key in ("input_ids", "labels", "position_ids")}

    workers = min(num_proc, max(1, len(dataset) // WINDOW)) if num_proc > 1 else None
    return dataset.map(
        pack,
        batched=True,
        batch_size=WINDOW,
        num_proc=workers,
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc="packing",
    )
