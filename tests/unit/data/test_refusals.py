"""What tuneforge does not train is refused in one sentence naming the kind; unfinished records are flagged."""

import json

import pytest

from tuneforge.data.examples import prepare_examples
from tuneforge.data.inspection import inspect_data
from tuneforge.errors import DataError

CHAT = [
    {"from": "human", "value": "Who are you?"},
    {"from": "gpt", "value": "I am {{name}}, made by {{author}}."},
]


def write_json(tmp_path, name: str, records) -> str:
    (tmp_path / name).write_text(json.dumps(records))
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "records",
    [
        [
            {"instruction": "2+2?", "input": "", "chosen": "4", "rejected": "5"}
        ],  # LLaMA-Factory alpaca ranking
        [
            {
                "conversations": CHAT[:1],
                "chosen": {"from": "gpt", "value": "4"},
                "rejected": {"from": "gpt", "value": "5"},
            }
        ],
    ],
    ids=["alpaca", "sharegpt"],
)
def test_preference_pairs_are_refused_as_preference_data(tokenizer, config, tmp_path, records):
    path = write_json(tmp_path, "dpo.json", records)
    with pytest.raises(
        DataError,
        match=r"dpo.json: record 0 is preference data \(a 'chosen' and a 'rejected' "
        r"answer, for DPO or ORPO\), which tuneforge does not train; it trains "
        r"supervised fine-tuning, so keep only the chosen answer",
    ):
        prepare_examples(path, tokenizer, config())


def test_kto_records_are_refused_as_kto_data(tokenizer, config, tmp_path):
    records = [
        {"instruction": "Hi", "output": "Hello", "label": True},
        {"instruction": "Hi", "output": "Go away", "label": False},
    ]
    with pytest.raises(
        DataError,
        match=r"kto.json: record 0 is KTO data \(answers marked good or bad by a "
        r"true/false 'label'\), which tuneforge does not train",
    ):
        prepare_examples(write_json(tmp_path, "kto.json", records), tokenizer, config())
    classified = [
        {"text": "good film", "label": True},
        {"text": "bad film", "label": False},
    ]  # no answer: not KTO
    assert prepare_examples(write_json(tmp_path, "c.json", classified), tokenizer, config()).shape == "text"


def test_multimodal_records_are_refused_as_multimodal_data(tokenizer, config, tmp_path):
    records = [
        {
            "messages": [
                {"role": "user", "content": "<image>What is this?"},
                {"role": "assistant", "content": "A cat."},
            ],
            "images": ["cat.png"],
        }
    ]
    with pytest.raises(
        DataError,
        match=r"mm.json: record 0 is multimodal data \(it has 'images'\), which tuneforge "
        r"does not train: it fine-tunes text-only language models",
    ):
        prepare_examples(write_json(tmp_path, "mm.json", records), tokenizer, config())


def test_placeholders_are_refused_naming_the_record_and_filled_from_a_map(tokenizer, config, tmp_path):
    path = write_json(
        tmp_path,
        "identity.json",
        [{"conversations": [CHAT[0], {"from": "gpt", "value": "Hi."}]}, {"conversations": CHAT}],
    )
    with pytest.raises(
        DataError,
        match=r"1 records hold placeholders \(\{\{author\}\}, \{\{name\}\}\) that would "
        r"be trained as written \(first: record 1\); give their values with "
        r"placeholders: \{author: ..., name: ...\}",
    ):
        prepare_examples(path, tokenizer, config())
    filled = config()
    filled.placeholders = {"name": "Ada", "author": "{{author}}"}  # a name mapped to itself stays as written
    prepared = prepare_examples(path, tokenizer, filled, use_cache=False)
    answer = [
        t
        for t, label in zip(prepared.train[1]["input_ids"], prepared.train[1]["labels"], strict=True)
        if label != -100
    ]
    assert tokenizer.decode(answer) == "I am Ada, made by {{author}}.<|im_end|>\n"


def test_empty_assistant_turns_are_refused_unless_allowed(tokenizer, config, tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Shh"},
                {"role": "assistant", "content": "  "},
            ]
        },
    ]
    path = write_json(tmp_path, "empty.json", records)
    with pytest.raises(
        DataError,
        match=r"1 records have an empty assistant turn \(first: record 1, message 3\), "
        r"which would train the model to end its answer at once",
    ):
        prepare_examples(path, tokenizer, config())
    allowed = config()
    allowed.allow_empty_turns = True
    assert len(prepare_examples(path, tokenizer, allowed).train) == 2


def test_inspect_counts_placeholders_and_empty_turns_instead_of_refusing(tokenizer, config, tmp_path):
    records = [{"conversations": CHAT}, {"conversations": [CHAT[0], {"from": "gpt", "value": ""}]}]
    report = inspect_data(
        write_json(tmp_path, "flagged.json", records), tokenizer, config(), histogram=False
    ).render()
    assert (
        "placeholders: 1 records hold {{author}} (1), {{name}} (1), first records 0; training refuses them "
        "until placeholders gives their values"
    ) in report
    assert "empty assistant turns: 1 records (record 1 message 1); training refuses them unless" in report
