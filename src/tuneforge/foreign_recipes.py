"""Recipes from other tools: an axolotl or LLaMA-Factory fine-tuning YAML read as tuneforge keys.

    from tuneforge.config import load_config
    config = load_config("examples/from_other_tools/axolotl_lora.yml")  # the tool is detected by its keys
    print("\\n".join(config.recipe_notes))  # base_model: HuggingFaceTB/SmolLM2-135M -> model, ...

Every key of the recipe is mapped (one line each), ignored (all listed in one warning) or refused (all in one
ConfigError) when it would change what is trained in a way tuneforge cannot honour (a DPO stage, PiSSA, a hub
dataset ...), naming what tuneforge trains instead. Keys the recipe leaves out get the tool's own default
where it differs from tuneforge's (axolotl trains 1 epoch, LLaMA-Factory rank 8), so the run is the recipe's.
The tables below, with the dataset readers of tuneforge.foreign_datasets, are the table in docs/data.md.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, check_range, coerce, field_help, field_names
from tuneforge.errors import ConfigError
from tuneforge.foreign_datasets import axolotl_dataset, llamafactory_dataset

AXOLOTL, LLAMA_FACTORY = "axolotl", "LLaMA-Factory"
TOOLS = (AXOLOTL, LLAMA_FACTORY)
MODEL_KEY = {AXOLOTL: "base_model", LLAMA_FACTORY: "model_name_or_path"}
ARTICLE = {AXOLOTL: "an", LLAMA_FACTORY: "a"}
# fmt: off
# Keys only that tool uses (none is a tuneforge key): two of them, or the model key, name the tool.
SIGNATURE = {
    AXOLOTL: {"base_model", "sequence_len", "num_epochs", "lora_r", "lora_target_modules", "lora_target_linear",
              "adapter", "datasets", "val_set_size", "load_in_4bit", "load_in_8bit", "train_on_inputs",
              "sample_packing", "rl", "pretraining_dataset", "test_datasets", "dataset_prepared_path",
              "special_tokens", "strict", "flash_attention", "wandb_project"},
    LLAMA_FACTORY: {"model_name_or_path", "stage", "finetuning_type", "lora_rank", "lora_target", "dataset",
                    "dataset_dir", "template", "per_device_train_batch_size", "num_train_epochs",
                    "lr_scheduler_type", "val_size", "quantization_bit", "max_samples", "do_train",
                    "overwrite_cache", "preprocessing_num_workers", "train_on_prompt", "eval_dataset"},
}
SHARED = ["gradient_accumulation_steps", "learning_rate", "max_steps", "warmup_steps", "warmup_ratio",
          "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "output_dir",
          "logging_steps", "save_steps", "save_total_limit", "eval_steps", "trust_remote_code", "lora_dropout",
          "neftune_noise_alpha"]
# Keys whose value carries over unchanged under another (or the same) name.
RENAMES = {
    AXOLOTL: {**{k: k for k in SHARED}, "base_model": "model", "sequence_len": "cutoff_len",
              "micro_batch_size": "micro_batch_size", "batch_size": "batch_size", "num_epochs": "epochs",
              "lr_scheduler": "lr_scheduler", "lora_r": "rank", "lora_alpha": "alpha",
              "lora_modules_to_save": "modules_to_save", "peft_layers_to_transform": "layers_to_transform",
              "train_on_inputs": "train_on_source", "sample_packing": "packing", "val_set_size": "validation_split",
              "early_stopping_patience": "early_stopping_patience", "load_best_model_at_end": "load_best_at_end",
              "dataset_processes": "num_proc", "lora_model_dir": "from_adapter", "peft_use_dora": "use_dora",
              "peft_use_rslora": "use_rslora", "loraplus_lr_ratio": "loraplus_lr_ratio"},
    LLAMA_FACTORY: {**{k: k for k in SHARED}, "model_name_or_path": "model", "cutoff_len": "cutoff_len",
                    "per_device_train_batch_size": "micro_batch_size", "num_train_epochs": "epochs",
                    "lr_scheduler_type": "lr_scheduler", "lora_rank": "rank", "lora_alpha": "alpha",
                    "additional_target": "modules_to_save", "val_size": "validation_split", "data_seed": "data_seed",
                    "preprocessing_num_workers": "num_proc", "packing": "packing", "neat_packing": "packing",
                    "train_on_prompt": "train_on_source", "load_best_model_at_end": "load_best_at_end",
                    "adapter_name_or_path": "from_adapter", "use_dora": "use_dora", "use_rslora": "use_rslora",
                    "loraplus_lr_ratio": "loraplus_lr_ratio",
                    "quantization_type": "quant_type", "double_quantization": "double_quant"},
}
# Tool keys spelled like a tuneforge key but meaning something else: ignored, never passed through.
HOMONYMS = {"device", "device_map", "max_length", "tokenizer", "compile", "format"}
# Keys refused when switched on: they change the training in a way tuneforge does not do.
PLAIN_LORA = "tuneforge trains LoRA (also rsLoRA, DoRA and LoRA+) or every weight: remove it"
REFUSED_WHEN_SET = {
    AXOLOTL: {"relora_steps": f"is ReLoRA; {PLAIN_LORA}",
              "unfrozen_parameters": "trains only some parameters; tuneforge trains LoRA or every weight",
              "lisa_n_layers": "is LISA (a few layers at a time); tuneforge trains LoRA or every weight",
              "reward_model": "trains a reward model; tuneforge trains language models on supervised data",
              "process_reward_model": "trains a reward model; tuneforge trains language models on supervised data",
              "resume_from_checkpoint": "names an axolotl checkpoint; tuneforge resumes its own (resume_from: latest)"},
    LLAMA_FACTORY: {"pissa_init": f"is PiSSA; {PLAIN_LORA}",
                    "use_galore": "is GaLore; tuneforge's optimizers are listed under optimizer",
                    "use_apollo": "is APOLLO; tuneforge's optimizers are listed under optimizer",
                    "use_badam": "is BAdam; tuneforge's optimizers are listed under optimizer",
                    "use_llama_pro": "adds layers (LLaMA Pro); tuneforge trains the model's own weights",
                    "mask_history": "trains only the last turn; tuneforge trains every assistant turn",
                    "resume_from_checkpoint": "names a LLaMA-Factory checkpoint; tuneforge resumes its own runs"},
}
# Keys of each tool tuneforge has no use for (ignored; others are ignored too, with a hint for a likely typo).
UNUSED = {
    AXOLOTL: {"strict", "dataset_prepared_path", "eval_sample_packing", "pad_to_sequence_len", "group_by_length",
              "tf32", "flash_attention", "xformers_attention", "sdp_attention", "special_tokens", "tokens",
              "evals_per_epoch", "saves_per_epoch", "eval_batch_size", "wandb_project", "wandb_entity",
              "wandb_name", "wandb_watch", "wandb_log_model", "deepspeed", "fsdp", "fsdp_config", "debug",
              "local_rank", "chat_template", "model_type", "tokenizer_type", "base_model_config",
              "lora_fan_in_fan_out", "loss_watchdog_threshold", "loss_watchdog_patience", "hub_model_id"},
    LLAMA_FACTORY: {"template", "max_samples", "overwrite_cache", "plot_loss", "overwrite_output_dir",
                    "ddp_timeout", "per_device_eval_batch_size", "eval_strategy", "save_strategy", "do_eval",
                    "do_predict", "flash_attn", "cache_dir", "deepspeed", "streaming", "save_only_model"},
}
IGNORED_BECAUSE = {
    "template": "tuneforge renders chat with the model's own chat template",
    "chat_template": "tuneforge renders chat with the model's own chat template",
    "max_samples": "tuneforge trains on every record; shorten the file to match",
    "evals_per_epoch": "give eval_steps",
    "saves_per_epoch": "give save_steps",
    "overwrite_output_dir": "tuneforge never replaces a finished run; delete the folder or give another output_dir",
}
STAGES = {"dpo": "trains on preference pairs (DPO)", "kto": "trains on answers marked good or bad (KTO)",
          "rm": "trains a reward model", "ppo": "trains by reinforcement learning from a reward model (PPO)"}
SUPERVISED = "tuneforge trains supervised fine-tuning (and continued pre-training on text)"
OPTIMIZERS = {"adamw_bnb_8bit": "adamw_8bit", "adamw_hf": "adamw_torch", "adamw_torch_4bit": "adamw_torch"}
UNSET: tuple[Any, ...] = (None, False, "", [], {})
# fmt: on


def show(value: Any) -> str:
    """A value as the YAML file spells it: true/false, null, comma-separated lists."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value)
    return "null" if value is None else str(value)


