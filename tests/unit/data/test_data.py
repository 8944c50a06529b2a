import pytest

from tuneforge.config import RunConfig
from tuneforge.data.examples import detect_shape, prepare_examples, split_examples
from tuneforge.data.sources import read_text
from tuneforge.data.spintax import expand
from tuneforge.errors import DataError


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="data file '.*nope.txt' does not exist"):
        read_text(tmp_path / "nope.txt")


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(DataError, match="is empty"):
        read_text(tmp_path / "empty.txt")


def test_undecodable_bytes_name_the_offset_and_the_fix(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"byte 0xe9 at offset 3 is not valid utf-8; .*--encoding"):
        read_text(tmp_path / "latin.txt")
    assert read_text(tmp_path / "latin.txt", encoding="latin-1").startswith("café")
    (tmp_path / "utf8.txt").write_bytes("caf\u00e9 \u2014 ok\n".encode("utf-8") + b"\x81")
    with pytest.raises(DataError, match=r"not valid cp1252; .*--encoding \(e.g. utf-8, latin-1"):
        read_text(tmp_path / "utf8.txt", encoding="cp1252")  # never suggests the one that failed
    from tuneforge.data.preflight import check_file_head

    with pytest.raises(DataError, match=r"not valid cp1252; .*--encoding"):  # UTF-8's 0x80-0x9f: not binary
        check_file_head(tmp_path / "utf8.txt", "cp1252")


def test_shape_detection():
    assert detect_shape("one example\nanother example\nand a third\n") == "lines"
    assert detect_shape("A paragraph.\nStill it.\n\nNext paragraph.\n") == "raw"


def test_each_line_is_one_example_ending_in_eos(tokenizer, tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\nsecond line\n")
    prepared = prepare_examples(tmp_path / "lines.txt", tokenizer, RunConfig(format="lines"), use_cache=False)
    assert len(prepared.train) == 2 and prepared.report["blank_lines_skipped"] == 2
    assert all(e["input_ids"][-1] == tokenizer.eos_token_id for e in prepared.train)
    assert tokenizer.decode(prepared.train[0]["input_ids"][:-1]) == "first line"


def test_long_lines_are_truncated_and_counted(tokenizer, tmp_path):
    (tmp_path / "long.txt").write_text("word " * 100 + "\nshort\n")
    config = RunConfig(format="lines", cutoff_len=16, overlap_len=0)
    prepared = prepare_examples(tmp_path / "long.txt", tokenizer, config, use_cache=False)
    assert len(prepared.train[0]["input_ids"]) == 16 and prepared.counts["truncated"] == 1


def test_split_is_deterministic_and_disjoint():
    items = list(range(100))
    train_a, val_a = split_examples(items, 0.1, seed=3)
    train_b, val_b = split_examples(items, 0.1, seed=3)
    assert val_a == val_b and len(val_a) == 10 and not set(train_a) & set(val_a)
    assert split_examples(items, 0.1, seed=4)[1] != val_a


def test_prepare_counts_every_example(tokenizer, lines_file):
    prepared = prepare_examples(str(lines_file), tokenizer, RunConfig(validation_split=0.25), use_cache=False)
    assert prepared.shape == "lines"
    assert prepared.counts["read"] == 24
    assert len(prepared.train) + len(prepared.validation) == 24 and len(prepared.validation) == 6
    assert all(e["labels"] == e["input_ids"] for e in prepared.train)


def test_spintax_expands_nested_choices_deterministically():
    sentences = expand("{a {red|blue}|the} car", 10, seed=0)
    assert sorted(sentences) == ["a blue car", "a red car", "the car"]
    assert expand("{a {red|blue}|the} car", 10, seed=0) == sentences
