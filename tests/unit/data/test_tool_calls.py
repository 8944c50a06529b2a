"""Tool-call and structured chat data: tool calls carry loss, tool results do not, token by token."""

import copy
import json

import pytest

from tuneforge.data.chat import chat_conversation, chat_messages, render_chat, supports_tools
from tuneforge.data.examples import prepare_examples
from tuneforge.data.tokenization import IGNORE_INDEX
from tuneforge.errors import DataError

WEATHER_TOOL = {
    "name": "weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# LLaMA-Factory's glaive_toolcall_en_demo.json shape: ShareGPT turns, tools as a JSON string.
GLAIVE = {
    "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": '{"celsius": 4}'},
        {"from": "gpt", "value": "It is 4 C."},
    ],
    "tools": json.dumps([WEATHER_TOOL]),
}
# The same conversation as OpenAI writes it: tool_calls with JSON-string arguments, a tool message, text parts.
OPENAI = {
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 4}'},
        {"role": "assistant", "content": "It is 4 C."},
    ],
    "tools": [{"type": "function", "function": WEATHER_TOOL}],
}
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
# Knows tools: lists them in a system turn and writes each call itself.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}"
    "{% for c in m.tool_calls %}CALL {{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expected_row(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    input_ids, labels = [], []
    for text, trained in segments:
        input_ids += ids(tokenizer, text)
        labels += ids(tokenizer, text) if trained else [IGNORE_INDEX] * len(ids(tokenizer, text))
    return input_ids, labels


@pytest.mark.parametrize("record", [GLAIVE, OPENAI], ids=["sharegpt", "openai"])
def test_tool_call_is_trained_and_tool_result_is_not(tokenizer, config, tmp_path, record):
    (tmp_path / "tools.jsonl").write_text(json.dumps(record) + "\n")
    prepared = prepare_examples(tmp_path / "tools.jsonl", tokenizer, config(cutoff_len=256))
    system = (
        "<|im_start|>system\nYou can call these tools:\n<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>\n"
        'To call one, reply with <tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n'
        "</tool_call>; its result comes back in <tool_response></tool_response>.<|im_end|>\n"
    )
    input_ids, labels = expected_row(
        tokenizer,
        [
            (system + "<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n", False),
            (CALL, True),
            (
                '<|im_start|>user\n<tool_response>\n{"celsius": 4}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
                False,
            ),
            ("It is 4 C.<|im_end|>\n", True),
        ],
    )
    assert prepared.shape == "chat" and prepared.report["tool_records"] == 1
    assert prepared.train[0]["input_ids"] == input_ids and prepared.train[0]["labels"] == labels


def test_default_tokenizer_template_has_no_tool_support(tokenizer):
    assert not supports_tools(tokenizer)  # SmolLM2 ignores tools=: the default rendering above stands in


def test_a_template_with_tool_support_gets_tools_and_calls_natively(tokenizer):
    tool_tokenizer = copy.deepcopy(tokenizer)
    tool_tokenizer.chat_template = TOOL_TEMPLATE
    assert supports_tools(tool_tokenizer)
    messages, tools = chat_conversation(GLAIVE, 0)
    segments = render_chat(messages, tool_tokenizer, train_on_source=False, tools=tools)
    assert segments == [
        (
            "<|im_start|>system\nTools: weather<|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>"
            "\n<|im_start|>assistant\n",
            False,
        ),
        ("CALL weather(Oslo)<|im_end|>\n", True),
        ('<|im_start|>tool\n{"celsius": 4}<|im_end|>\n<|im_start|>assistant\n', False),
        ("It is 4 C.<|im_end|>\n", True),
    ]


def test_parallel_tool_results_share_one_context_turn(tokenizer):
    calls = json.dumps(
        [
            {"name": "weather", "arguments": {"city": "Oslo"}},
            {"name": "weather", "arguments": {"city": "Rome"}},
        ]
    )
    record = {
        "conversations": [
            {"from": "human", "value": "Oslo and Rome?"},
            {"from": "function_call", "value": calls},
            {"from": "observation", "value": "4"},
            {"from": "observation", "value": "19"},
            {"from": "gpt", "value": "4 and 19."},
        ]
    }
    segments = render_chat(chat_messages(record, 0), tokenizer, train_on_source=False)
    trained = [text for text, loss in segments if loss]
    assert trained[0].count("<tool_call>") == 2 and trained[1] == "4 and 19.<|im_end|>\n"
    assert (
        "<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\n19\n</tool_response><|im_end|>"
        in "".join(text for text, loss in segments if not loss)
    )


def test_unknown_roles_are_refused_with_the_roles_tuneforge_knows():
    record = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "narrator", "content": "x"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    with pytest.raises(
        DataError,
        match=r"record 3, message 1 has role 'narrator', which tuneforge does not know; "
        r"the roles it trains are system, user \(human\), assistant",
    ):
        chat_conversation(record, 3)


def test_content_parts_are_joined_and_weights_and_system_are_read(tokenizer):
    record = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, "there"]},
            {"role": "assistant", "content": "Ignored greeting", "weight": 0},
            {"role": "user", "content": "Again", "loss_weight": 1},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}], "loss_weight": 1},
        ],
    }
    messages, tools = chat_conversation(record, 0)
    assert messages[0] == {"role": "system", "content": "Be brief."} and tools == []
    assert messages[1]["content"] == "Hi\nthere" and messages[2]["trained"] is False
    segments = render_chat(messages, tokenizer, train_on_source=False)
    assert [text for text, loss in segments if loss] == ["Hello<|im_end|>\n"]
    with pytest.raises(DataError, match="record 0, message 0 has weight 0.5; tuneforge trains a turn fully"):
        chat_conversation({"messages": [{"role": "assistant", "content": "x", "weight": 0.5}]}, 0)


def test_an_image_part_is_refused_as_multimodal():
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    with pytest.raises(
        DataError,
        match="record 0, message 0 is multimodal data \\(it has a content part of type "
        "'image_url'\\), which tuneforge does not train",
    ):
        chat_conversation(record, 0)


def test_a_function_call_that_is_not_json_is_named():
    record = {
        "conversations": [
            {"from": "human", "value": "x"},
            {"from": "function_call", "value": "weather(Oslo)"},
        ]
    }
    with pytest.raises(DataError, match="record 0, message 1 should hold a tool call in JSON"):
        chat_conversation(record, 0)