@dataclass
class RecipeReading:
    """What an other tool's recipe became: tuneforge values, and how each key was read."""

    tool: str
    source: str
    base_dir: Path
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # tuneforge key -> the recipe key it came from
    lines: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    skipped: int = 0  # keys without a value: they ask for nothing

    def set(self, key: str, value: Any, **tuneforge: Any) -> None:
        """`key: value` of the recipe becomes the tuneforge keys `tuneforge`."""
        self.values.update(tuneforge)
        self.origins.update(dict.fromkeys(tuneforge, key))
        if len(tuneforge) == 1 and show(next(iter(tuneforge.values()))) == show(value):
            self.lines.append(f"{key}: {show(value)} -> {next(iter(tuneforge))}")
        else:
            mapped = ", ".join(f"{name}: {show(v)}" for name, v in tuneforge.items())
            self.lines.append(f"{key}: {show(value)} -> {mapped}")

    def understood(self, key: str, value: Any, meaning: str) -> None:
        self.lines.append(f"{key}: {show(value)} -> ({meaning})")

    def refuse(self, key: str, value: Any, why: str) -> Any:
        """Record a key tuneforge cannot honour (all are raised together); returns None, to `return` it."""
        self.refused.append(f"{key}: {show(value)} {why}")
        return None

    def notes(self) -> list[str]:
        """The lines to print: a header, one line per key, then every ignored key in one warning."""
        skipped = f" ({self.skipped} keys without a value skipped)" if self.skipped else ""
        header = f"read {self.source} as {ARTICLE[self.tool]} {self.tool} recipe{skipped}:"
        notes = [header, *(f"  {line}" for line in self.lines)]
        if self.ignored:
            notes.append(
                f"warning: ignored {len(self.ignored)} {self.tool} key{'s' * (len(self.ignored) > 1)} "
                f"that tuneforge does not use: {', '.join(self.ignored)}"
            )
        return notes

    def explain(self, message: str) -> str:
        """A tuneforge ConfigError's message, with the recipe keys behind the tuneforge keys it names."""
        behind = [
            f"{key} is {original}"
            for key, original in self.origins.items()
            if key != original and not original.startswith("(") and re.search(rf"\b{key}\b", message)
        ]
        return message + (
            f" (in the {self.tool} recipe {self.source}: {', '.join(behind)})" if behind else ""
        )


