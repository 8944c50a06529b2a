"""Other tools' format names select tuneforge's pipelines; every data setting enters the cache fingerprint."""

import dataclasses
import json

import pytest

from tuneforge.config import RunConfig
from tuneforge.data import prepare_examples
from tuneforge.data.cache import NOT_FINGERPRINTED, data_fingerprint, fingerprint_keys

ALPACA = [
    {
        "instruction": f"Name fruit number {i}.",
        "input": "" if i % 3 else "in French",
        "output": f"Fruit {i} is an apple.",
    }
    for i in range(12)
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}!"}]}
    for i in range(8)
]


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    ("alias", "canonical", "records"),
    [
        ("alpaca", {"format": "formatted", "format_file": "alpaca-format"}, ALPACA),
        ("sharegpt", {"format": "chat"}, SHAREGPT),
    ],
    ids=["alpaca", "sharegpt"],
)
def test_format_alias_prepares_the_same_examples_as_its_tuneforge_format(
    tokenizer, tmp_path, alias, canonical, records
):
    data = _write(tmp_path / f"{alias}.json", records)
    aliased = prepare_examples(data, tokenizer, RunConfig(format=alias, cutoff_len=64), use_cache=False)
    plain = prepare_examples(data, tokenizer, RunConfig(cutoff_len=64, **canonical), use_cache=False)
    assert aliased.shape == plain.shape == canonical["format"]
    assert len(aliased.train) == len(records) and aliased.train[:] == plain.train[:]


def _another_value(f: dataclasses.Field, value):
    """A valid value different from `value`, found from the setting's type, choices and range."""
    meta = f.metadata
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, list):
        return value + ["x"]
    if isinstance(value, float):
        return value / 2 if value else 0.25
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if "dict" in str(f.type):
        return {"name": "x"}
    low = meta.get("min")
    return "x" if low is None else int(low) + 2  # an unset (None) key: a small valid number or a name


def test_changing_any_data_setting_changes_the_fingerprint(tokenizer, tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("one line\nanother line\n")
    base = RunConfig(data=str(data), format="raw")
    reference = data_fingerprint([data], [], tokenizer, base)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    data_keys = [name for name, f in fields.items() if f.metadata.get("group") == "data"]
    assert set(data_keys) - set(NOT_FINGERPRINTED) <= set(fingerprint_keys())
    for key in fingerprint_keys():
        changed = dataclasses.replace(base, **{key: _another_value(fields[key], getattr(base, key))})
        assert data_fingerprint([data], [], tokenizer, changed) != reference, key
    for key in NOT_FINGERPRINTED:  # these cannot change the prepared examples
        same = dataclasses.replace(base, **{key: _another_value(fields[key], getattr(base, key))})
        assert data_fingerprint([data], [], tokenizer, same) == reference, key
