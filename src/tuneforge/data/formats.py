"""Shapes of structured data and how a record becomes text segments that do or do not carry loss.

    from tuneforge.data.formats import load_format, render_formatted
    fmt = load_format("alpaca-format")               # a shipped name or a path to a format file
    segments = render_formatted({"instruction": "Add 2+2", "output": "4"}, fmt, train_on_source=False)
    # [("Below is an instruction ...### Response:\\n", False), ("4", True)]

A *format file* (text-generation-webui's, seed 003) maps comma-separated key sets to templates with %key%
placeholders; a record uses the template whose key set equals the set of its non-empty string keys. The answer
is the last placeholder's value and everything after it; the rest is the prompt, which carries no loss unless
`train_on_source`. Chat records (chat.py) are rendered by the tokenizer's own chat template; only assistant turns
carry loss.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tuneforge.data.chat import Segment, chat_messages, render_chat  # chat records live in chat.py
from tuneforge.errors import DataError

PLACEHOLDER = re.compile(r"%([^%\s]+)%")
ANSWER_KEYS = frozenset({"output", "response", "answer", "completion", "chosen"})  # what a record teaches
__all__ = [
    "FormatFile",
    "check_formatted",
    "chat_messages",
    "detect_record_shape",
    "input_output_pair",
    "labelled_segments",
    "load_format",
    "render_chat",
    "render_formatted",
    "shipped_formats",
]


@dataclass
class FormatFile:
    """A loaded format file: templates by key set, and where it came from (for the preview)."""

    name: str
    templates: dict[frozenset[str], tuple[str, str]]  # key set -> (key set as written, template)

    def describe(self) -> str:
        return f"{self.name} ({' | '.join(written for written, _ in self.templates.values())})"


def shipped_formats() -> list[str]:
    folder = resources.files("tuneforge") / "resources" / "formats"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_format(spec: str | None) -> FormatFile:
    """Read a format file by path or shipped name (default: alpaca-format) and check every placeholder."""
    spec = spec or "alpaca-format"
    path = Path(spec).expanduser()
    if path.is_file():
        text, name = path.read_text(encoding="utf-8"), str(path)
    elif spec.removesuffix(".json") in shipped_formats():
        name = spec.removesuffix(".json")
        text = (resources.files("tuneforge") / "resources" / "formats" / f"{name}.json").read_text(
            encoding="utf-8"
        )
    else:
        raise DataError(
            f"format file '{spec}' does not exist; give a path or one of the shipped formats: "
            f"{', '.join(shipped_formats())}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{name}:{error.lineno}:{error.colno}: malformed JSON in format file: {error.msg}"
        ) from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) for v in data.values()):
        raise DataError(
            f"format file {name} must be a JSON object mapping key sets to template strings, e.g. "
            '{"instruction,output": "User: %instruction%\\nAssistant: %output%"}'
        )
    templates = {}
    for written, template in data.items():
        keys = frozenset(k.strip() for k in written.split(",") if k.strip())
        missing = [p for p in PLACEHOLDER.findall(template) if p not in keys]
        if missing:
            raise DataError(
                f"format file {name}: the template for '{written}' uses %{missing[0]}%, which none of "
                f"its keys ({', '.join(sorted(keys))}) supplies"
            )
        if not PLACEHOLDER.search(template):
            raise DataError(f"format file {name}: the template for '{written}' has no %key% placeholder")
        # a key left out is ignored (an id column, say), but not the answer: the last placeholder is what the
        # model learns to write, so the instruction would be trained as the answer
        unused = sorted((keys - set(PLACEHOLDER.findall(template))) & ANSWER_KEYS)
        if unused:
            raise DataError(
                f"format file {name}: the template for '{written}' never uses %{unused[0]}%, so every such "
                f"record's answer would be dropped and the text before it trained as the answer; add "
                f"%{unused[0]}% where the answer goes"
            )
        templates[keys] = (written, template)
    return FormatFile(name, templates)


def present_keys(record: dict) -> frozenset[str]:
    """The keys whose values are non-empty strings: what picks a record's template (as in text-generation-webui)."""
    return frozenset(k for k, v in record.items() if isinstance(v, str) and v.strip())