def detect_tool(values: Mapping[str, Any]) -> str | None:
    """axolotl, LLaMA-Factory, or None (a tuneforge config), from the keys alone."""
    keys = set(values)
    for tool in TOOLS:
        if MODEL_KEY[tool] in keys:
            return tool
    names = set(field_names())
    native_only = len([k for k in keys if k in names and not any(k in RENAMES[t] for t in TOOLS)])
    best = max(TOOLS, key=lambda tool: len(keys & SIGNATURE[tool]))
    score = len(keys & SIGNATURE[best])
    return best if score >= 2 and score > native_only else None


def foreign_name(key: str) -> tuple[str, str] | None:
    """(tool, tuneforge key) when `key` is another tool's name for a tuneforge key, e.g. lora_r -> rank."""
    extra = {
        "lora_target": "target_modules",
        "lora_target_modules": "target_modules",
        "lora_target_linear": "target_modules",
        "adapter": "method",
        "finetuning_type": "method",
        "datasets": "data",
        "dataset": "data",
        "quantization_bit": "bits",
        "optim": "optimizer",
    }
    for tool in TOOLS:
        name = RENAMES[tool].get(key) or (extra.get(key) if key in SIGNATURE[tool] | {"optim"} else None)
        if name and name != key:
            return tool, name
    return None


