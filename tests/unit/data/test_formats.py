"""Format files, input/output pairs and chat: which template is used, and exactly which tokens carry loss."""

import json

import pytest

from tuneforge.data.formats import (
    check_formatted,
    detect_record_shape,
    load_format,
    render_chat,
    render_formatted,
)
from tuneforge.data.tokenization import IGNORE_INDEX, tokenize_segments
from tuneforge.errors import DataError

CHAT_FORMAT = {
    "instruction,output": "User: %instruction%\nAssistant: %output%",
    "instruction,input,output": "User: %instruction%: %input%\nAssistant: %output%",
}


def test_shipped_alpaca_format_matches_text_generation_webui():
    fmt = load_format("alpaca-format")
    assert set(fmt.templates) == {
        frozenset({"instruction", "output"}),
        frozenset({"instruction", "input", "output"}),
    }
    assert (
        load_format("alpaca-chat-format.json").templates[frozenset({"instruction", "output"})][1]
        == CHAT_FORMAT["instruction,output"]
    )


def test_each_record_uses_the_template_whose_keys_equal_its_non_empty_keys(tmp_path):
    (tmp_path / "fmt.json").write_text(json.dumps(CHAT_FORMAT))
    fmt = load_format(str(tmp_path / "fmt.json"))
    blank_input = {
        "instruction": "Add",
        "input": "  ",
        "output": "4",
        "id": 7,
    }  # blank and non-strings don't count
    with_input = {"instruction": "Add", "input": "2+2", "output": "4"}
    assert render_formatted(blank_input, fmt, train_on_source=False) == [
        ("User: Add\nAssistant: ", False),
        ("4", True),
    ]
    assert render_formatted(with_input, fmt, train_on_source=True) == [
        ("User: Add: 2+2\nAssistant: ", True),
        ("4", True),
    ]
    assert check_formatted([blank_input, with_input, with_input], fmt) == {
        "instruction,output": 1,
        "instruction,input,output": 2,
    }


def test_values_are_substituted_once_even_if_they_look_like_placeholders():
    fmt = load_format("alpaca-chat-format")
    segments = render_formatted({"instruction": "say %output%", "output": "no"}, fmt, False)
    assert segments == [("User: say %output%\nAssistant: ", False), ("no", True)]


def test_records_matching_no_template_are_named_with_their_keys():
    fmt = load_format("alpaca-format")
    records = [{"instruction": "a", "output": "b"}, {"instruction": "only"}, {"prompt": "x", "output": "y"}]
    with pytest.raises(
        DataError,
        match=r"2 of 3 records match no template of alpaca-format \(record indexes 1, 2\)"
        r"; record 1 has non-empty keys: instruction, but",
    ):
        check_formatted(records, fmt)


