"""The result of data preparation: tokenized train/validation examples plus the counts of every stage.

    from tuneforge.data import prepare_examples
    prepared = prepare_examples("data.jsonl", tokenizer, config)
    prepared.train[0]            # {"input_ids": [...], "labels": [...]} (+ "position_ids" when packed)
    print(prepared.describe())

`train` and `validation` are `ExampleTable`s: list-like views over memory-mapped Arrow datasets, so a large
prepared dataset costs no RAM until rows are read, and slicing returns a list of row dicts like a list would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("input_ids", "labels", "position_ids")


class ExampleTable(Sequence):
    """A read-only list of example dicts backed by a `datasets.Dataset` (or any list of dicts)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is out of range ({len(self)} examples)")
        row = self.rows[index]
        return {k: row[k] for k in COLUMNS if k in row}

    @property
    def lengths(self) -> list[int]:
        """Token count of every example (read from the Arrow column, no row decoding)."""
        if hasattr(self.rows, "data"):
            import pyarrow.compute as pc

            # through the dataset, not .data: after a select() .data is still the whole table
            return pc.list_value_length(self.rows.with_format("arrow")["input_ids"]).to_pylist()
        return [len(row["input_ids"]) for row in self.rows]


@dataclass
class PreparedData:
    """Tokenized examples, the counts of every stage that produced them, and notes for the preview."""

    shape: str
    train: Sequence
    validation: Sequence = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # format file, template usage, removed per filter, clusters
    cache_dir: Path | None = None
    cache_hit: bool = False

    def describe(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in self.counts.items())
        return f"shape: {self.shape}; {parts}"
