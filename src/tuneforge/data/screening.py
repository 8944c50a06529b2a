"""Screen records before they are shaped: refuse by name what tuneforge does not train, flag what looks unfinished.

    from tuneforge.data.screening import refuse_untrained_kinds
    refuse_untrained_kinds([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], "pairs.json")
    # DataError: pairs.json: record 0 is preference data (a 'chosen' and a 'rejected' answer ...

Preference pairs (DPO/ORPO), KTO records (a true/false `label`) and multimodal records (`images`, `videos`,
`audios`) each get one sentence naming the kind and what tuneforge trains instead, before any shape is
guessed. LLaMA-Factory `{{placeholders}}` and empty assistant turns are counted into the report (the preview
shows them) and refused by `refuse_flagged` unless the config allows them.
"""

from __future__ import annotations

import re

from tuneforge.errors import DataError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")  # LLaMA-Factory's identity data: "I am {{name}}"
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
ANSWER_KEYS = {"output", "completion", "response", "answer", "messages", "conversations"}
SHOWN = 5  # record indexes named in a message


def multimodal_refusal(where: str, what: str) -> str:
    return (
        f"{where} is multimodal data (it has {what}), which tuneforge does not train: it fine-tunes text-only "
        "language models; remove the media (and any <image> tags in the text) to train on the text alone"
    )


def refuse_untrained_kinds(records: list[dict], label: str) -> None:
    """DataError, in one sentence naming the first such record, for preference, KTO or multimodal records."""
    for index, record in enumerate(records):
        where = f"{label}: record {index}"
        if "chosen" in record and "rejected" in record:
            raise DataError(
                f"{where} is preference data (a 'chosen' and a 'rejected' answer, for DPO or ORPO), "
                "which tuneforge does not train; it trains supervised fine-tuning, so keep only the "
                "chosen answer (as 'output', or as the last assistant message) to train on it"
            )
        kto_tag = record.get("label", record.get("kto_tag"))
        if isinstance(kto_tag, bool) and ANSWER_KEYS & set(
            record
        ):  # a bare text+label is classification data
            raise DataError(
                f"{where} is KTO data (answers marked good or bad by a true/false 'label'), which "
                "tuneforge does not train; it trains supervised fine-tuning on every answer it is "
                "given, so keep only the records labelled true and remove the 'label' key"
            )
        media = [key for key in MEDIA_KEYS if record.get(key) not in (None, "", [], {})]
        if media:
            raise DataError(multimodal_refusal(where, f"'{media[0]}'"))


def fill_placeholders(records: list[dict], values: dict | None) -> list[dict]:
    """Every {{name}} with a value in `values` replaced, in every string of every record."""
    if not values:
        return records
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise DataError(
            'placeholders must map names to strings, e.g. {"name": "Ada", "author": "Forge Labs"}'
        )

    def fill(value):
        if isinstance(value, str):
            return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return [fill(r) for r in records]


def count_placeholders(records: list[dict], values: dict | None = None) -> dict:
    """{'records': how many hold a {{name}} without a value, 'first': their indexes (up to 5), 'names': {name: n}}.

    A name that `values` maps (to itself, say) is filled already and not counted.
    """
    from tuneforge.data.cleaning import record_text

    names: dict[str, int] = {}
    indexes = []
    for index, record in enumerate(records):
        found = set(PLACEHOLDER.findall(record_text(record))) - set(values or ())
        if found:
            indexes.append(index)
            for name in found:
                names[name] = names.get(name, 0) + 1
    return {"records": len(indexes), "first": indexes[:SHOWN], "names": dict(sorted(names.items()))}


def count_empty_turns(records: list[dict]) -> dict:
    """{'records': how many chat records have an assistant turn with no text and no tool call, 'first': [[i, turn]]}."""
    from tuneforge.data.chat import chat_messages

    first: list[list] = []
    count = 0
    for index, record in enumerate(records):
        messages = chat_messages(record, index)
        turns = [
            t
            for t, m in enumerate(messages)
            if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls")
        ]
        if turns:
            count += 1
            if len(first) < SHOWN:
                first.append([index, turns[0]])
    return {"records": count, "first": first}


def refuse_flagged(report: dict, config) -> None:
    """DataError for placeholders without values and empty assistant turns, unless the config allows them."""
    placeholders = report.get("placeholders") or {}
    if placeholders.get("records"):
        names = ", ".join(f"{{{{{name}}}}}" for name in placeholders["names"])
        example = ", ".join(f"{name}: ..." for name in placeholders["names"])
        raise DataError(
            f"{placeholders['records']} records hold placeholders ({names}) that would be trained "
            f"as written (first: record {placeholders['first'][0]}); give their values with "
            f"placeholders: {{{example}}} (map a name to '{{{{name}}}}' to keep it as written)"
        )
    empty = report.get("empty_turns") or {}
    if empty.get("records") and not getattr(config, "allow_empty_turns", False):
        index, turn = empty["first"][0]
        raise DataError(
            f"{empty['records']} records have an empty assistant turn (first: record {index}, message "
            f"{turn}), which would train the model to end its answer at once; fill or remove those "
            "turns, or set allow_empty_turns: true if that is what you mean"
        )