def read_foreign_recipe(
    recipe: Mapping[str, Any],
    tool: str,
    source: str,
    base_dir: Path | None = None,
    given: Collection[str] = (),
) -> RecipeReading:
    """Map `recipe` (the YAML of `tool`) to tuneforge keys; `given` are the keys the caller sets on top
    (they win, so the tool's defaults skip them). Raises one ConfigError naming every refused key."""
    reading = RecipeReading(tool, source, base_dir or Path("."))
    handlers, names = SIMPLE_HANDLERS[tool], set(field_names())
    for key, value in recipe.items():
        key = str(key)
        if value is None:
            reading.skipped += 1
        elif key in DATASET_HANDLERS[tool]:
            DATASET_HANDLERS[tool][key](reading, key, value, recipe)
        elif key in handlers:
            try:
                read = handlers[key](key, value, recipe)
            except Refused as refusal:
                reading.refuse(key, value, str(refusal))
            else:
                if isinstance(read, dict):
                    reading.set(key, value, **read)
                else:
                    reading.understood(key, value, read)
        elif key in REFUSED_WHEN_SET[tool]:
            if value in UNSET:
                reading.understood(key, value, "off, as in tuneforge")
            else:
                reading.refuse(key, value, REFUSED_WHEN_SET[tool][key])
        elif key in RENAMES[tool]:
            reading.set(key, value, **{RENAMES[tool][key]: value})
        elif key in names and key not in HOMONYMS:
            reading.set(key, value, **{key: value})  # a tuneforge key written into the recipe
        else:
            known = [*RENAMES[tool], *handlers, *DATASET_HANDLERS[tool]]
            close = [] if key in UNUSED[tool] else difflib.get_close_matches(key, known, n=1, cutoff=0.85)
            why = IGNORED_BECAUSE.get(key) or (f"did you mean {close[0]}?" if close else None)
            reading.ignored.append(f"{key} ({why})" if why else key)
    if reading.refused:
        raise ConfigError(
            f"{source} is {ARTICLE[tool]} {tool} recipe tuneforge cannot train as written: "
            + "; ".join(reading.refused)
        )
    apply_defaults(reading, recipe, set(given))
    check_values(reading)
    return reading


def apply_defaults(reading: RecipeReading, recipe: Mapping[str, Any], given: set[str]) -> None:
    """The tool's defaults for keys the recipe leaves out, where they differ from tuneforge's."""
    values, tool = reading.values, reading.tool

    def default(tool_key: str, key: str, value: Any, why: str = "") -> None:
        if key not in values and key not in given:
            reading.values[key], reading.origins[key] = value, f"({tool_key} not given)"
            reading.lines.append(f"{tool_key} (not given) -> {key}: {show(value)} ({tool}'s default{why})")

    if tool == AXOLOTL:
        default("adapter", "method", "full", ": without an adapter every weight trains")
        default("num_epochs", "epochs", 1.0)
        default("micro_batch_size", "micro_batch_size", 1)
        default("lr_scheduler", "lr_scheduler", "cosine")
        default("sequence_len", "cutoff_len", 512)
    else:
        default("finetuning_type", "method", "qlora" if recipe.get("quantization_bit") else "lora")
        default("per_device_train_batch_size", "micro_batch_size", 8)
        default("learning_rate", "learning_rate", 5e-5)
        default("cutoff_len", "cutoff_len", 2048)
    if "batch_size" not in values and "batch_size" not in given:
        default("gradient_accumulation_steps", "gradient_accumulation_steps", 1)
    if values.get("method", "lora") in ("lora", "qlora"):
        if tool == LLAMA_FACTORY:
            default("lora_rank", "rank", 8)
            rank = values.get("rank")
            if isinstance(rank, int) and not isinstance(rank, bool):
                default("lora_alpha", "alpha", 2 * rank, ": 2 x rank")
            default("lora_target", "target_modules", ["all-linear"])
        default("lora_dropout", "lora_dropout", 0.0)


