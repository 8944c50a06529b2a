"""Pack short examples into blocks of up to `block_size` tokens, with positions restarting per example.

    from tuneforge.data.packing import pack_examples
    blocks = pack_examples([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8, 9], "labels": [7, 8, 9]}],
                           block_size=8)
    # [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "position_ids": [0, 1, 0, 1, 2]}]

`position_ids` restarting at 0 is how transformers recognises packed sequences and builds a block-diagonal
causal mask (when no attention_mask is passed), so no token attends across an example boundary. The first label
of every example is set to -100: otherwise the last token of one example would be trained to predict the first
token of the next. Packing is greedy and keeps example order (next-fit); an example is never split.
"""

from __future__ import annotations

from collections.abc import Iterable

from tuneforge.data.tokenization import IGNORE_INDEX


def pack_examples(examples: Iterable[dict], block_size: int) -> list[dict[str, list[int]]]:
    """Blocks of whole examples, each at most block_size tokens (a longer example is a block of its own)."""
    blocks: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        ids = list(example["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > block_size:
            blocks.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += ids
        current["labels"] += [IGNORE_INDEX] + list(example["labels"][1:])
        current["position_ids"] += list(range(len(ids)))
    if current["input_ids"]:
        blocks.append(current)
    return blocks


def pack_dataset(dataset, block_size: int, num_proc: int = 1, fingerprint: str = "packed"):
    """pack_examples over an Arrow dataset, 1000 examples at a time (blocks never span two batches)."""

    def pack(batch: dict) -> dict:
        rows = [
            {"input_ids": i, "labels": labels}
            for i, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        ]
        blocks = pack_examples(rows, block_size)
        return {key: [b[key] for b in blocks] for key in ("input_ids", "labels", "position_ids")}

    workers = min(num_proc, max(1, len(dataset) // 1000)) if num_proc > 1 else None
    return dataset.map(
        pack,
        batched=True,
        batch_size=1000,
        num_proc=workers,
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc="packing",
    )