def test_a_record_matching_no_template_is_named_by_its_index_as_read_after_dedup(tmp_path):
    from tuneforge.config import RunConfig
    from tuneforge.data import prepare_examples

    good = {"instruction": "Say hi.", "output": "Hi."}
    rows = [good, good, {"instruction": "Add 2 and 2.", "output": "4"}, good, {"instruction": "no answer"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = RunConfig(format="formatted", format_file="alpaca-format", dedup="exact", validation_split=0)
    with pytest.raises(DataError, match=r"record indexes 4\); record 4 has non-empty keys: instruction"):
        prepare_examples(tmp_path / "data.jsonl", None, config)  # refused before tokenizing


def test_a_placeholder_no_key_supplies_is_refused(tmp_path):
    (tmp_path / "typo.json").write_text(json.dumps({"instruction,output": "%instruction% %outptu%"}))
    with pytest.raises(
        DataError, match="uses %outptu%, which none of its keys \\(instruction, output\\) supplies"
    ):
        load_format(str(tmp_path / "typo.json"))
    (tmp_path / "no_answer.json").write_text(json.dumps({"instruction,output": "Q: %instruction%\nA:"}))
    with pytest.raises(
        DataError, match="never uses %output%, so every such record's answer would be dropped"
    ):
        load_format(str(tmp_path / "no_answer.json"))
    (tmp_path / "no_id.json").write_text(
        json.dumps({"id,instruction,output": "Q: %instruction%\nA: %output%"})
    )
    assert load_format(str(tmp_path / "no_id.json"))  # an id column left out on purpose is fine
    (tmp_path / "broken.json").write_text('{"a,b": "x"\n "c": 1}')
    with pytest.raises(DataError, match=r"broken.json:2:2: malformed JSON"):
        load_format(str(tmp_path / "broken.json"))


def test_prompt_tokens_are_labelled_minus_100_exactly(tokenizer):
    prompt, answer = "### Instruction:\nAdd two and two.\n\n### Response:\n", "Four."
    row = tokenize_segments([[(prompt, False), (answer, True)]], tokenizer, cutoff_len=64)[0]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    assert row["n_loss"] == len(answer_ids) + 1


def test_source_and_target_are_truncated_separately(tokenizer):
    source, target = "one two three four five six", "alpha beta gamma delta"
    rows = tokenize_segments(
        [[(source, False, 3), (target, True, 2)]], tokenizer, cutoff_len=None, eos="never"
    )
    assert rows[0]["input_ids"] == (
        tokenizer(source, add_special_tokens=False)["input_ids"][:3]
        + tokenizer(target, add_special_tokens=False)["input_ids"][:2]
    )
    assert rows[0]["labels"][:3] == [IGNORE_INDEX] * 3 and rows[0]["truncated"]


def test_chat_loss_falls_only_on_assistant_turns_which_end_with_eos(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ]
    segments = render_chat(messages, tokenizer, train_on_source=False)
    assert [text for text, loss in segments if loss] == ["Hello!<|im_end|>\n", "Bye!<|im_end|>\n"]
    assert "".join(text for text, _ in segments) == tokenizer.apply_chat_template(messages, tokenize=False)
    row = tokenize_segments([segments], tokenizer, cutoff_len=256, eos="if_missing")[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>\nBye!<|im_end|>\n"
    assert row["input_ids"].count(tokenizer.eos_token_id) == 5  # the template's own: no extra EOS appended


def test_shape_is_detected_from_record_keys():
    assert detect_record_shape([{"instruction": "a", "input": "", "output": "b"}], None, None) == "formatted"
    assert detect_record_shape([{"input": "a", "output": "b"}], None, None) == "input_output"
    assert detect_record_shape([{"messages": [{"role": "user", "content": "x"}]}], None, None) == "chat"
    assert detect_record_shape([{"text": "a"}], None, None) == "text"
    with pytest.raises(DataError, match="cannot tell the shape of these records \\(keys: body, title\\)"):
        detect_record_shape([{"title": "a", "body": "b"}], None, None)


def test_a_misspelled_shape_key_is_refused_by_name_not_left_out_of_training():
    # "instrution" beside input/output would have made input_output records that train without the instruction
    records = [
        {"instruction": "a", "input": "", "output": "b"},
        {"instrution": "Say hi", "input": "", "output": "hi"},
    ]
    with pytest.raises(DataError, match="alpaca.json, record 1: key 'instrution' looks like a misspelling of "
                       "'instruction'"):  # fmt: skip
        detect_record_shape(records, None, None, "alpaca.json")
    with pytest.raises(DataError, match="key 'ouput' looks like a misspelling of 'output'"):
        detect_record_shape([{"instruction": "a", "ouput": "b"}], None, None)
    # other keys are data of the user's own (ids, categories) and stay allowed; so does a name they chose
    assert detect_record_shape([{"id": 3, "category": "x", "input": "a", "output": "b"}], None, None) == (
        "input_output"
    )
    assert detect_record_shape([{"instrution": "a", "body": "b"}], "body", None) == "text"
    # names of their own that merely resemble a shape key: a suffix, or chat data's ids beside its messages
    chat = [{"conversation_id": "c1", "message_id": "m1", "messages": [{"role": "user", "content": "x"}]}]
    assert detect_record_shape(chat, None, None) == "chat"
    own = [{"instruction_id": 1, "input_0": "x", "segment_ids": [1], "input": "a", "output": "b"}]
    assert detect_record_shape(own, None, None) == "input_output"


def test_a_record_with_an_extra_key_is_told_which_key_and_how_to_fix_it():
    records = [{"instruction": "a", "output": "b", "source": "web"}]
    with pytest.raises(DataError, match=r"its extra keys \(source\) are in no template: drop them"):
        check_formatted(records, load_format("alpaca-format"))
