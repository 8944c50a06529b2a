"""Chat records, tool calls included: normalise their messages and render them with the model's chat template.

    from tuneforge.data.chat import chat_conversation, render_chat
    messages, tools = chat_conversation({"conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": '{"celsius": 4}'}, {"from": "gpt", "value": "4 °C."}]}, 0)
    segments = render_chat(messages, tokenizer, train_on_source=False, tools=tools)

Roles: OpenAI's (`role`/`content`, `tool_calls` on assistant messages, `tool` results) and ShareGPT's
(`from`/`value` with human/gpt/system, LLaMA-Factory's function_call/observation). Tool calls are assistant
output and carry loss; tool results are context, like user turns. A template that supports tools gets them
natively (`tools=` and `tool_calls`); any other gets the default rendering below, in the Hermes/Qwen style.
"""

from __future__ import annotations

import contextlib
import json

from tuneforge.data.screening import multimodal_refusal
from tuneforge.errors import DataError

Segment = tuple[str, bool]  # (text, carries loss)
ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}
KNOWN_ROLES = (
    "system, user (human), assistant (gpt, model, bot), tool calls (function_call, or tool_calls on an "
    "assistant message) and tool results (tool, observation, function, ipython)"
)
MEDIA_PARTS = {"image", "image_url", "input_image", "video", "video_url", "audio", "audio_url", "input_audio"}
# The default rendering for chat templates without tool support (documented in docs/data.md).
TOOLS_PROMPT = (
    "You can call these tools:\n<tools>\n{tools}\n</tools>\nTo call one, reply with <tool_call>\n"
    '{{"name": <tool name>, "arguments": <arguments object>}}\n</tool_call>; its result comes back '
    "in <tool_response></tool_response>."
)


def chat_messages(record: dict, index: int) -> list[dict]:
    """The record's messages as [{'role', 'content', ...}] (see chat_conversation), without the tools."""
    return chat_conversation(record, index)[0]


def chat_conversation(record: dict, index: int) -> tuple[list[dict], list[dict]]:
    """(messages, tools): roles mapped to system/user/assistant/tool, tool calls parsed, text parts joined.

    An assistant message may carry `tool_calls` ([{'name', 'arguments'}]) and `trained: False` (OpenAI's
    `weight: 0`, axolotl's `train: false`). A record-level `system` (LLaMA-Factory) becomes the first message.
    """
    messages = record.get("messages", record.get("conversations"))
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"record {index} has no 'messages' list; chat data needs "
            '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}'
        )
    out = [_message(message, index, turn) for turn, message in enumerate(messages)]
    system = record.get("system")
    if isinstance(system, str) and system.strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"record {index} has no assistant message, so nothing in it would carry loss")
    return out, _tools(record.get("tools"), index)


def _message(message, index: int, turn: int) -> dict:
    where = f"record {index}, message {turn}"
    if not isinstance(message, dict):
        raise DataError(f"{where} is not an object with role and content")
    written = message.get("role", message.get("from"))
    role = ROLES.get(str(written).lower()) if isinstance(written, str) else None
    if role is None:
        raise DataError(
            f"{where} has role {written!r}, which tuneforge does not know; the roles it trains are "
            f"{KNOWN_ROLES}"
        )
    content = _content(message.get("content", message.get("value")), where)
    out: dict[str, object] = {"role": role, "content": content}
    calls = message.get("tool_calls") or message.get("function_call")
    if str(written).lower() == "function_call":
        out["content"], calls = "", _parse_json(content, where, "a tool call")
    if calls is not None and role == "assistant":
        out["tool_calls"] = _tool_calls(calls, where)
    elif content is None:
        raise DataError(
            f"{where} needs a string 'content' (or a list of text parts); it has keys: "
            f"{', '.join(sorted(message))}"
        )
    if role == "assistant":
        out["content"] = out["content"] or ""
        out["trained"] = _trained(message, where)
    for key in ("tool_call_id", "name"):  # tool results: templates may show which call they answer
        if role == "tool" and isinstance(message.get(key), str):
            out[key] = message[key]
    return out