def check_formatted(
    records: list[dict], fmt: FormatFile, label: str = "records", indexes: list[int] | None = None
) -> dict[str, int]:
    """How many records use each template; DataError naming the first records that match none, by their
    `indexes` in the data as read (the records left after cleaning are a subset)."""
    usage = {written: 0 for written, _ in fmt.templates.values()}
    unmatched = []
    for position, record in enumerate(records):
        match = fmt.templates.get(present_keys(record))
        if match is None:
            unmatched.append(position)
        else:
            usage[match[0]] += 1
    if unmatched:
        first = unmatched[0]
        index = (lambda position: indexes[position]) if indexes else (lambda position: position)
        shown = ", ".join(str(index(i)) for i in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        has = ", ".join(sorted(present_keys(records[first]))) or "none"
        need = " or ".join(written for written, _ in fmt.templates.values())
        keys = present_keys(records[first])
        covered = max((t for t in fmt.templates if t < keys), key=len, default=None)
        hint = (
            f"; its extra keys ({', '.join(sorted(keys - covered))}) are in no template: drop them from the "
            f"records, or add a template for '{','.join(sorted(keys))}' to a copy of the format file (it may "
            "leave them out)"
            if covered
            else ""
        )
        raise DataError(
            f"{len(unmatched)} of {len(records)} {label} match no template of {fmt.name} (record "
            f"indexes {shown}); record {index(first)} has non-empty keys: {has}, but the templates need "
            f"exactly {need}{hint}"
        )
    return usage


def render_formatted(record: dict, fmt: FormatFile, train_on_source: bool) -> list[Segment]:
    """The record through its template, split before the last placeholder into (prompt, answer)."""
    _, template = fmt.templates[present_keys(record)]
    last = list(PLACEHOLDER.finditer(template))[-1]

    def fill(part: str) -> str:  # one pass, so a value containing '%key%' is never substituted again
        return PLACEHOLDER.sub(lambda m: str(record[m.group(1)]), part)

    prompt, answer = fill(template[: last.start()]), fill(template[last.start() :])
    return [(prompt, train_on_source), (answer, True)] if prompt else [(answer, True)]


def input_output_pair(record: dict, index: int) -> tuple[str, str]:
    """(input, output) of a QLoRA-style record (seed 002); both must be strings.

    An `instruction` is joined before the input with a newline, as LLaMA-Factory joins Alpaca's two fields;
    either may then be missing.
    """
    instruction, source, target = record.get("instruction"), record.get("input"), record.get("output")
    if isinstance(instruction, str) and instruction.strip():
        source = "\n".join(part for part in (instruction, source) if isinstance(part, str) and part)
    if not isinstance(source, str) or not isinstance(target, str) or not target.strip():
        has = ", ".join(sorted(present_keys(record))) or "none"
        raise DataError(
            f"record {index} needs string 'input' (or 'instruction') and non-empty 'output' keys for "
            f"input_output data; it has non-empty keys: {has}"
        )
    return source, target


def labelled_segments(record: dict, index: int) -> list[Segment]:
    """axolotl's input_output records: {"segments": [{"text": ..., "label": true/false}]}, label = carries loss."""
    segments = record["segments"]
    if not segments or not all(
        isinstance(s, dict) and isinstance(s.get("text"), str) and isinstance(s.get("label", True), bool)
        for s in segments
    ):
        raise DataError(
            f"record {index}: each of its segments needs a string 'text' and a true/false 'label' "
            '(whether it carries loss), e.g. {"text": "Hi", "label": false}'
        )
    return [(s["text"], s.get("label", True)) for s in segments]


# The keys that pick a shape. A record key one typo away from one of them (instrution, ouput) would otherwise be
# ignored without a word: its text never reaches training.
SHAPE_KEYS = ("instruction", "input", "output", "text", "messages", "conversations", "segments", "system")


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions): how many typos apart two keys are."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def misspelled_shape_key(key: str) -> str | None:
    """The shape key that `key` looks like a typo of (1 edit for short keys, 2 for longer ones), or None. A
    shape key with a suffix (conversation_id, input_0, instruction_id) is a name of its own, not a typo."""
    lowered = key.lower()
    if lowered in SHAPE_KEYS and key != lowered:
        return lowered  # Text, Instruction: a capitalised CSV header
    for shape_key in SHAPE_KEYS:
        stem = shape_key.rstrip("s")  # message_id, conversation_id as well as input_0
        if lowered.startswith(stem) and lowered[len(stem) : len(stem) + 1] in tuple("_-0123456789"):
            return None
    near = [(d, k) for k in SHAPE_KEYS if 0 < (d := _edits(lowered, k)) <= (1 if len(k) <= 5 else 2)]
    return min(near)[1] if near else None


def refuse_misspelled_keys(records: list[dict], origin: str = "the records") -> None:
    """DataError naming the first record key that looks like a misspelling of a key that picks a shape."""
    seen: set[str] = set()
    for index, record in enumerate(records):
        for key in record.keys() - seen:
            seen.add(key)
            meant = None if key in SHAPE_KEYS else misspelled_shape_key(key)
            if meant and meant not in record:
                raise DataError(
                    f"{origin}, record {index}: key '{key}' looks like a misspelling of '{meant}', so its "
                    f"text would not be trained on; rename it to '{meant}' (or, if the name is meant, pick the "
                    "shape yourself: format with text_column, or a format_file)"
                )


def detect_record_shape(
    records: list[dict], text_column: str | None, format_file: str | None, origin: str = "the records"
) -> str:
    """Pick the shape of structured records from their keys; the preview states the choice."""
    sample = records[:200]
    keys = frozenset().union(*(present_keys(r) for r in sample))
    if format_file:
        return "formatted"
    if any(isinstance(r.get("messages", r.get("conversations")), list) for r in sample):
        return "chat"
    if text_column:
        return "text"
    refuse_misspelled_keys(sample, origin)
    if any(isinstance(r.get("segments"), list) for r in sample):
        return "input_output"
    if {"instruction", "output"} <= keys:
        return "formatted"
    if {"input", "output"} <= keys:
        return "input_output"
    if "text" in keys:
        return "text"
    raise DataError(
        f"cannot tell the shape of these records (keys: {', '.join(sorted(keys)) or 'none'}); set "
        "format (formatted with a format_file, input_output, chat or text with text_column)"
    )
