"""Files as other tools write them: one-object JSON, binary content, instruction+input, ChatML format files,
why a text file was read as it was, where the histogram goes, and the checks made before a model loads."""

import json

import pytest

from tuneforge.config import RunConfig
from tuneforge.data import preflight
from tuneforge.data.examples import detect_text_shape, prepare_examples
from tuneforge.data.inspection import inspect_data
from tuneforge.data.sources import read_source, read_text
from tuneforge.errors import ConfigError, DataError

# text-generation-webui's training/formats/ChatML-format.json: each example already ends with <|im_end|>.
CHATML_FORMAT = {
    "instruction,output": "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n%instruction%<|im_end|>\n"
    "<|im_start|>assistant\n%output%<|im_end|>",
    "instruction,input,output": "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n%instruction%: %input%"
    "<|im_end|>\n<|im_start|>assistant\n%output%<|im_end|>",
}


def test_a_json_file_of_one_conversation_is_one_record(tokenizer, config, tmp_path):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    (tmp_path / "one.json").write_text(json.dumps(record))
    assert read_source(tmp_path / "one.json").records == [record]
    assert len(prepare_examples(tmp_path / "one.json", tokenizer, config()).train) == 1
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    assert read_source(tmp_path / "wrapped.json").records == [{"text": "a"}, {"text": "b"}]


