"""How an axolotl or LLaMA-Factory recipe names its data, read as tuneforge's data keys.

    from pathlib import Path
    from tuneforge.foreign_datasets import axolotl_dataset
    from tuneforge.foreign_recipes import RecipeReading
    reading = RecipeReading("axolotl", "recipe.yml", Path("."))
    axolotl_dataset(reading, "datasets", [{"path": "train.jsonl", "type": "alpaca"}], {})
    print(reading.lines)  # ['datasets[0].path: train.jsonl -> data', 'datasets[0].type: alpaca -> format: ...']

One local data file or folder, in a shape tuneforge reads (alpaca, chat, text, input/output), becomes `data`
(or `validation_data`) and `format`; a hub or remote dataset, several datasets, preference or multimodal data
and renamed chat fields are refused on the reading, naming what to give instead. tuneforge.foreign_recipes
calls these readers for the dataset keys and owns the RecipeReading they write into.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError

if TYPE_CHECKING:  # only for the type: foreign_recipes imports the readers of this module
    from tuneforge.foreign_recipes import RecipeReading

# fmt: off
AXOLOTL_TYPES = {"alpaca": {"format": "formatted", "format_file": "alpaca-format"}, "sharegpt": {"format": "chat"},
                 "chat_template": {"format": "chat"}, "completion": {"format": "text"},
                 "pretrain": {"format": "text"}, "input_output": {"format": "input_output"}}
# What tuneforge's chat reader accepts for axolotl's and LLaMA-Factory's field and tag settings.
CHAT_FIELDS = {"field_messages": ("messages", "conversations"), "message_field_role": ("role", "from"),
               "message_field_content": ("content", "value"), "messages": ("conversations", "messages"),
               "role_tag": ("from", "role"), "content_tag": ("value", "content"), "user_tag": ("human", "user"),
               "assistant_tag": ("gpt", "assistant"), "observation_tag": ("observation", "tool"),
               "function_tag": ("function_call",), "system_tag": ("system",), "system": ("system",),
               "tools": ("tools",), "prompt": ("instruction",), "query": ("input",), "response": ("output",),
               "history": ("history",)}
NOT_TRAINED = {"chosen": "preference data (DPO/ORPO)", "rejected": "preference data (DPO/ORPO)",
               "kto_tag": "KTO data", "images": "multimodal data", "videos": "multimodal data",
               "audios": "multimodal data"}
REMOTE = ("hf://", "s3://", "gs://", "gcs://", "http://", "https://", "az://", "abfs://", "adl://", "oci://")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DATA_WHY = {
    "remote": "is not a local file or folder (a hub or remote dataset?); tuneforge trains on local files: "
              "download it and give its path",
    "several": "but tuneforge trains on one data file or folder: merge them into one file of one shape, or "
               "keep one",
    "type": "is not a data shape tuneforge reads (no type: pre-tokenized); it reads alpaca, sharegpt, "
            "chat_template, completion and input_output: convert the records, or write a format_file",
    "roles": "trains other roles; tuneforge trains the assistant turns, or every token with train_on_source",
    "ranking": "is preference data (ranking: true), which tuneforge does not train",
}
# fmt: on


def local_path(reading: RecipeReading, key: str, text: str) -> str | None:
    """`text` when it names a local file or folder (here, else beside the recipe); None (refused) if remote."""
    if not Path(text).expanduser().exists() and (reading.base_dir / text).exists():
        return str(reading.base_dir / text)
    if text.startswith(REMOTE) or (not Path(text).expanduser().exists() and HUB_ID.match(text)):
        return reading.refuse(key, text, DATA_WHY["remote"])
    return text


def columns_readable(reading: RecipeReading, key: str, mapping: Mapping[str, Any]) -> bool:
    """False (and refused) when a column or tag is data tuneforge does not train, or a name it does not read."""
    for name, column in mapping.items():
        if name in NOT_TRAINED:
            return reading.refuse(
                f"{key}.{name}", column, f"is {NOT_TRAINED[name]}, which tuneforge does not train"
            )
        if name in CHAT_FIELDS and str(column) not in CHAT_FIELDS[name]:
            known = " or ".join(CHAT_FIELDS[name])
            return reading.refuse(f"{key}.{name}", column, f"renames a field tuneforge reads as {known}: "
                                  "rename it in the data file")  # fmt: skip
    return True


def axolotl_dataset(reading: RecipeReading, key: str, value: Any, recipe: Mapping[str, Any]) -> None:
    """datasets, test_datasets, pretraining_dataset: one local entry with a type tuneforge reads."""
    entries = value if isinstance(value, list) else [value]
    if len(entries) != 1:
        return reading.refuse(key, f"{len(entries)} entries", DATA_WHY["several"] + " entry {path, type}")
    entry, where = entries[0], f"{key}[0]"
    if not isinstance(entry, dict) or not entry.get("path"):
        return reading.refuse(where, entry, "has no path; give the local data file as {path: ..., type: ...}")
    files = entry.get("data_files") or []
    files = files if isinstance(files, list) else [files]
    if len(files) > 1:
        return reading.refuse(f"{where}.data_files", files, DATA_WHY["several"])
    local = local_path(reading, f"{where}.path", str(entry["path"]))
    if local is None or not columns_readable(
        reading, where, {k: entry[k] for k in entry if k in CHAT_FIELDS}
    ):
        return None
    target = "validation_data" if key == "test_datasets" else "data"
    reading.set(f"{where}.path", entry["path"], **{target: str(Path(local, *files))})
    kind = entry.get("type", "pretrain" if key == "pretraining_dataset" else None)
    if target == "data" and kind in AXOLOTL_TYPES:
        reading.set(f"{where}.type", kind, **AXOLOTL_TYPES[kind])
    elif target == "data":
        reading.refuse(f"{where}.type", kind, DATA_WHY["type"])
    for name, setting in entry.items():
        at = f"{where}.{name}"
        if name in ("path", "type", "data_files") or setting is None:
            continue
        if name in CHAT_FIELDS or (name == "roles_to_train" and not set(setting) - {"assistant", "gpt"}):
            reading.understood(at, setting, "what tuneforge's chat reader reads")
        elif name == "roles_to_train":
            reading.refuse(at, setting, DATA_WHY["roles"])
        elif name == "field":
            reading.set(at, setting, text_column=setting)
        elif name == "ds_type" or (name == "split" and setting == "train"):
            reading.understood(at, setting, "tuneforge reads the file by its extension")
        else:
            reading.ignored.append(at)
    return None


def dataset_info(dataset_dir: str, base_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """LLaMA-Factory's dataset_info.json in dataset_dir (from here, else from the recipe's folder)."""
    for folder in (Path(dataset_dir), base_dir / dataset_dir):
        info = folder / "dataset_info.json"
        if info.is_file():
            try:
                return json.loads(info.read_text()), folder
            except json.JSONDecodeError as error:
                raise ConfigError(f"{info} is not valid JSON (line {error.lineno}); fix it") from None
    return None


def llamafactory_dataset(reading: RecipeReading, key: str, value: Any, recipe: Mapping[str, Any]) -> None:
    """dataset / eval_dataset: one name of dataset_info.json, or a local file path."""
    names = [n.strip() for n in (value if isinstance(value, list) else str(value).split(",")) if n.strip()]
    if len(names) != 1:
        return reading.refuse(key, value, f"names {len(names)} datasets, {DATA_WHY['several']}")
    name, target = names[0], "data" if key == "dataset" else "validation_data"
    pretraining = recipe.get("stage") == "pt" and target == "data"
    dataset_dir = str(recipe.get("dataset_dir") or "data")
    found = dataset_info(dataset_dir, reading.base_dir)
    if not (found and name in found[0]):
        if "/" not in name and not Path(name).suffix:
            lookup = (
                f"{found[1] / 'dataset_info.json'} has no entry"
                if found
                else f"{dataset_dir}/dataset_info.json does not exist (here or beside the recipe)"
            )
            return reading.refuse(key, name, f"is a LLaMA-Factory dataset name and {lookup}; give dataset the "
                                  "path of a local data file, or dataset_dir the folder of its dataset_info.json")  # fmt: skip
        if (local := local_path(reading, key, name)) is not None:
            reading.set(key, value, **{target: local}, **({"format": "text"} if pretraining else {}))
        return None
    entry, folder = found[0][name], found[1]
    if any(entry.get(hub) for hub in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url")):
        return reading.refuse(key, name, DATA_WHY["remote"])
    if entry.get("ranking"):
        return reading.refuse(key, name, DATA_WHY["ranking"])
    columns = dict(entry.get("columns") or {})
    text_column = columns.pop("prompt", "text") if pretraining else None
    if not columns_readable(reading, f"{key} {name}", {**columns, **(entry.get("tags") or {})}):
        return None
    shape: dict[str, Any] = {"format": "formatted", "format_file": "alpaca-format"}  # LLaMA-Factory's default
    if pretraining:
        shape = {"format": "text", "text_column": text_column}
    elif entry.get("formatting") in ("sharegpt", "openai"):
        shape = {"format": "chat"}
    path = str(folder / str(entry.get("file_name", name)))
    reading.set(key, value, **{target: path}, **(shape if target == "data" else {}))
    return None