def check_values(reading: RecipeReading) -> None:
    """Each mapped value against its tuneforge key's type and range; the error names the recipe's key."""
    hints, fields = typing.get_type_hints(RunConfig), field_help()
    for key, value in reading.values.items():
        try:
            check_range(fields[key], coerce(key, value, hints[key]))
        except ConfigError as error:
            original = reading.origins[key]
            where = f"tuneforge's {key}, " if original != key else ""
            raise ConfigError(
                f"{original} in {reading.source} ({where}{ARTICLE[reading.tool]} {reading.tool} key): {error}"
            ) from None


# ---------------------------------------------------------------------- keys that need more than a rename
class Refused(Exception):
    """A key's value tuneforge cannot honour; the message says why and what it trains instead."""


def refused(why: str) -> Any:
    raise Refused(why)


def precision(key: str, value: Any, recipe: Mapping[str, Any]) -> dict[str, Any] | str:
    """bf16/fp16/pure_bf16: true sets the precision, 'auto' leaves it to the machine, false alone means fp32."""
    if value is True or value == "full":
        return {"precision": "fp16" if key == "fp16" else "bf16"}
    if key == "pure_bf16":
        return "off: bf16 and fp16 set the precision"
    if value == "auto":
        return {"precision": "auto"}
    if value is False and recipe.get("bf16" if key == "fp16" else "fp16") not in (True, "full", "auto"):
        return {"precision": "fp32"}
    return "the other precision key sets the precision"


# A handler gets (key, value, recipe) and returns the tuneforge values, or (in words) what the key means.
Handler = Callable[[str, Any, Mapping[str, Any]], "dict[str, Any] | str"]
WHY = {
    "adapter": "is an adapter tuneforge does not train; it trains lora, qlora or full",
    "quantized_full": "quantizes a model that is not trained with LoRA; tuneforge quantizes the base only for "
    "LoRA (axolotl's adapter: qlora, LLaMA-Factory's finetuning_type: lora)",
    "rl": f"is preference or reinforcement training, which tuneforge does not train; {SUPERVISED}: remove it "
    "and give supervised data (e.g. only the chosen answers)",
    "finetuning_type": "is a method tuneforge does not have; it trains lora, qlora (lora with quantization_bit) "
    "or full",
    "quantization_method": "is a quantization tuneforge does not use; it quantizes with bitsandbytes",
    "do_train": "is not a training recipe; tuneforge train needs do_train: true",
    "layers_pattern": "names several layer lists; tuneforge's layers_pattern takes one",
}
QUANTIZED = ("load_in_4bit", "load_in_8bit")


def lora_or_qlora(value: Any, recipe: Mapping[str, Any]) -> dict[str, Any]:
    quantized = value == "qlora" or any(recipe.get(k) for k in (*QUANTIZED, "quantization_bit"))
    return {"method": "qlora" if quantized else "lora"}


def quantized_base(bits: int) -> Handler:
    def handle(key: str, value: Any, recipe: Mapping[str, Any]) -> dict[str, Any] | str:
        if value is not True:
            return "the base is not quantized"
        return {"bits": bits} if recipe.get("adapter") else refused(WHY["quantized_full"])

    return handle


