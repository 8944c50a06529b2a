"""Packing fills blocks best-fit decreasing: every example once, whole, in order within its block, and far less
padding than taking examples in order."""

import math
import random

from tuneforge.data.packing import WINDOW, pack_dataset, pack_examples, pack_groups


def next_fit_blocks(lengths: list[int], block_size: int) -> int:
    """Blocks made by taking examples in order, a new block when the next one does not fit (the old packing)."""
    blocks, current = 0, 0
    for length in lengths:
        if current and current + length > block_size:
            blocks, current = blocks + 1, 0
        current += length
    return blocks + (1 if current else 0)


def test_every_example_lands_once_whole_and_in_order_and_no_block_overflows():
    rng = random.Random(0)
    lengths = [rng.randint(1, 90) for _ in range(500)] + [300]  # one example longer than a block
    groups = pack_groups(lengths, 128)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(group == sorted(group) for group in groups)
    assert [group[0] for group in groups] == sorted(group[0] for group in groups)
    assert [500] in groups  # the long one is a block of its own
    assert all(sum(lengths[i] for i in group) <= 128 for group in groups if group != [500])

    examples = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths[:40])]
    blocks = pack_examples(examples, 128)
    assert sorted(x for b in blocks for x in b["input_ids"]) == sorted(
        x for e in examples for x in e["input_ids"]
    )
    for block in blocks:  # positions restart and the first token of each example carries no loss
        starts = [k for k, p in enumerate(block["position_ids"]) if p == 0]
        assert all(block["labels"][k] == -100 for k in starts)
        assert len(starts) == len(set(block["input_ids"]))


def test_best_fit_fills_blocks_that_taking_examples_in_order_leaves_half_empty():
    assert pack_groups([7, 4, 3, 6, 5, 5], 10) == [[0, 2], [1, 3], [4, 5]]  # three full blocks
    assert next_fit_blocks([7, 4, 3, 6, 5, 5], 10) == 4
    rng = random.Random(1)
    lines = [rng.randint(8, 60) for _ in range(2000)]  # one-sentence lines, as benchmarks' "lines" case
    blocks = pack_groups(lines, 256)
    padding = 1 - sum(lines) / (256 * len(blocks))
    in_order = 1 - sum(lines) / (256 * next_fit_blocks(lines, 256))
    assert padding < 0.01 < 0.05 < in_order, (padding, in_order)


def test_pack_dataset_makes_about_the_tokens_over_cutoff_len_blocks_the_recipe_plans_for():
    from datasets import Dataset

    rng = random.Random(2)
    lengths = [rng.randint(3, 40) for _ in range(WINDOW + 300)]  # two windows, packed one after the other
    rows = {"input_ids": [[7] * n for n in lengths], "labels": [[7] * n for n in lengths]}
    packed = pack_dataset(Dataset.from_dict(rows), 64)
    assert sum(len(ids) for ids in packed["input_ids"]) == sum(lengths)
    assert max(len(ids) for ids in packed["input_ids"]) <= 64
    planned = math.ceil(sum(lengths) / 64)  # defaults.py sizes the batch and steps from this count
    assert planned <= len(packed) <= planned * 1.02 + 1
