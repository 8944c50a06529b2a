"""The Train LoRA form, built from the run config's own field metadata (help text, choices, min/max).

    widgets = {name: config_widget(name) for name in MAIN_FIELDS}     # inside a gr.Blocks
    values = form_values(dict(zip(FORM_FIELDS, raw_values)))           # -> RunConfig keyword values

One list of names drives the CLI flags, the YAML keys and this form, so a setting's help reads the same
everywhere. Only the fields listed here can be set from the browser: paths (data, model, output folder,
removed-records file) are chosen from the project's folders by the training tab, never typed.
"""

from __future__ import annotations

import functools
import typing

from tuneforge.config import DATA_FORMATS, LINE_LISTS, RunConfig, coerce, field_help, from_dict
from tuneforge.data.preflight import preflight
from tuneforge.defaults import AUTO_CHOSEN
from tuneforge.errors import ConfigError

if typing.TYPE_CHECKING:
    from tuneforge.ui.workspace import Workspace

AUTO = "auto"
# shown as auto / a value: the recipe's choices, and compile, which a run left without it decides after timing
# its first steps (a checkbox could not say "not given": unticked is compile's default, False, so never given)
CHOSEN_FOR_THE_USER = (*AUTO_CHOSEN, "compile")
DATASET_MODES = ("Raw text file", "Formatted dataset", "Other data")
OTHER_FORMATS = tuple(f for f in DATA_FORMATS if f not in ("raw", "formatted"))
AUTO_NOTE = (
    " Left empty (or 'auto'), the recipe chooses it (recipe auto: from the data, printed in the log and the"
    " report)."
)

# Labels in the seeds' words (text-generation-webui's Training tab); other fields get their name in words.
LABELS = {
    "rank": "LoRA Rank",
    "alpha": "LoRA Alpha",
    "lora_dropout": "LoRA Dropout",
    "batch_size": "Batch Size",
    "micro_batch_size": "Micro Batch Size",
    "epochs": "Epochs",
    "learning_rate": "Learning Rate",
    "lr_scheduler": "LR Scheduler",
    "cutoff_len": "Cutoff Length",
    "overlap_len": "Overlap Length",
    "newline_favor_len": "Prefer Newline Cut Length",
    "hard_cut_string": "Hard Cut String",
    "save_steps": "Save every n steps",
    "stop_at_loss": "Stop at loss",
    "eval_steps": "Evaluate every n steps",
    "warmup_steps": "Warmup Steps",
    "target_modules": "Target modules",
    "max_steps": "Max steps",
    "use_rslora": "rsLoRA",
    "use_dora": "DoRA",
    "loraplus_lr_ratio": "LoRA+ ratio",
    "neftune_noise_alpha": "NEFTune noise alpha",
}
MAIN_FIELDS = (
    "method",
    "recipe",
    "rank",
    "alpha",
    "lora_dropout",
    "target_modules",
    "batch_size",
    "micro_batch_size",
    "epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "cutoff_len",
    "save_steps",
    "stop_at_loss",
)
QLORA_FIELDS = ("bits", "quant_type", "double_quant")
SCRATCH_FIELDS = ("architecture", "n_layer", "n_head", "n_embd", "n_positions", "tokenizer", "vocab_size")
RAW_FIELDS = ("overlap_len", "newline_favor_len", "hard_cut_string", "add_eos_token")
FORMATTED_FIELDS = ("train_on_source",)
VALIDATION_FIELDS = ("validation_split", "eval_steps", "early_stopping_patience")
ADVANCED_FIELDS = (
    "use_rslora",
    "use_dora",
    "loraplus_lr_ratio",
    "neftune_noise_alpha",
    "optimizer",
    "precision",
    "device",
    "gradient_checkpointing",
    "seed",
    "packing",
    "compile",
    "weight_decay",
    "max_grad_norm",
    "warmup_ratio",
    "lean_layers",
    "save_total_limit",
    "logging_steps",
    "clean",
    "dedup",
    "min_length",
    "sample_prompts",
    "compare_at_save",
)
FORM_FIELDS = (
    MAIN_FIELDS
    + QLORA_FIELDS
    + SCRATCH_FIELDS
    + RAW_FIELDS
    + FORMATTED_FIELDS
    + VALIDATION_FIELDS
    + ADVANCED_FIELDS
)
ESCAPED = ("hard_cut_string",)  # shown with \n escapes: a text box cannot show three bare newlines


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


