"""Defaults chosen from the data and the machine, each with its reason, for the keys the user did not give.

    from tuneforge.config import RunConfig
    from tuneforge.defaults import DataStats, Machine, choose_defaults
    config, choices = choose_defaults(RunConfig(recipe="auto"), DataStats("raw", 140, 35_840), Machine("cpu", 2))
    print("\\n".join(c.describe() for c in choices))   # ... batch_size 8: 126 examples → 16 steps over 1 epoch

`recipe: auto` (the default) sizes the run to the data: a batch that gives enough steps to learn from a small
file, fewer epochs for a large one, LoRA on all linear layers (the default of text-generation-webui, unsloth and
the QLoRA paper today), a short warm-up, packing for short examples and a held-out validation split. Raw
text's overlapping chunks count as the repeats they are (one epoch trains each token twice), LoRA on small
data learns at 1e-3 over about two passes of each token, and on a CPU a step and a validation pass are capped
in tokens so each takes seconds.
`recipe: textgen` (`seed000` is the same) keeps text-generation-webui's Training-tab numbers, so a user
following seed 000 gets them exactly. `choose_defaults` is pure; `apply_defaults` is the one call the recipe
makes right after the data is prepared (it also carves the validation split and packs the prepared examples).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from tuneforge.config import shown_value
from tuneforge.errors import DataError
from tuneforge.models.kind import packs_exactly
from tuneforge.train.batches import planned_steps
from tuneforge.train.optim import ratio_warmup_steps

# text-generation-webui's Training tab, as seed 000 trains
TEXTGEN_RECIPE = {
    "batch_size": 128,
    "micro_batch_size": 4,
    "rank": 32,
    "alpha": 64,
    "target_modules": ["q_proj", "v_proj"],
    "epochs": 3.0,
    "learning_rate": 3e-4,
}
LORA_METHODS = ("lora", "qlora")
# the keys recipe auto may choose (when not given); their flags' help says so instead of a fixed default
AUTO_CHOSEN = (
    "validation_split", "packing", "epochs", "micro_batch_size", "batch_size", "learning_rate", "rank", "alpha",
    "target_modules", "warmup_ratio",
)  # fmt: skip
STEPS_PER_EPOCH = 16  # enough optimizer steps per pass for a small file to be learned, not just seen
LARGE_DATA_EXAMPLES = 2_000  # beyond this many examples one or two passes are enough
# On a CPU a step of 64 long examples takes minutes (benchmarks/outcome.py: a 3-step trial on 1,000 Alpaca
# records); about 1,024 tokens per core keep a step to seconds, and ~4,096 held-out tokens an evaluation.
CPU_STEP_TOKENS_PER_CORE = 1_024
CPU_VALIDATION_TOKENS = 4_096
# LoRA on small data: 2e-4 (QLoRA's rate, tuned for long runs) barely moves a model in the few dozen steps a
# small file gives; benchmarks/outcome.py measured 1e-3 closing most of the gap to seed 004's full fine-tune.
SMALL_DATA_LORA_LR = 1e-3
TOKEN_PASSES_AT_SMALL_DATA_LR = 2  # how often a short LoRA run at that rate trains each token (see the rule)
WARMUP_RATIO = 0.05
MIN_HOLD_OUT_EXAMPLES = 20  # below this a validation split is not carved, and one pass is enough
# config.json's keys for a mixture of experts' experts per layer (mixtral, qwen2/3_moe, deepseek, ...)
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
RESHAPE_DATA = {"validation_split", "packing"}  # chosen keys after which the data is prepared again
NOTHING_MEASURES_THE_FIT = "the report cannot see overfitting (give validation_data to see it)"


@dataclass(frozen=True)
class Choice:
    key: str
    value: object
    reason: str

    def describe(self) -> str:
        return f"{self.key} {shown_value(self.value)}: {self.reason}"


@dataclass(frozen=True)
class DataStats:
    """What the choice rules read of the prepared data."""

    shape: str
    examples: int  # training examples (raw text: chunks)
    tokens: int  # tokens in them
    has_validation: bool = False
    lengths: tuple[int, ...] = ()  # each example's tokens (raw text: its split holds out the last chunks)
    section_starts: tuple[int, ...] = ()  # raw text: the chunks that begin a hard-cut section

    @property
    def mean_tokens(self) -> float:
        return self.tokens / max(1, self.examples)

    @classmethod
    def of(cls, prepared) -> DataStats:
        lengths = getattr(prepared.train, "lengths", None)
        tokens = sum(lengths) if lengths is not None else sum(len(e["input_ids"]) for e in prepared.train)
        return cls(
            prepared.shape,
            len(prepared.train),
            int(tokens),
            bool(len(prepared.validation)),
            tuple(int(n) for n in lengths) if lengths is not None and prepared.shape == "raw" else (),
            tuple(prepared.report.get("section_starts", ())) if prepared.shape == "raw" else (),
        )


@dataclass(frozen=True)
class Machine:
    device: str  # cpu, cuda, mps
    cores: int = 1

    @classmethod
    def detect(cls, device: str) -> Machine:
        # os.cpu_count() is None only where the count is unknown; passed on as before
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls(device, cast(int, cores))


@dataclass(frozen=True)
class ModelFacts:
    """What the choice rules read of the model's config.json."""

    model_type: str = "unknown"
    experts: int = 0  # a mixture of experts: experts per layer (0: a dense model)

    @classmethod
    def of_config(cls, read: dict) -> ModelFacts:
        """From a model config as a dict (config.json; a multimodal model's text_config holds its experts)."""
        nested = read.get("text_config")
        text: dict = nested if isinstance(nested, dict) else {}
        experts = next((c[k] for c in (read, text) for k in EXPERT_KEYS if isinstance(c.get(k), int)), 0)
        return cls(str(read.get("model_type") or "unknown"), experts)

    @classmethod
    def of_model(cls, model) -> ModelFacts:
        """The model in memory (under any PEFT wrapper)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return cls.of_config(base.config.to_dict())

    @classmethod
    def of_run(cls, config) -> ModelFacts:
        """The model a run of `config` would load, before it is loaded: its scratch architecture, else its
        config.json from the folder or the local hub cache (never downloaded here: 'unknown' if absent)."""
        if config.method == "scratch":
            return cls(config.architecture)
        from tuneforge.models.loading import model_config_of

        return cls.of_config(model_config_of(config.model, config.trust_remote_code))


def choose_defaults(config, data: DataStats, machine: Machine, model: ModelFacts | None = None):
    """(config with the chosen values, [Choice]) — only keys absent from `config.given_keys` are chosen.
    `model` decides whether packing is exact and LoRA may drop out; None: not checked (a dense llama)."""
    from tuneforge.data.examples import held_out_count  # the split's own count (imported late: data is heavy)

    given = config.given_keys
    choices: list[Choice] = []

    def choose(key: str, value, reason: str) -> None:
        if key not in given:
            choices.append(Choice(key, value, reason))

    lora = config.method in LORA_METHODS
    if config.recipe in ("textgen", "seed000"):
        recipe = dict(TEXTGEN_RECIPE)
        if given & {"gradient_accumulation_steps", "micro_batch_size", "batch_size"}:
            recipe.pop("micro_batch_size")  # a given batch already sized the micro batch (RunConfig)
            if "gradient_accumulation_steps" in given:
                recipe.pop("batch_size")  # the batch is micro x accumulation then
            elif isinstance(config.micro_batch_size, int):  # the recipe's batch, rounded to the given micro
                recipe["batch_size"] = max(config.micro_batch_size, 128 - 128 % config.micro_batch_size)
        for key, value in recipe.items():
            if lora or key not in ("rank", "alpha", "target_modules"):
                choose(key, value, f"recipe {config.recipe} (text-generation-webui's Training tab)")
        return _applied(config, choices)

    examples = data.examples
    validation_split = 0.0
    if (
        "validation_split" not in given
        and "validation_data" not in given
        and not data.has_validation
        and examples >= MIN_HOLD_OUT_EXAMPLES
    ):
        validation_split = 0.1 if examples < 1_000 else max(1, min(200, round(0.05 * examples)))
        held = held_out_count(examples, validation_split)
        affordable = max(1, int(CPU_VALIDATION_TOKENS // max(1.0, data.mean_tokens)))
        if machine.device == "cpu" and held > affordable:  # a count: evaluated at every eval_steps
            validation_split, held = float(affordable), affordable
        reason = f"no validation data given: {held} of {examples} examples held out to measure the fit"
        trained: int | None = examples - held
        if data.lengths:  # raw text: the last chunks; those sharing text with them train neither
            trained = _trained_chunks(
                data.lengths, validation_split, config.effective_overlap_len, data.section_starts
            )
            reason = (
                f"no validation data given: the last {held} of {examples} chunks held out to measure the fit"
            )
            if trained is not None and examples - held - trained:
                reason += f", the {examples - held - trained} before them (sharing their text) not trained on"
        if trained is None:  # the split and the chunks overlapping it would take every chunk: none carved
            validation_split = 0.0
            choose(
                "validation_split",
                0.0,
                f"no validation data given, and holding out chunks (and those sharing their text) would take "
                f"all {examples}: {NOTHING_MEASURES_THE_FIT}",
            )
        else:
            choose("validation_split", validation_split, reason)
            examples = trained
    elif not ({"validation_split", "validation_data"} & given or data.has_validation):
        choose(
            "validation_split",
            0.0,
            f"no validation data given, and {examples} examples are too few to hold some out "
            f"(fewer than {MIN_HOLD_OUT_EXAMPLES}): {NOTHING_MEASURES_THE_FIT}",
        )
    packing = False
    sized = given & {"batch_size", "micro_batch_size", "gradient_accumulation_steps"}  # counted in examples
    if (
        data.shape != "raw"
        and "packing" not in given
        and not sized
        and data.mean_tokens < config.cutoff_len / 4
    ):
        short = f"examples average {data.mean_tokens:.0f} tokens"
        if model is not None and not packs_exactly(model.model_type):
            choose(
                "packing",
                False,
                f"{short}, but this model (model_type {model.model_type}) is not known to keep packed examples "
                "apart",
            )
        else:
            packing = True
            per_block = max(1, int(config.cutoff_len // data.mean_tokens))
            choose(
                "packing",
                True,
                f"{short}, so about {per_block} fit in one cutoff_len ({config.cutoff_len}) block",
            )
            examples = max(
                1,
                math.ceil(
                    data.tokens * (1 - _held_fraction(validation_split, data.examples)) / config.cutoff_len
                ),
            )

    # packed blocks are counted from the tokens before packing makes them: "about"
    unit = "packed blocks" if packing else "examples"
    count = f"about {examples}" if packing else str(examples)
    epochs = config.epochs
    if "epochs" not in given and "max_steps" not in given:
        epochs = (
            3.0 if examples < LARGE_DATA_EXAMPLES else 1.0 if examples >= 10 * LARGE_DATA_EXAMPLES else 2.0
        )
        size = "small" if epochs == 3 else "large" if epochs == 1 else "medium-sized"
        reason = f"{count} training {unit} is {size} data"
        overlap = config.effective_overlap_len if data.shape == "raw" else 0
        # neighbouring raw chunks share `overlap` tokens: one epoch already trains those tokens twice
        repeats = config.cutoff_len / max(1, config.cutoff_len - overlap)
        short_lora = lora and size == "small" and "learning_rate" not in given
        if short_lora:
            # benchmarks/outcome_sweep.py: LoRA at 1e-3 generalises best when each token is trained about twice.
            # Lee sentences (30k chars, half-overlapping chunks): 1 epoch held-out ppl 27.5, 2 epochs 29.7;
            # 40 Alpaca records: 2 epochs lower the held-out response loss 2.106 -> 2.089 (ROUGE-L .142 -> .150);
            # with under MIN_HOLD_OUT_EXAMPLES a second pass memorises them (10 records: 2.116 -> 2.136).
            few = data.examples < MIN_HOLD_OUT_EXAMPLES
            epochs = 1.0 if few else float(max(1, round(TOKEN_PASSES_AT_SMALL_DATA_LR / repeats)))
            if few:
                how = f"one pass (under {MIN_HOLD_OUT_EXAMPLES} examples a second memorises them)"
            else:
                passes = "one pass trains" if epochs == 1 else f"{epochs:g} passes train"
                chunks = f" (raw chunks overlap by {overlap} tokens)" if overlap else ""
                how = f"{passes} each token {epochs * repeats:.1f}x{chunks} (more passes overfit)"
            reason += f": at LoRA's small-data learning rate {SMALL_DATA_LORA_LR:g}, {how}"
        elif overlap and epochs > 1:
            epochs = float(max(1, math.floor(epochs / repeats)))
            reason += (
                f"; raw chunks overlap by {overlap} tokens, so one epoch trains each token {repeats:.1f}x"
            )
        choose("epochs", epochs, reason)
    micro = config.micro_batch_size
    if (
        "micro_batch_size" not in given
        and "gradient_accumulation_steps" not in given
        and machine.device == "cuda"
    ):
        micro = "auto"
        choose("micro_batch_size", "auto", "the largest micro batch that fits this GPU's free memory")
    if "batch_size" not in given and "gradient_accumulation_steps" not in given:
        batch = 2 ** max(0, min(6, round(math.log2(max(1, examples / STEPS_PER_EPOCH)))))  # 1 .. 64
        capped = ""
        step_tokens = batch * (config.cutoff_len if packing else data.mean_tokens)
        if machine.device == "cpu" and step_tokens > CPU_STEP_TOKENS_PER_CORE * machine.cores:
            per_example = config.cutoff_len if packing else max(1.0, data.mean_tokens)
            fit = CPU_STEP_TOKENS_PER_CORE * machine.cores / per_example
            batch = 2 ** max(0, math.floor(math.log2(max(1, fit))))
            capped = (
                f" (about {CPU_STEP_TOKENS_PER_CORE:,} tokens a step per CPU core, so a step takes seconds)"
            )
        if "micro_batch_size" in given and isinstance(micro, int) and batch % micro:  # the user's micro batch
            batch = max(micro, batch - batch % micro)
        steps = math.ceil(examples / batch) * (epochs if "max_steps" not in given else 1)
        over = (
            f"over {epochs:g} epoch{'' if epochs == 1 else 's'}" if "max_steps" not in given else "per epoch"
        )
        choose("batch_size", batch, f"{count} {unit} → {math.ceil(steps)} steps {over}{capped}")
        if micro == config.micro_batch_size and "micro_batch_size" not in given and isinstance(micro, int):
            micro = min(batch, 8 if machine.device != "cpu" else 4)
            if micro != config.micro_batch_size:
                choose(
                    "micro_batch_size",
                    micro,
                    f"the whole batch in one forward pass on {machine.cores} {machine.device} cores",
                )
    if config.method == "full":
        choose("learning_rate", 5e-5, "full fine-tuning moves every weight: seed 004's 5e-5")
    elif lora and examples < LARGE_DATA_EXAMPLES:
        choose(
            "learning_rate",
            SMALL_DATA_LORA_LR,
            f"LoRA on small data ({count} {unit}): a short run needs larger steps than QLoRA's 2e-4",
        )
    elif lora:
        choose("learning_rate", 2e-4, "LoRA on all linear layers: the QLoRA paper's 2e-4")
    ratio = getattr(config, "loraplus_lr_ratio", None)
    if lora and ratio and choices and choices[-1].key == "learning_rate":
        # LoRA+ trains B at ratio x the rate: at the plain rate, ratio 16 diverged in 2 steps (4.26 -> 6.60);
        # A at rate / sqrt(ratio), B at rate x sqrt(ratio), trained as plain LoRA did (4.26 -> 3.78 -> 3.43)
        plain = choices.pop()
        choose(
            "learning_rate",
            float(f"{plain.value / ratio**0.5:.3g}"),
            f"{plain.reason}, over sqrt(loraplus_lr_ratio {ratio:g}): LoRA+ trains B at {ratio:g}x",
        )
    if lora:
        rank = 16 if data.tokens < 200_000 else 32
        choose("rank", rank, f"{data.tokens:,} tokens of data: rank {rank} has room enough")
        rank = rank if "rank" not in given else config.rank
        if getattr(config, "use_rslora", False):  # rsLoRA scales by alpha / sqrt(rank): the same scale 2
            choose(
                "alpha",
                float(f"{2 * rank**0.5:.4g}"),
                "2 x sqrt(rank): scale 2 under rsLoRA's alpha / sqrt(rank)",
            )
        else:
            choose("alpha", 2 * rank, "2 x rank (scale 2)")
        choose(
            "target_modules",
            ["all-linear"],
            "every linear layer, as text-generation-webui, unsloth and the QLoRA paper default to",
        )
        if model is not None and model.experts:
            choose(
                "lora_dropout",
                0.0,
                f"{model.experts} experts a layer: PEFT's LoRA on fused expert weights works only without dropout",
            )
    if "warmup_steps" not in given and "warmup_ratio" not in given:
        steps = planned_steps(_applied(config, choices)[0], examples)
        # a linear warm-up's first step trains at rate 0: in a run this short that step is all of it
        if ratio_warmup_steps(WARMUP_RATIO, steps) <= 1:
            short_run = "1 step is" if steps == 1 else f"{steps} steps are"
            choose("warmup_ratio", 0.0, f"{short_run} too few to warm up: step 1 would train at rate 0")
        else:
            choose("warmup_ratio", WARMUP_RATIO, "the first 5% of steps warm the learning rate up from 0")
    return _applied(config, choices)


def _trained_chunks(
    lengths: tuple[int, ...], validation_split: float, overlap_len: int, section_starts: tuple[int, ...]
) -> int | None:
    """Raw text's training chunks left by the split (data.examples' own rule), or None when it takes them all."""
    from tuneforge.data.examples import hold_out_last_chunks

    try:
        return len(hold_out_last_chunks(list(lengths), validation_split, overlap_len, section_starts)[0])
    except DataError:
        return None


def _held_fraction(validation_split: float, examples: int) -> float:
    return validation_split if validation_split < 1 else validation_split / max(1, examples)


def _applied(config, choices: list[Choice]):
    if not choices:
        return config, choices
    chosen = config.replace(**{c.key: c.value for c in choices})
    chosen.given_keys = config.given_keys  # what the user gave, not what was chosen for them
    chosen.chosen = [c.describe() for c in choices]
    return chosen, choices


def data_choices_only(log=print):
    """A log that passes on every line but recipe auto's training values: of its choices only those that shape
    the data (its split, packing), for the data verbs (`train` and `estimate` show the rest)."""
    shaping = tuple(f"default chosen: {key} " for key in sorted(RESHAPE_DATA))

    def passed_on(line: str) -> None:
        if not line.startswith("default chosen: ") or line.startswith(shaping):
            log(line)

    return passed_on


def apply_defaults(
    config, prepared, tokenizer, device: str, log=print, strict: bool = True, model: ModelFacts | None = None
):
    """(config, prepared) with the recipe's defaults chosen, printed and applied to the prepared data.

    A chosen validation split or packing prepares the data again with the chosen config, so a run's data is
    always prepare_examples(data, its saved config.yaml): resuming from that file finds the same examples and
    the same fingerprint (the second preparation is cached for it). `strict` as in prepare_examples. `model`:
    the loaded model's facts (ModelFacts.of_model); without it they are read from config.model's config.json."""
    from tuneforge.data.cache import MARKER
    from tuneforge.data.examples import prepare_examples

    if config.data and (Path(config.data) / MARKER).is_file():  # saved preprocessed data trains as saved
        config = config.replace(validation_split=config.validation_split, packing=config.packing)
    if model is None and (config.recipe == "auto" or "packing" in config.given_keys):  # else unused
        model = ModelFacts.of_run(config)
    if (
        model is not None
        and config.packing
        and "packing" in config.given_keys
        and not packs_exactly(model.model_type)
    ):
        warnings.warn(
            f"packing: true with a model of model_type {model.model_type}, which is not known to keep packed "
            "examples apart: examples packed into one block may attend to each other; packing: false trains "
            "each alone",
            stacklevel=2,
        )
    prepared_with = config  # the settings the data was prepared with
    config, choices = choose_defaults(config, DataStats.of(prepared), Machine.detect(device), model)
    for choice in choices:
        log(f"default chosen: {choice.describe()}")
    if any(c.key in RESHAPE_DATA and c.value != getattr(prepared_with, c.key) for c in choices):
        prepared = prepare_examples(config.data, tokenizer, config, strict=strict)
    return config, prepared