# fmt: off
COMMON: dict[str, Handler] = {
    "bf16": precision, "fp16": precision,
    "optimizer": lambda k, v, r: {"optimizer": OPTIMIZERS.get(str(v), v)},
}
SIMPLE_HANDLERS: dict[str, dict[str, Handler]] = {
    AXOLOTL: {
        **COMMON,
        "adapter": lambda k, v, r: lora_or_qlora(v, r) if v in ("lora", "qlora") else refused(WHY["adapter"]),
        "load_in_4bit": quantized_base(4), "load_in_8bit": quantized_base(8),
        "lora_target_modules": lambda k, v, r: (
            "covered by lora_target_linear: true" if r.get("lora_target_linear") is True else {"target_modules": v}),
        "lora_target_linear": lambda k, v, r: (
            {"target_modules": ["all-linear"]} if v is True else "lora_target_modules name the modules"),
        "gradient_checkpointing": lambda k, v, r: {
            "gradient_checkpointing": True if v in ("offload", "offload_disk") else v},
        "peft_layers_pattern": lambda k, v, r: (
            {"layers_pattern": v[0] if v else None} if isinstance(v, list) and len(v) < 2
            else {"layers_pattern": v} if not isinstance(v, list) else refused(WHY["layers_pattern"])),
        "dataset_exact_deduplication": lambda k, v, r: {"dedup": "exact" if v is True else "none"},
        "rl": lambda k, v, r: refused(WHY["rl"]),
    },
    LLAMA_FACTORY: {
        **COMMON, "pure_bf16": precision,
        "optim": lambda k, v, r: {"optimizer": OPTIMIZERS.get(str(v), v)},
        "stage": lambda k, v, r: (
            "supervised fine-tuning, what tuneforge trains" if v == "sft"
            else "continued pre-training: the dataset is read as text, every token trained" if v == "pt"
            else refused(f"{STAGES.get(str(v), 'is not a stage tuneforge knows')}, which tuneforge does not train; "
                         f"{SUPERVISED} (stage: sft or pt)")),
        "finetuning_type": lambda k, v, r: (
            lora_or_qlora(v, r) if v == "lora" else {"method": "full"} if v == "full"
            else refused(WHY["finetuning_type"])),
        "quantization_bit": lambda k, v, r: (
            {"bits": v} if r.get("finetuning_type", "lora") == "lora" else refused(WHY["quantized_full"])),
        "quantization_method": lambda k, v, r: (
            "bitsandbytes, as tuneforge quantizes" if str(v).lower() in ("bitsandbytes", "bnb")
            else refused(WHY["quantization_method"])),
        "lora_target": lambda k, v, r: {"target_modules": ["all-linear"] if str(v).lower() == "all" else v},
        "max_steps": lambda k, v, r: (
            "no step limit" if isinstance(v, int) and v <= 0 else {"max_steps": v}),  # Hugging Face's -1
        "report_to": lambda k, v, r: {
            "report_to": [] if v in ("none", ["none"]) else [v] if isinstance(v, str) else v},
        "disable_gradient_checkpointing": lambda k, v, r: {"gradient_checkpointing": v is not True},
        "do_train": lambda k, v, r: "train" if v is True else refused(WHY["do_train"]),
        "dataset_dir": lambda k, v, r: "where dataset_info.json is looked up",
    },
}
# fmt: on

# Keys that add several lines (a dataset's fields) get the reading itself (tuneforge.foreign_datasets).
DatasetHandler = Callable[[RecipeReading, str, Any, Mapping[str, Any]], None]
DATASET_HANDLERS: dict[str, dict[str, DatasetHandler]] = {
    AXOLOTL: {
        "datasets": axolotl_dataset,
        "test_datasets": axolotl_dataset,
        "pretraining_dataset": axolotl_dataset,
    },
    LLAMA_FACTORY: {"dataset": llamafactory_dataset, "eval_dataset": llamafactory_dataset},
}