def _content(content, where: str) -> str | None:
    """A string as it is; a list of text parts (OpenAI style) joined with newlines; None when absent."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        kind = part.get("type", "text") if isinstance(part, dict) else "text"
        if kind in MEDIA_PARTS:
            raise DataError(multimodal_refusal(where, f"a content part of type '{kind}'"))
        text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(text, str):
            raise DataError(
                f"{where} has a content part tuneforge cannot read ({json.dumps(part)[:60]}); "
                'give text parts as {"type": "text", "text": ...}'
            )
        texts.append(text)
    return "\n".join(texts)


def _trained(message: dict, where: str) -> bool:
    for key in ("weight", "loss_weight", "train"):
        if key in message:
            if message[key] not in (0, 1, True, False):
                raise DataError(
                    f"{where} has {key} {message[key]!r}; tuneforge trains a turn fully (1) or not at all (0)"
                )
            return bool(message[key])
    return True


def _parse_json(value, where: str, what: str):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise DataError(
            f'{where} should hold {what} in JSON, e.g. {{"name": "get_weather", "arguments": '
            f'{{"city": "Oslo"}}}}; it is not valid JSON ({error.msg})'
        ) from None


def _tool_calls(calls, where: str) -> list[dict]:
    """[{'name', 'arguments'}] from LLaMA-Factory's {name, arguments} (or a list of them) or OpenAI's tool_calls."""
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = {**call["function"], **({"id": call["id"]} if "id" in call else {})}
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise DataError(
                f"{where} has a tool call without a name ({json.dumps(call)[:60]}); write it as "
                '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            )
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: kept as the string it is
                arguments = json.loads(arguments)
        out.append(
            {"name": call["name"], "arguments": arguments, **({"id": call["id"]} if "id" in call else {})}
        )
    return out


def _tools(tools, index: int) -> list[dict]:
    """Tool definitions in the {"type": "function", "function": {...}} form chat templates read."""
    if tools is None or tools == "":
        return []
    tools = _parse_json(tools, f"record {index}, tools", "a list of tool definitions")
    tools = tools if isinstance(tools, list) else [tools]
    out = []
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            out.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append({"type": "function", "function": tool})
        else:
            raise DataError(
                f"record {index}: a tool definition needs a name ({json.dumps(tool)[:60]}); write it "
                'as {"name": ..., "description": ..., "parameters": {...}}'
            )
    return out


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions and tool calls itself."""
    template = getattr(tokenizer, "chat_template", None) or ""
    texts = template.values() if isinstance(template, dict) else [template]
    return any("tools" in text and "tool_calls" in text for text in texts)


def template_messages(messages: list[dict], tools: list[dict], native: bool) -> list[dict]:
    """The messages as the chat template gets them: natively, or in the default rendering (tools as text)."""
    if native:
        return [
            {k: v for k, v in m.items() if k != "trained"}
            | (
                {
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                            **({"id": c["id"]} if "id" in c else {}),
                        }
                        for c in m["tool_calls"]
                    ]
                }
                if m.get("tool_calls")
                else {}
            )
            for m in messages
        ]
    out: list[dict] = []
    if tools:
        listed = TOOLS_PROMPT.format(
            tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        )
        system = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
        out.append({"role": "system", "content": system + listed})
        messages = messages[1:] if system else messages
    for message in messages:
        content = message["content"]
        if message.get("tool_calls"):
            calls = [
                f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']}, ensure_ascii=False)}"
                "\n</tool_call>"
                for c in message["tool_calls"]
            ]
            content = "\n".join(([content] if content else []) + calls)
        if message["role"] == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_results"):  # results of parallel calls share one user turn
                out[-1]["content"] += "\n" + response
                continue
            out.append({"role": "user", "content": response, "tool_results": True})
            continue
        out.append({"role": message["role"], "content": content, "trained": message.get("trained", True)})
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def render_chat(
    messages: list[dict],
    tokenizer,
    train_on_source: bool,
    tools: list[dict] | None = None,
) -> list[Segment]:
    """Segments of the chat-template rendering; each trained assistant turn (with its end marker) carries loss.

    Each assistant turn is found as the difference between rendering the conversation up to it with a
    generation prompt and rendering it including the turn, so any template that renders incrementally works.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "this model's tokenizer has no chat template; use format: formatted with a format file "
            "such as alpaca-chat-format instead"
        )
    native = supports_tools(tokenizer)
    shown = template_messages(messages, tools or [], native)
    trained = [m.get("trained", True) for m in (messages if native else shown)]
    shown = [{k: v for k, v in m.items() if k != "trained"} for m in shown]

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            shown[:upto],
            tokenize=False,
            add_generation_prompt=generation_prompt,
            tools=(tools or None) if native else None,
        )

    full = render(len(shown), False)
    segments: list[Segment] = []
    done = 0  # characters of `full` already in segments
    for i, message in enumerate(shown):
        if message["role"] != "assistant":
            continue
        before, through = render(i, True), render(i + 1, False)
        if not (full.startswith(through) and through.startswith(before) and len(before) >= done):
            raise DataError(
                "this model's chat template does not render conversations turn by turn, so assistant "
                "turns cannot be located; use format: formatted with a format file instead"
            )
        if len(before) > done:
            segments.append((full[done : len(before)], train_on_source))
        segments.append((full[len(before) : len(through)], trained[i] or train_on_source))
        done = len(through)
    if done < len(full):
        segments.append((full[done:], train_on_source))
    return segments