@functools.cache
def _config_hints() -> dict:
    return typing.get_type_hints(RunConfig)  # resolves every annotation: once, not per field per request


def _kind(name: str) -> tuple[type, bool]:
    """(base type, optional) of a config field."""
    hint = _config_hints()[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if name == "micro_batch_size":  # int or 'auto'
        return str, False
    base = typing.get_origin(hint) or (args[0] if optional else hint)
    return (typing.get_origin(args[0]) or args[0] if optional else base), optional


def shown_value(name: str, value):
    """A config value as its widget shows it."""
    kind, optional = _kind(name)
    if kind is list:
        return ("\n" if name in LINE_LISTS else ",").join(map(str, value or []))
    if name in ESCAPED:
        return value.encode("unicode_escape").decode("ascii")
    if name in CHOSEN_FOR_THE_USER and kind is bool:
        return "true" if value else "false"
    if name in CHOSEN_FOR_THE_USER or kind in (int, float) and optional:  # a text box, empty for None
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # alpha 8, not 8.0
        return "" if value is None else str(value)
    return value


def config_widget(name: str, value=None):
    """The Gradio component for one config field: dropdown for choices, checkbox, number with limits, or text."""
    import gradio as gr

    f = field_help()[name]
    meta = f.metadata
    default = getattr(RunConfig(), name) if value is None else value
    kind, optional = _kind(name)
    info = meta["help"] + (AUTO_NOTE if name in CHOSEN_FOR_THE_USER else "")
    common = dict(label=label(name), info=info, elem_id=f"field-{name}")
    if meta.get("choices"):
        return gr.Dropdown(choices=list(meta["choices"]), value=default, **common)
    if (
        name in CHOSEN_FOR_THE_USER
    ):  # shown empty (not given), so any value typed is given, even textgen's own
        fixed = shown_value(name, getattr(RunConfig(), name))
        if kind is bool:
            return gr.Dropdown(choices=[AUTO, "true", "false"], value=AUTO, **common)
        chooses = f"the recipe chooses (textgen: {fixed})" if fixed else "the recipe chooses"
        return gr.Textbox(value="", placeholder=chooses, **common)
    if kind is bool:
        return gr.Checkbox(value=default, **common)
    if kind in (int, float) and optional:
        # a text box: gr.Number shows an empty value as 0 and sends 0 back (Gradio 6), so an untouched
        # "empty: the default" field failed its minimum of 1, and overlap_len's "half of cutoff_len" became 0
        return gr.Textbox(
            value=shown_value(name, default), placeholder="empty: the default (see above)", **common
        )
    if kind in (int, float):
        # no minimum/maximum here: Gradio's own refusal ("Value 5 is greater than maximum value 0.99.") names
        # no field; the run config's check names it (form.config)
        return gr.Number(value=default, precision=0 if kind is int else None, **common)
    if name in LINE_LISTS:  # items may hold commas: one a line
        return gr.Textbox(value=shown_value(name, default), lines=3, placeholder="one a line", **common)
    return gr.Textbox(value=shown_value(name, default) if default is not None else "", **common)


def form_values(raw: dict) -> dict:
    """Widget values -> config keyword values (empty optional fields become None). A field the recipe
    chooses is shown as 'auto' and given only when a value is typed or picked, so an untouched form trains
    like `tuneforge train --data FILE` does, and a value equal to textgen's own is given too."""
    values = {}
    for name, value in raw.items():
        if name not in FORM_FIELDS:
            continue  # only the form's own fields; anything else a request carries is ignored
        kind, optional = _kind(name)
        if isinstance(value, str):
            value = value.strip() if name not in ESCAPED else value
            if name in ESCAPED:
                value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
        if (
            name in CHOSEN_FOR_THE_USER
            and value in (None, "", AUTO)
            and not (name == "micro_batch_size" and value)
        ):
            continue  # left to the recipe (a micro batch typed 'auto' is that setting's own auto)
        if optional and value in (None, ""):
            value = None
        elif kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if name not in CHOSEN_FOR_THE_USER and _is_default(name, value):
            # not given: an empty max_steps or a warmup_steps of 0 given would stop the recipe choosing
            # epochs and the warm-up, unlike `tuneforge train --data FILE`
            continue
        values[name] = value
    return values


def _is_default(name: str, value) -> bool:
    try:
        return coerce(name, value, _config_hints()[name]) == getattr(RunConfig(), name)
    except ConfigError:
        return False  # a wrong value: from_dict names it


class TrainingForm:
    """The choices that say which data to train on, plus the config widgets, in one fixed input order."""

    DATA_INPUTS = (
        "run_name",
        "dataset_mode",
        "raw_file",
        "formatted_file",
        "format_file",
        "other_file",
        "other_format",
        "validation_file",
        "copy_from",
        "continue_lora",
    )

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.project = workspace.project

    def copied_data(self, saved: dict) -> dict | None:
        """DATA_INPUTS values choosing a saved run's data (its kind, file, format file, validation file), or None
        when datasets/ does not list its data file (or format file)."""
        data, kind = self.project.listed_dataset(saved.get("data")), str(saved.get("format") or "auto")
        mode = {"raw": DATASET_MODES[0], "formatted": DATASET_MODES[1]}.get(kind, DATASET_MODES[2])
        chosen = {
            "dataset_mode": mode,
            "validation_file": self.project.listed_dataset(saved.get("validation_data")),
        }
        if mode == DATASET_MODES[1]:
            chosen.update(
                formatted_file=data, format_file=self.project.listed_format_file(saved.get("format_file"))
            )
        elif mode == DATASET_MODES[2]:
            chosen.update(other_file=data, other_format=kind if kind in OTHER_FORMATS else None)
        else:
            chosen["raw_file"] = data
        if data is None or None in (chosen.get("format_file", ""), chosen.get("other_format", "")):
            return None
        chosen["validation_file"] = chosen["validation_file"] or ""
        return chosen

    def config(self, values: tuple) -> tuple[str, dict]:
        """(run name, config values) from the inputs in DATA_INPUTS + FORM_FIELDS order; paths checked here."""
        data = dict(zip(self.DATA_INPUTS, values[: len(self.DATA_INPUTS)], strict=True))
        fields = dict(zip(FORM_FIELDS, values[len(self.DATA_INPUTS) :], strict=True))
        settings = form_values(fields)
        mode = data["dataset_mode"]
        if mode == "Formatted dataset":
            settings.update(
                data=str(self.project.dataset(data["formatted_file"] or "")),
                format="formatted",
                format_file=self.project.format_file(data["format_file"] or ""),
            )
        elif mode == "Other data":
            if data["other_format"] not in OTHER_FORMATS:
                raise ConfigError(f"data format must be one of {', '.join(OTHER_FORMATS)}")
            settings.update(
                data=str(self.project.dataset(data["other_file"] or "")), format=data["other_format"]
            )
        elif mode == "Raw text file":
            settings.update(data=str(self.project.dataset(data["raw_file"] or "")), format="raw")
        else:
            raise ConfigError(f"dataset kind must be one of {', '.join(DATASET_MODES)}")
        if data["validation_file"]:
            settings["validation_data"] = str(self.project.dataset(data["validation_file"]))
        if data[
            "continue_lora"
        ]:  # seed 003's "resume a prior run" with edited parameters: its LoRA trains on
            settings["from_adapter"] = self._copied_adapter(data["copy_from"])
            for key in ("use_dora", "use_rslora"):  # a box shown unticked is a choice here, not "not given"
                settings[key] = bool(fields.get(key))
        if self.workspace.model_name is None:
            raise ConfigError("load the model to train in the Model tab first; the run trains that model")
        settings["model"] = self.project.model(self.workspace.model_name)
        try:
            config = from_dict(settings)  # a wrong value is named now, not in the job's log
        except ConfigError as error:  # by the label on the page, then the key the YAML and CLI use
            named = [name for name in FORM_FIELDS if str(error).startswith(f"{name} ")]
            raise (ConfigError(f"{label(named[0])}: {error}") if named else error) from None
        # and data that cannot train (empty, binary, a missing format file), before a run folder is made
        preflight(config)
        if config.from_adapter:  # and an adapter of another shape than asked for, before a job starts
            from tuneforge.models.methods import with_adapter_from_folder

            with_adapter_from_folder(config)
        return data["run_name"], settings

    def _copied_adapter(self, run: str | None) -> str:
        """The adapter folder of the run picked in Copy parameters from."""
        from tuneforge.errors import ModelError
        from tuneforge.models.adapters import require_adapter_folder

        if not run:
            raise ConfigError("pick the run whose LoRA to train further in Copy parameters from")
        try:
            return str(require_adapter_folder(self.project.run_dir(run), "Copy parameters from"))
        except ModelError:
            raise ConfigError(
                f"run '{run}' has no LoRA adapter to train further (a full fine-tune, or a run that did not "
                "finish); untick Train its LoRA further to start a new LoRA with its settings"
            ) from None