def test_nul_and_binary_content_is_refused_whatever_the_encoding(tmp_path):
    (tmp_path / "nul.txt").write_bytes(b"\x00" * 100)
    with pytest.raises(
        DataError, match=r"nul.txt' holds binary data, not text \(100 of its first 100 characters"
    ):
        read_source(tmp_path / "nul.txt")
    (tmp_path / "blob.bin.txt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="holds binary data, not text"):
        read_source(tmp_path / "blob.bin.txt", encoding="latin-1")  # every byte decodes in latin-1
    from tuneforge.data.preflight import check_file_head

    (tmp_path / "program.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    with pytest.raises(DataError, match="holds binary data, not text") as refused:  # not "pass --encoding"
        check_file_head(tmp_path / "program.txt", "utf-8")
    assert "--encoding" not in str(refused.value)
    with pytest.raises(DataError, match="holds binary data, not text") as refused:  # perplexity reads it so
        read_text(tmp_path / "program.txt")
    assert "--encoding" not in str(refused.value)
    (tmp_path / "wide.txt").write_bytes("two bytes a letter\n".encode("utf-16"))
    # the mark is read first: a marked file is not "without a byte-order mark" (its NULs said so before)
    with pytest.raises(
        DataError, match=r"is UTF-16 text \(it starts with that byte-order mark\); pass --encoding utf-16$"
    ):
        check_file_head(tmp_path / "wide.txt", "utf-8")
    with pytest.raises(
        DataError, match=r"is UTF-16 text .*pass --encoding utf-16$"
    ):  # perplexity's reader too
        read_text(tmp_path / "wide.txt")
    (tmp_path / "wider.txt").write_bytes("four bytes a letter\n".encode("utf-32"))  # FF FE 00 00
    check_file_head(tmp_path / "wider.txt", "utf-32")  # its own mark: no UTF-16 advice
    (tmp_path / "wide-le.txt").write_bytes("two bytes a letter, no mark\n".encode("utf-16-le"))
    with pytest.raises(DataError, match="UTF-16 text without a byte-order mark; pass --encoding utf-16-le"):
        check_file_head(tmp_path / "wide-le.txt", "utf-8")
    (tmp_path / "prose.txt").write_bytes("caf\xe9 au lait\n\x0cpage two\n".encode("latin-1"))
    assert read_source(tmp_path / "prose.txt", encoding="latin-1").text.startswith(
        "café"
    )  # form feed is text


def test_input_output_joins_the_instruction_into_the_prompt(tokenizer, config, tmp_path):
    records = [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    (tmp_path / "io.json").write_text(json.dumps(records))
    prepared = prepare_examples(tmp_path / "io.json", tokenizer, config(format="input_output"))
    assert prepared.report["length_bounds"] == "source_max_len, target_max_len"  # not cutoff_len (warned)
    first, second = prepared.train[0], prepared.train[1]
    prompt = [t for t, label in zip(first["input_ids"], first["labels"], strict=True) if label == -100]
    assert tokenizer.decode(prompt) == "Translate to French.\ncat"
    assert (
        tokenizer.decode(
            [t for t, label in zip(second["input_ids"], second["labels"], strict=True) if label == -100]
        )
        == "Say hi."
    )


def test_a_format_file_ending_with_the_end_token_gets_no_second_one(tokenizer, config, tmp_path):
    (tmp_path / "ChatML-format.json").write_text(json.dumps(CHATML_FORMAT))
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}]))
    prepared = prepare_examples(
        tmp_path / "a.json", tokenizer, config(format_file=str(tmp_path / "ChatML-format.json"))
    )
    row = prepared.train[0]
    assert (
        row["input_ids"][-2:] != [tokenizer.eos_token_id] * 2
        and row["input_ids"][-1] == tokenizer.eos_token_id
    )
    assert (
        tokenizer.decode(
            [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        )
        == "Hello<|im_end|>"
    )


def test_the_detection_reason_says_what_decided(tokenizer, config, tmp_path):
    assert detect_text_shape("one long line of prose") == (
        "raw",
        "the text is a single line, so it is cut into chunks",
    )
    assert detect_text_shape("a\n\nb\n")[1] == "blank lines separate paragraphs"
    assert detect_text_shape(("x" * 2500 + "\n") * 3) == (
        "raw",
        "3 of 3 lines are longer than 2000 characters",
    )
    assert detect_text_shape("a\nb\n") == ("lines", "one short example per line, no blank lines")
    (tmp_path / "single.txt").write_text("word " * 40)
    prepared = prepare_examples(tmp_path / "single.txt", tokenizer, config())
    assert prepared.report["shape_reason"] == "detected: the text is a single line, so it is cut into chunks"


def test_the_histogram_goes_beside_the_prepared_data_with_a_name_of_its_own(
    tokenizer, config, tmp_path, private_cache, monkeypatch
):
    for folder, text in (("a", "one\ntwo\nthree\n"), ("b", "four\nfive\nsix\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.txt").write_text(text)
    monkeypatch.chdir(tmp_path)
    first = inspect_data(tmp_path / "a" / "data.txt", tokenizer, config()).histogram_path
    second = inspect_data(tmp_path / "b" / "data.txt", tokenizer, config()).histogram_path
    assert first != second and first.parent.parent == second.parent.parent == private_cache
    assert first.read_bytes()[:4] == b"\x89PNG" and second.is_file()
    assert not list(tmp_path.glob("*.png"))  # nothing in the current folder
    assert (
        f"histogram written to {first}"
        in inspect_data(tmp_path / "a" / "data.txt", tokenizer, config()).render()
    )
    assert (
        inspect_data(tmp_path / "a" / "data.txt", tokenizer, config(), histogram=False).histogram_path is None
    )


def test_preflight_checks_data_settings_before_any_model(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "notes.txt").write_text("just prose\n")
    (tmp_path / "zeros.txt").write_bytes(b"\x00" * 10)
    good = RunConfig(data=str(tmp_path / "train.jsonl"))
    assert preflight(good) is None
    cases = [
        (dict(data=str(tmp_path / "nope.jsonl")), DataError, "data file '.*nope.jsonl' does not exist"),
        (dict(format_file="no-such-format"), DataError, "format file 'no-such-format' does not exist"),
        (
            dict(validation_data=str(tmp_path / "val.jsonl")),
            DataError,
            "val.jsonl' does not exist.*given as validation_data",
        ),
        (dict(data=str(tmp_path / "zeros.txt")), DataError, "holds binary data"),
        (
            dict(data=str(tmp_path / "notes.txt"), format="chat"),
            DataError,
            "format 'chat' reads records .* but data '.*notes.txt' is plain text",
        ),
        (  # the alias typed is named, not only the shape it became
            dict(data=str(tmp_path / "notes.txt"), format="alpaca"),
            DataError,
            "format 'formatted' \\('alpaca'\\) reads records .* but data '.*notes.txt' is plain text",
        ),
        (dict(filter_patterns=["(unclosed"]), ConfigError, "is not a valid regular expression"),
        (dict(diversity_subset=10), ConfigError, "need diversity_clusters"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            preflight(good.replace(**overrides))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl' is empty"):
        preflight(good.replace(data=str(tmp_path / "empty.jsonl")))


def test_axolotl_labelled_segments_train_only_the_true_ones(tokenizer, config, tmp_path):
    record = {
        "segments": [
            {"label": False, "text": "<s>Hello\n"},
            {"label": True, "text": "hi there!. "},
            {"label": False, "text": "goodbye "},
            {"label": True, "text": "farewell"},
        ]
    }
    (tmp_path / "seg.jsonl").write_text(json.dumps(record) + "\n")
    prepared = prepare_examples(tmp_path / "seg.jsonl", tokenizer, config())
    assert "length_bounds" not in prepared.report  # segments are bounded by cutoff_len
    row = prepared.train[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert prepared.shape == "input_output"
    assert trained == (
        tokenizer("hi there!. ", add_special_tokens=False)["input_ids"]
        + tokenizer("farewell", add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
    )
    (tmp_path / "bad.jsonl").write_text(json.dumps({"segments": [{"label": "yes", "text": "x"}]}) + "\n")
    with pytest.raises(
        DataError, match="record 0: each of its segments needs a string 'text' and a true/false"
    ):
        prepare_examples(tmp_path / "bad.jsonl", tokenizer, config())
