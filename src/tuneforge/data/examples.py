"""Turn a data file into tokenized training examples: `input_ids` plus `labels` (-100 = carries no loss).

    from tuneforge.data.examples import prepare_examples
    prepared = prepare_examples("cheese.txt", tokenizer, config)
    print(prepared.describe())

Shapes handled here: `lines` (one example per line, seed 001) and `raw` (one long text cut into overlapping
chunks, seed 003). `auto` picks `raw` when blank lines separate paragraphs and `lines` otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tuneforge.data.chunking import chunk_raw_text
from tuneforge.data.sources import read_text
from tuneforge.errors import DataError

IGNORE_INDEX = -100  # label value that carries no loss (PyTorch's cross_entropy default)


@dataclass
class PreparedData:
    """Tokenized examples and the counts of every step that produced them."""

    shape: str
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in self.counts.items())
        return f"shape: {self.shape}; {parts}"


def detect_shape(text: str) -> str:
    """'raw' for prose with blank-line paragraphs or very long lines, 'lines' for one example per line."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2 or "\n\n" in text.strip("\n"):
        return "raw"
    long_lines = sum(len(line) > 2000 for line in lines)
    return "raw" if long_lines > 0.1 * len(lines) else "lines"


def line_examples(text: str, tokenizer, cutoff_len: int, add_eos_token: bool) -> tuple[list[list[int]], dict]:
    """One example per non-empty line, truncated to cutoff_len tokens (counted, never silent)."""
    lines = text.removesuffix("\n").split("\n")
    kept = [line.strip() for line in lines if line.strip()]
    encoded = tokenizer(kept, add_special_tokens=False)["input_ids"]
    examples, truncated = [], 0
    eos = tokenizer.eos_token_id
    for ids in encoded:
        ids = list(ids) + ([eos] if add_eos_token and eos is not None else [])
        if len(ids) > cutoff_len:
            truncated += 1
            ids = ids[:cutoff_len]
        examples.append(ids)
    counts = {"lines_read": len(kept), "blank_lines_skipped": sum(1 for line in lines if not line.strip()),
              "examples": len(examples), "truncated_to_cutoff_len": truncated}
    return examples, counts


def prepare_examples(path: str, tokenizer, config, encoding: str = "utf-8") -> PreparedData:
    """Read, shape, tokenize and split one data file according to the run config."""
    text = read_text(path, encoding)
    shape = detect_shape(text) if config.format == "auto" else config.format
    if shape == "lines":
        sequences, counts = line_examples(text, tokenizer, config.cutoff_len, config.add_eos_token)
    else:
        sequences, stats = chunk_raw_text(text, tokenizer, config.cutoff_len, config.overlap_len,
                                          config.newline_favor_len, config.hard_cut_string, config.add_eos_token)
        counts = {"sections": stats.sections, "empty_sections_skipped": stats.empty_sections,
                  "tokens": stats.tokens, "chunks": stats.chunks, "cuts_moved_to_newline": stats.newline_cuts}
    sequences = [s for s in sequences if len(s) >= 2]  # a 1-token example has no next token to predict
    if not sequences:
        raise DataError(f"data file '{path}' gave no training example of 2 or more tokens")
    examples = [{"input_ids": s, "labels": list(s)} for s in sequences]
    train, validation = split_examples(examples, config.validation_split, config.seed)
    counts.update(train_examples=len(train), validation_examples=len(validation),
                  train_tokens=sum(len(e["input_ids"]) for e in train))
    return PreparedData(shape, train, validation, counts)


def split_examples(examples: list, validation_split: float, seed: int) -> tuple[list, list]:
    """A deterministic train/validation split: the same seed and ratio always hold out the same examples."""
    if validation_split <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * validation_split))
    held_out = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in held_out],
            [e for i, e in enumerate(examples) if i in held_out])
