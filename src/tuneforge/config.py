"""One typed run config: flat keys in the seeds' words, loaded from YAML, validated, saved with the run.

    from tuneforge.config import load_config
    cfg = load_config("examples/cheese_lora.yaml", {"epochs": "2", "learning_rate": "1e-3"})
    cfg.save("runs/demo/config.yaml")

Every field carries its help text, so the CLI flags (`tuneforge train --rank 16`), the YAML keys and the keyword
arguments of `LLM.train(...)` are one list of names with one set of docs. `setting`, `coerce`, `check_range`
and `validate_fields` serve any settings dataclass (generate.py's GenerationSettings uses them too).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from tuneforge.errors import ConfigError

METHODS = ("lora", "qlora", "full", "scratch")
DATA_FORMATS = ("auto", "raw", "lines", "text", "formatted", "input_output", "chat")
# Format names other tools use, as (format, shipped format file or None).
FORMAT_ALIASES = {"alpaca": ("formatted", "alpaca-format"), "sharegpt": ("chat", None)}


def shown_format(config) -> str:
    """ "format 'formatted' ('alpaca')": the shape a format alias became, with the alias a user may have typed."""
    aliases = [
        alias
        for alias, (shape, file) in FORMAT_ALIASES.items()
        if shape == config.format and file is not None and file == config.format_file
    ]
    return f"format '{config.format}'" + (f" ('{aliases[0]}')" if aliases else "")


RAW_TEXT_FORMATS = ("auto", "raw", "text")  # the shapes cut into overlapping chunks ("auto" may become one)
DEFAULT_BATCH_SIZE = 128  # text-generation-webui's default batch
RECIPES = ("textgen", "seed000", "auto")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
)
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    group: str = "training",
    repeatable: bool = False,
) -> Any:
    """A config field with its help text and allowed values, for validation, the CLI, the web UI and docs.

    `repeatable` list settings take one flag per item (`--stop A --stop B`) instead of comma-separated text.
    """
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "group": group,
        "repeatable": repeatable,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that describes one fine-tuning run. Defaults follow text-generation-webui's Training tab."""

    # --- model ---
    model: str = setting(
        "default",
        "Base model: 'default' (the embedded SmolLM2-135M-Instruct), a local "
        "Hugging Face folder, a .gguf file, or a hub id.",
        group="model",
    )
    method: str = setting(
        "lora",
        "How to train: 'lora' trains small low-rank adapter matrices on a frozen model; "
        "'qlora' does the same on a base quantized to 4 or 8 bits (less memory); 'full' trains "
        "every weight.",
        choices=METHODS,
        group="model",
    )
    architecture: str = setting(
        "gpt2", "scratch: the model family to build.", choices=("gpt2", "llama"), group="scratch"
    )
    n_layer: int = setting(6, "scratch: transformer blocks.", min=1, group="scratch")
    n_head: int = setting(6, "scratch: attention heads (n_embd must divide by it).", min=1, group="scratch")
    n_embd: int = setting(384, "scratch: hidden size.", min=8, group="scratch")
    n_positions: int = setting(
        512, "scratch: the longest sequence the model can read (>= cutoff_len).", min=8, group="scratch"
    )
    tokenizer: str = setting(
        "default",
        "scratch: 'default' (the base model's tokenizer) or 'train' (a byte-level "
        "BPE tokenizer trained on the data).",
        choices=("default", "train"),
        group="scratch",
    )
    vocab_size: int = setting(
        8192,
        "scratch with tokenizer: train — the trained tokenizer's vocabulary size.",
        min=260,
        group="scratch",
    )
    bits: int = setting(4, "QLoRA: bits of the quantized base (4 or 8).", choices=(4, 8), group="model")
    quant_type: str = setting(
        "nf4",
        "QLoRA 4-bit: nf4 (NormalFloat, best for normally distributed weights) or fp4.",
        choices=("nf4", "fp4"),
        group="model",
    )
    double_quant: bool = setting(
        True, "QLoRA 4-bit: also quantize the quantization constants (saves ~0.4 bits/weight).", group="model"
    )
    precision: str = setting(
        "auto",
        "Number format for compute: 'auto' picks bf16 on GPUs that have it and, on a CPU, whichever of "
        "bf16 and fp32 a matmul measured faster once (bf16 wins with AMX, often loses without).",
        choices=PRECISIONS,
        group="model",
    )
    device: str = setting(
        "auto", "Where to run: 'auto' uses CUDA when present, else the CPU.", choices=DEVICES, group="model"
    )
    trust_remote_code: bool = setting(
        False, "Run Python code shipped with a hub model. Off unless you trust it.", group="model"
    )

    # --- data ---
    data: str | None = setting(
        None,
        "Training data: a file (.txt .json .jsonl .csv .tsv .parquet .html .sql, or "
        ".gz of one) or a folder of them.",
        group="data",
    )
    format: str = setting(
        "auto",
        "Shape of the data: 'raw' (one long text cut into chunks), 'lines' (one "
        "example per line), 'text' (records with a text field), 'formatted' (JSON records "
        "rendered by a format file), 'input_output' (prompt/answer pairs), 'chat' (messages "
        "with roles) or 'auto' (detected; the preview says which). Other tools' names work "
        "too: 'alpaca' (formatted with alpaca-format), 'sharegpt' (chat).",
        choices=DATA_FORMATS,
        group="data",
    )
    format_file: str | None = setting(
        None,
        "Format file for 'formatted' data: a JSON map from comma-separated "
        "key sets to templates with %key% placeholders; a path or a shipped name "
        "(alpaca-format, alpaca-chat-format).",
        group="data",
    )
    text_column: str | None = setting(
        None,
        "Column or key holding the text (CSV/TSV/Parquet/JSON); default: 'text' when present.",
        group="data",
    )
    sql_table: str | None = setting(None, "SQL dumps: the table whose INSERT values to read.", group="data")
    sql_column: str | None = setting(None, "SQL dumps: the column of sql_table to read.", group="data")
    encoding: str = setting("utf-8", "Text encoding of the data files.", group="data")
    cutoff_len: int = setting(
        256,
        "Cutoff length: the most tokens in one training example. Longer costs memory.",
        min=8,
        max=1_048_576,
        group="data",
    )
    overlap_len: int | None = setting(
        None,
        "Overlap length (raw text): tokens shared by neighbouring "
        "chunks, so the model does not learn mid-sentence cuts. Must be below "
        "cutoff_len; default: half of cutoff_len.",
        min=0,
        group="data",
    )
    newline_favor_len: int = setting(
        128,
        "Prefer newline cut length (raw text): how many characters a chunk's cut "
        "may move back to land on a newline. 0 turns it off.",
        min=0,
        group="data",
    )
    hard_cut_string: str = setting(
        "\n\n\n",
        "Hard cut string (raw text): text on either side is never joined in "
        "one chunk. Default: three newlines.",
        group="data",
    )
    add_eos_token: bool = setting(
        True,
        "Append the end-of-sequence token to each example so the model learns to "
        "stop (lines; for raw text, to each hard-cut section).",
        group="data",
    )
    train_on_source: bool = setting(
        False,
        "input_output/chat/formatted data: also train on the prompt tokens. "
        "Off: only the answer carries loss.",
        group="data",
    )
    source_max_len: int = setting(
        1024, "input_output data: the most tokens kept from the input (prompt).", min=1, group="data"
    )
    target_max_len: int = setting(
        256, "input_output data: the most tokens kept from the output (answer).", min=1, group="data"
    )
    clean: bool = setting(
        False,
        "Drop records containing stock refusal phrases ('As an AI language model', "
        "'I cannot fulfill', ...), common noise in scraped chat data.",
        group="data",
    )
    filter_patterns: list[str] = setting(
        [],
        "Extra regular expressions; records matching any are dropped (repeat the flag for several).",
        group="data",
        repeatable=True,
    )
    dedup: str = setting(
        "none",
        "Remove duplicate records: 'exact', 'near' (MinHash/LSH) or 'none'.",
        choices=("none", "exact", "near"),
        group="data",
    )
    near_dup_threshold: float = setting(
        0.85,
        "Estimated Jaccard similarity at or above which two records count as near duplicates.",
        min=0.0,
        max=1.0,
        group="data",
    )
    min_length: int = setting(0, "Drop records shorter than this many characters.", min=0, group="data")
    max_length: int | None = setting(
        None, "Drop records longer than this many characters.", min=1, group="data"
    )
    normalize_unicode: bool = setting(
        True, "Normalise Unicode to NFC (one code point per accented letter).", group="data"
    )
    diversity_clusters: int | None = setting(
        None,
        "Cluster records by k-means over text features into this many clusters (for a diverse subset).",
        min=2,
        group="data",
    )
    diversity_subset: int | None = setting(
        None, "With clustering: keep this many records, spread evenly over the clusters.", min=1, group="data"
    )
    max_per_cluster: int | None = setting(
        None, "With clustering: keep at most this many records per cluster.", min=1, group="data"
    )
    validation_split: float = setting(
        0.0,
        "Held-out validation data: a fraction (0.01 = 1%) or, when >= 1, a count of examples (0 = none).",
        min=0.0,
        group="data",
    )
    validation_data: str | None = setting(
        None, "A separate validation file (instead of validation_split).", group="data"
    )
    num_proc: int = setting(1, "Worker processes for tokenizing.", min=1, group="data")
    packing: bool = setting(
        False,
        "Pack short examples into blocks of cutoff_len tokens; positions restart per "
        "example, so there is no attention or loss across examples.",
        group="data",
    )
    placeholders: dict[str, str] | None = setting(
        None,
        "Values for LLaMA-Factory {{placeholders}} in the "
        "records, e.g. name=Ada,author=Forge Labs (YAML: a mapping); "
        "records holding a placeholder without a value are refused.",
        group="data",
    )
    allow_empty_turns: bool = setting(
        False,
        "Train chat records that have an empty assistant turn (the model "
        "learns to end its answer at once); refused otherwise.",
        group="data",
    )
    save_removed: str | None = setting(
        None,
        "Write every record the cleaning steps removed to this JSONL file, with the reason.",
        group="data",
    )

    # --- LoRA ---
    rank: int = setting(
        32,
        "LoRA rank: the rank of the update matrices. Higher learns more and uses more memory.",
        min=1,
        max=65_536,
        group="lora",
    )
    alpha: float = setting(
        64,
        "LoRA alpha: scales the update (scale = alpha / rank). Usually 2 x rank.",
        min=0.0,
        min_exclusive=True,
        group="lora",
    )
    lora_dropout: float = setting(
        0.05,
        "Dropout on the LoRA input, a mild regulariser (recipe auto: 0 for a mixture of experts, whose fused "
        "expert weights take LoRA only without dropout).",
        min=0.0,
        max=0.99,
        group="lora",
    )
    target_modules: list[str] = setting(
        ["q_proj", "v_proj"],
        "Modules that get LoRA matrices: names "
        "(comma-separated) or 'all-linear'. See `tuneforge modules MODEL`.",
        group="lora",
    )

    bias: str = setting(
        "none",
        "Which biases train with LoRA: none, all, or lora_only.",
        choices=("none", "all", "lora_only"),
        group="lora",
    )
    modules_to_save: list[str] = setting(
        [],
        "Modules trained in full and saved with the adapter (e.g. a new "
        "head, or embed_tokens,lm_head for custom syntax).",
        group="lora",
    )
    layers_to_transform: list[int] = setting(
        [], "Only these layer numbers get LoRA (default: all).", group="lora"
    )
    layers_pattern: str | None = setting(
        None,
        "Name of the layer list for layers_to_transform (e.g. 'layers', 'h') when PEFT cannot guess it.",
        group="lora",
    )
    use_rslora: bool = setting(
        False,
        "Rank-stabilised LoRA: scale the update by alpha / sqrt(rank) instead of alpha / rank, so a high rank "
        "learns as fast as a low one (Kalajdzievski, 2023).",
        group="lora",
    )
    use_dora: bool = setting(
        False,
        "DoRA: learn each weight's magnitude apart from its direction (Liu et al., 2024), often better at low "
        "rank; slower steps (PEFT's forward, without tuneforge's lean LoRA lever).",
        group="lora",
    )
    loraplus_lr_ratio: float | None = setting(
        None,
        "LoRA+: train the B matrices (and 1-D weights: biases, DoRA's magnitudes) at this many times the learning "
        "rate (Hayou et al., 2024, use 16), as PEFT's create_loraplus_optimizer groups them; empty: one rate.",
        min=1.0,
        group="lora",
    )
    from_adapter: str | None = setting(
        None,
        "Train further a saved LoRA adapter (a run folder, its adapter/ folder, or a checkpoint's): its weights, "
        "rank, alpha and target modules carry on; the learning rate and steps start over, in another output_dir "
        "(resume_from continues a stopped run exactly instead).",
        group="lora",
    )

    # --- training ---
    recipe: str = setting(
        "auto",
        "Where unset keys get their values: 'auto' (chosen from the data and the machine: batch size, "
        "epochs, learning rate, LoRA rank and all linear layers, warm-up, packing for short examples, a "
        "validation split; each value printed with its reason and saved), or 'textgen' (text-generation-"
        "webui's Training tab: batch 128, micro batch 4, rank 32, alpha 64, "
        "q_proj/v_proj, 3 epochs, lr 3e-4; 'seed000' is the same). Keys you give always win.",
        choices=RECIPES,
    )
    epochs: float = setting(3.0, "Epochs: passes over the training data.", min=0.0, min_exclusive=True)
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides epochs).", min=1)
    batch_size: int | None = setting(
        None,
        "Batch size: examples per optimizer step (recipe textgen: 128, rounded "
        "down to a multiple of micro_batch_size). If it does not fit in memory, "
        "lower micro_batch_size instead; the batch is then accumulated.",
        min=1,
    )
    micro_batch_size: int | str = setting(
        4,
        "Micro batch size: examples per forward/backward pass. Gradient "
        "accumulation steps = batch_size / micro_batch_size. 'auto' picks the "
        "largest that fits this machine's free memory.",
        min=1,
    )
    gradient_accumulation_steps: int | None = setting(
        None,
        "Micro batches per optimizer step, instead of "
        "batch_size (batch = micro_batch_size x this); "
        "derived from batch_size / micro_batch_size when not "
        "set.",
        min=1,
    )
    learning_rate: float = setting(
        3e-4, "Learning rate: step size of each update. 3e-4 = 0.0003.", min=0.0, max=10.0, min_exclusive=True
    )
    lr_scheduler: str = setting(
        "linear",
        "Learning rate scheduler: how the learning rate changes over the run.",
        choices=LR_SCHEDULERS,
    )
    warmup_steps: int = setting(0, "Steps over which the learning rate rises from 0 at the start.", min=0)
    warmup_ratio: float = setting(
        0.0, "Warm-up as a fraction of all steps (used when warmup_steps is 0).", min=0.0, max=1.0
    )
    optimizer: str = setting("adamw_torch", "Optimizer.", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "Weight decay: keeps weights small, a regulariser.", min=0.0)
    adam_beta1: float = setting(0.9, "AdamW beta1.", min=0.0, max=0.9999)
    adam_beta2: float = setting(0.999, "AdamW beta2.", min=0.0, max=0.99999)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon.", min=0.0, min_exclusive=True)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this (0 = no clipping).", min=0.0)
    neftune_noise_alpha: float | None = setting(
        None,
        "NEFTune: add uniform noise of this scale / sqrt(tokens x hidden size) to the input embeddings while "
        "training, never when evaluating or generating (Jain et al., 2023, use 5); empty: none.",
        min=0.0,
        min_exclusive=True,
    )
    stop_at_loss: float = setting(
        0.0,
        "Stop at loss: end training once the training loss falls to this value "
        "(0 = off). Below ~1.0 a model starts forgetting what it knew.",
        min=0.0,
    )
    seed: int = setting(42, "Random seed for initialisation, shuffling and dropout.", min=0)
    data_seed: int | None = setting(
        None,
        "Seed for the order of training examples only (default: seed; the validation split follows seed).",
        min=0,
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass: much less memory, ~25% slower."
    )
    compile: bool = setting(
        False,
        "torch.compile the transformer blocks: faster steps after about a minute of "
        "compiling, so worth it for runs of hundreds of steps. Left unset under recipe auto, the run "
        "turns it on after timing its first steps where this machine gains from it and the run repays it.",
    )
    lean_layers: bool = setting(
        True,
        "Lean forwards: SwiGLU MLPs, RMSNorms and LoRA layers that keep fewer activations, a full "
        "fine-tune's layers that keep no bf16 copy of their weights, and on "
        "a CPU attention of short sequences as two matmuls, faster there than flash "
        "attention (same losses and gradients as the stock ones). Off: the stock "
        "transformers/PEFT forwards.",
    )
    max_time: float | None = setting(
        None,
        "Train for at most this many minutes: the learning rate schedule is planned to end then "
        "(from the measured step time), so a time-boxed run still ends with a decayed learning rate.",
        min=0.01,
    )
    keep_best: bool = setting(
        True,
        "With validation data, keep the checkpoint of the lowest validation loss as checkpoints/best "
        "(never pruned by save_total_limit).",
    )
    load_best_at_end: bool = setting(
        False,
        "With validation data, end the run with the weights of its lowest validation loss instead of "
        "its last step's (saved as the run's adapter/model).",
    )
    early_stopping_patience: int | None = setting(
        None, "Stop when the validation loss has not improved for this many evaluations.", min=1
    )
    save_steps: int | None = setting(None, "Write a resumable checkpoint every this many steps.", min=1)
    save_total_limit: int | None = setting(None, "Keep only the newest this many checkpoints.", min=1)
    resume_from: str | None = setting(
        None, "Continue a stopped run: 'latest' (its newest checkpoint) or a checkpoint folder."
    )
    allow_resume_mismatch: bool = setting(False, "Resume although data-order/optimizer settings changed.")
    copy_parameters_from: str | None = setting(
        None, "Start from an earlier run folder's settings (its config.yaml); keys given here override them."
    )
    logging_steps: int = setting(
        1, "Log loss, learning rate and speed every this many optimizer steps.", min=1
    )
    eval_steps: int | None = setting(
        None, "Measure validation loss every this many steps (default: at the end).", min=1
    )
    report_to: list[str] = setting(
        [],
        "Also send metrics to experiment trackers (through Accelerate): "
        "tensorboard, wandb (WANDB_MODE=offline works), mlflow, trackio, ...",
    )
    num_threads: int | None = setting(
        None,
        "CPU threads for torch (default: one per core that other processes leave free, looked at again when "
        "a step slows down).",
        min=1,
    )

    # --- output ---
    output_dir: str | None = setting(
        None,
        "Run folder (default: runs/<method>-<date>-<time>); a folder holding a finished run is refused, never "
        "overwritten.",
        group="output",
    )
    sample_prompts: list[str] = setting(
        [],
        "Prompts generated before and after training, shown in the report (repeat the flag for several).",
        group="output",
        repeatable=True,
    )
    compare_at_save: bool = setting(
        False,
        "At each checkpoint (save_steps), generate sample_prompts and measure "
        "validation perplexity into <run>/gallery.md and gallery.html: the model "
        "changing checkpoint by checkpoint.",
        group="output",
    )

    # ------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()
        self.given_keys: frozenset[str] = frozenset()  # the keys the caller gave (set by __init__, below)
        self.chosen: list[str] = []  # "key value: reason" for each value a recipe chose (recipe auto)
        self.recipe_notes: list[str] = []  # how load_config read another tool's recipe, one line per key

    @property
    def auto_micro_batch(self) -> bool:
        return self.micro_batch_size == "auto"

    @property
    def accumulation_steps(self) -> int:
        """Micro batches per optimizer step (with micro_batch_size auto: decided by the loop)."""
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        if self.auto_micro_batch:
            return 1
        return max(1, self.examples_per_step // cast(int, self.micro_batch_size))  # a number: not auto

    @property
    def examples_per_step(self) -> int:
        """The batch: examples per optimizer step (read this, not batch_size, which is None unless given)."""
        if self.gradient_accumulation_steps is not None and not self.auto_micro_batch:
            return cast(int, self.micro_batch_size) * self.gradient_accumulation_steps
        if self.batch_size is not None:
            return self.batch_size
        if self.auto_micro_batch:
            return DEFAULT_BATCH_SIZE
        # an untouched default never conflicts with the micro batch the user chose
        micro_batch_size = cast(int, self.micro_batch_size)  # a number: auto returned above
        return max(micro_batch_size, DEFAULT_BATCH_SIZE - DEFAULT_BATCH_SIZE % micro_batch_size)

    @property
    def effective_overlap_len(self) -> int:
        """overlap_len, or half of cutoff_len when it is not set (text-generation-webui's default)."""
        return self.cutoff_len // 2 if self.overlap_len is None else self.overlap_len

    def validate(self) -> None:
        """Coerce each value to its field's type and check its range and its neighbours; raise ConfigError."""
        alias = FORMAT_ALIASES.get(str(self.format).strip().lower())
        if alias:
            self.format, shipped_format_file = alias
            if shipped_format_file and coerce("format_file", self.format_file, str | None) is None:
                self.format_file = shipped_format_file
        elif self.format not in DATA_FORMATS:  # the other tools' names are choices too, e.g. 'alpacca'
            known = [*DATA_FORMATS, *FORMAT_ALIASES]
            close = difflib.get_close_matches(str(self.format).lower(), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"format must be one of {', '.join(known)}; got '{self.format}'{hint}")
        validate_fields(self)
        if isinstance(self.micro_batch_size, str) and self.micro_batch_size.strip().lower() == "auto":
            self.micro_batch_size = "auto"
            if self.gradient_accumulation_steps is not None:
                raise ConfigError(
                    "micro_batch_size auto derives the gradient accumulation from batch_size; remove "
                    "gradient_accumulation_steps or give micro_batch_size a number"
                )
        else:
            try:
                self.micro_batch_size = coerce("micro_batch_size", self.micro_batch_size, int)
            except ConfigError:
                raise ConfigError(
                    f"micro_batch_size must be a whole number or 'auto', got {self.micro_batch_size!r}"
                ) from None
            check_range(field_help()["micro_batch_size"], self.micro_batch_size)
        if self.gradient_accumulation_steps is not None and self.batch_size is not None:
            raise ConfigError(
                f"batch_size ({self.batch_size}) and gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps}) both set the batch; give only one (the "
                "batch is micro_batch_size x gradient_accumulation_steps)"
            )
        # raw-text settings matter only where text is cut into chunks; elsewhere they cannot conflict
        if (
            self.format in RAW_TEXT_FORMATS
            and self.overlap_len is not None
            and self.overlap_len >= self.cutoff_len
        ):
            raise ConfigError(
                f"overlap_len ({self.overlap_len}) must be smaller than cutoff_len "
                f"({self.cutoff_len}); try overlap_len: {self.cutoff_len // 2}"
            )
        if self.method == "scratch" and self.n_positions < self.cutoff_len:
            raise ConfigError(
                f"n_positions ({self.n_positions}) must be at least cutoff_len "
                f"({self.cutoff_len}); try n_positions: {self.cutoff_len}"
            )
        if (
            not self.auto_micro_batch
            and self.batch_size is not None
            and self.gradient_accumulation_steps is None
            and self.batch_size % cast(int, self.micro_batch_size)
        ):  # a number: not auto
            lower = self.batch_size - self.batch_size % cast(int, self.micro_batch_size)
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}); try batch_size: {max(lower, self.micro_batch_size)}"
            )
        if self.validation_split >= 1 and not float(self.validation_split).is_integer():
            raise ConfigError(
                f"validation_split {self.validation_split} must be a fraction below 1 or a whole "
                "count of examples"
            )
        if self.validation_split >= 0.5 and self.validation_split < 1:
            raise ConfigError(
                f"validation_split {self.validation_split} would hold out most of the data; use a "
                "fraction below 0.5, e.g. 0.01"
            )
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ConfigError(
                f"report_to {unknown[0]!r} is not a tracker tuneforge knows; use any of {', '.join(TRACKERS)}"
            )
        # without a folder, resume_from latest would start a new dated one and find no checkpoint in it
        if self.resume_from == "latest" and not self.output_dir:
            raise ConfigError(
                "resume_from: latest needs the run to continue: pass its config.yaml (tuneforge train "
                "runs/NAME/config.yaml --resume_from latest) or its folder as output_dir"
            )
        lora_only = [key for key in ("loraplus_lr_ratio", "use_dora", "use_rslora") if getattr(self, key)]
        if lora_only and self.method not in ("lora", "qlora"):
            raise ConfigError(
                f"{', '.join(lora_only)} {'shape' if len(lora_only) > 1 else 'shapes'} how a LoRA adapter trains, "
                f"but method is {self.method}; use method: lora (or qlora), or leave "
                f"{'them' if len(lora_only) > 1 else 'it'} out"
            )
        if self.from_adapter and self.method not in ("lora", "qlora"):
            raise ConfigError(
                f"from_adapter trains a LoRA adapter further, but method is {self.method}; use method: lora "
                "(or qlora), or merge the adapter first (tuneforge merge) to fine-tune the merged model in full"
            )
        if not self.target_modules:
            raise ConfigError(
                "target_modules is empty; name at least one module, e.g. q_proj,v_proj or all-linear"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, keys: typing.Collection[str] | None = None) -> None:
        """Write the resolved config as YAML (every key, defaults included; chosen values say why); with
        `keys`, only those: a run's input, which the run completes as `tuneforge train` does."""
        notes = "".join(f"# {line.strip()}\n" for line in self.recipe_notes)
        notes += "".join(
            f"# chosen: {line}\n" for line in self.chosen if keys is None or line.split(" ", 1)[0] in keys
        )
        values = {k: v for k, v in self.to_dict().items() if keys is None or k in keys}
        Path(path).write_text(notes + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with some keys changed, validated like any other config; the changed keys count as given."""
        copy = from_dict({**self.to_dict(), **overrides})
        copy.given_keys = self.given_keys | frozenset(overrides)
        copy.chosen = list(self.chosen)
        copy.recipe_notes = list(self.recipe_notes)
        return copy


_dataclass_init = RunConfig.__init__


@functools.wraps(_dataclass_init)
def _init_recording_given_keys(self, *args: Any, **kwargs: Any) -> None:
    # A key given at its default value still counts as given (recipe auto must not change it), which the
    # values alone cannot tell: the generated __init__ is wrapped to record the names it was called with.
    given = frozenset([*field_names()[: len(args)], *kwargs])
    batch, micro = kwargs.get("batch_size"), RunConfig.__dataclass_fields__["micro_batch_size"].default
    if (
        isinstance(batch, int)
        and isinstance(micro, int)
        and batch > 0
        and not given & {"micro_batch_size", "gradient_accumulation_steps"}
    ):
        # a batch given without a micro batch: the default micro batch follows it (batch 6 -> micro 3), rather
        # than an error about a key the user never set
        kwargs["micro_batch_size"] = max(d for d in range(1, micro + 1) if batch % d == 0)
    _dataclass_init(self, *args, **kwargs)
    self.given_keys = given


RunConfig.__init__ = _init_recording_given_keys  # type: ignore[method-assign]


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def field_help() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def from_dict(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig; every unknown key is named at once, each with the closest valid key."""
    names = field_names()
    unknown = [str(key) for key in values if key not in names]
    if unknown:
        raise ConfigError(unknown_keys_message(unknown, source))
    return RunConfig(**values)


# Short names people type from habit that no string distance finds (lr is as close to lora_dropout as to anything)
SHORT_NAMES = {
    "lr": "learning_rate",
    "r": "rank",
    "bs": "batch_size",
    "steps": "max_steps",
    "epoch": "epochs",
}


def key_suggestion(key: str, names: list[str]) -> tuple[str, str | None] | None:
    """(the key of `names` meant by an unknown `key`, the other tool whose name it is or None), or None:
    another tool's name for a key first (lora_r -> rank), then a habitual short name, then the closest spelling."""
    from tuneforge.foreign_recipes import foreign_name  # it reads this module's settings: imported late

    key = key.replace("-", "_")
    other_tool = foreign_name(key)
    if other_tool and other_tool[1] in names:
        return other_tool[1], other_tool[0]
    if SHORT_NAMES.get(key) in names:
        return SHORT_NAMES[key], None
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return (close[0], None) if close else None


def unknown_keys_message(unknown: list[str], source: str) -> str:
    """'unknown key 'x' in run.yaml; did you mean 'y'?' — or all of several keys in one sentence."""
    names = field_names()
    hints: dict[str, str | None] = {}
    for key in unknown:
        suggestion = key_suggestion(key, names)
        if suggestion is None:
            hints[key] = None
        elif suggestion[1]:
            hints[key] = f"did you mean '{suggestion[0]}', tuneforge's name for {suggestion[1]}'s {key}?"
        else:
            hints[key] = f"did you mean '{suggestion[0]}'?"
    valid = f"valid keys: {', '.join(names)}"
    if len(unknown) == 1:
        return f"unknown key '{unknown[0]}' in {source}; {hints[unknown[0]] or valid}"
    listed = ", ".join(f"'{key}' ({hint})" if hint else f"'{key}'" for key, hint in hints.items())
    tail = f"; {valid}" if None in hints.values() else ""
    return f"{len(unknown)} unknown keys in {source}: {listed}{tail}"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                raise yaml.constructor.ConstructorError(
                    problem=f"a key must be a name, not {type(key).__name__}",
                    problem_mark=key_node.start_mark,
                )
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    problem=f"key '{key}' is given twice (first on line {first_line[key]}); keep one",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (or start from defaults) and apply `overrides` on top.

    An axolotl or LLaMA-Factory recipe is read too (detected by its keys; see tuneforge.foreign_recipes):
    the returned config's `recipe_notes` say how each of its keys was read, and which were ignored.
    """
    values: dict[str, Any] = {}
    source = "config"
    reading = None  # set when the file is another tool's recipe (axolotl, LLaMA-Factory)
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        text = path.read_text()
        try:
            loaded = yaml.load(text, Loader=UniqueKeyLoader) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            raise ConfigError(
                f"{path}{where} is not valid YAML: {getattr(error, 'problem', error)}"
            ) from None
        if not isinstance(loaded, dict):
            data_like = path.suffix not in (".yaml", ".yml")
            raise ConfigError(
                f"{path} is not a run config (a YAML mapping of keys to values, e.g. 'epochs: 3')"
                + (f"; to train on it, pass it as data: --data {path}" if data_like else "")
            )
        from tuneforge.foreign_recipes import detect_tool, read_foreign_recipe  # imported late: it reads ours

        tool = detect_tool(loaded)
        if tool is not None:
            reading = read_foreign_recipe(loaded, tool, source, path.parent, given=set(overrides or {}))
            loaded = reading.values
            if "recipe" not in loaded and "recipe" not in (overrides or {}):
                # another tool's recipe trains as written: what it leaves out takes fixed defaults, not auto
                loaded["recipe"] = "textgen"
                reading.lines.append(
                    "recipe textgen (keys the recipe leaves out are not chosen from the data)"
                )
        values.update(loaded)
    for key, value in (overrides or {}).items():
        values[key] = value
    earlier = values.get("copy_parameters_from")
    if earlier:  # seed 003's "Copy parameters from": an earlier run's settings, then the keys given here
        earlier_config = Path(earlier) / "config.yaml" if Path(earlier).is_dir() else Path(earlier)
        if not earlier_config.is_file():
            raise ConfigError(
                f"copy_parameters_from '{earlier}' has no config.yaml; name an earlier run folder"
            )
        inherited = yaml.safe_load(earlier_config.read_text()) or {}
        for key in ("output_dir", "resume_from", "copy_parameters_from", "allow_resume_mismatch"):  # per-run
            inherited.pop(key, None)
        values = {**inherited, **values}
    try:
        config = from_dict(values, source)
    except ConfigError as error:
        if reading is not None:
            raise ConfigError(reading.explain(str(error))) from None
        refused = re.match(r"(\w+) ", str(error))  # "rank must be a whole number, ...": a key's value
        if path is None or refused is None or refused[1] in (overrides or {}) or refused[1] not in loaded:
            raise
        line = next(
            (n for n, row in enumerate(text.splitlines(), 1) if re.match(rf"\s*{refused[1]}\s*:", row)), 0
        )
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {error}") from None
    if reading is not None:
        config.recipe_notes = reading.notes()
    elif path is not None and config.resume_from and _own_folder(config.output_dir, path):
        config.chosen = saved_choices(text, config)  # the same run continued: the reasons still hold
    return config


def _own_folder(output_dir: str | None, config_file: Path) -> bool:
    return bool(output_dir) and Path(str(output_dir)).resolve() == config_file.parent.resolve()


def shown_value(value: Any) -> str:
    """A value as a chosen-value line shows it: lists joined by commas, floats in %g."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def saved_choices(text: str, config: RunConfig) -> list[str]:
    """The '# chosen: key value: reason' lines of a saved config.yaml whose key still has that value, so a
    resumed run's config.yaml and report keep saying why (a value given or edited since is the user's).
    load_config restores them only when the run continues in the file's own folder (resume_from)."""
    lines = [row.removeprefix("# chosen: ") for row in text.splitlines() if row.startswith("# chosen: ")]
    kept = []
    for line in lines:
        key, _, rest = line.partition(" ")
        if key in field_names() and rest.startswith(f"{shown_value(getattr(config, key))}: "):
            kept.append(line)
    return kept


# ---------------------------------------------------------------------- coercion
TRUE_WORDS = {"true", "yes", "1", "on"}
FALSE_WORDS = {"false", "no", "0", "off"}


def validate_fields(settings: Any, error: type[Exception] = ConfigError) -> None:
    """Coerce every field of the dataclass `settings` to its type and check its range, in place."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = coerce(f.name, getattr(settings, f.name), hints[f.name], error)
        setattr(settings, f.name, value)
        check_range(f, value, error)


# List settings whose items may hold commas (a regex like \d{3,4}, a prompt): as text, one item per line.
LINE_LISTS = ("filter_patterns", "sample_prompts")


def _list_from_text(name: str, text: str) -> list:
    """A list setting written as text: a JSON list, or items one per line (LINE_LISTS) or comma-separated."""
    import json

    if text.strip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = None  # a regex character class, say: plain text
        # only a list of strings: "[12]" or "[0,5]" is a regex character class, not a JSON list of numbers
        if isinstance(items, list) and items and all(isinstance(item, str) for item in items):
            return items
    separator = "\n" if name in LINE_LISTS else ","
    return [part.strip() for part in text.split(separator) if part.strip()]


def coerce(name: str, value: Any, annotation: Any, error: type[Exception] = ConfigError) -> Any:
    """Turn CLI strings and YAML scalars into the field's type, or raise `error` naming the key."""
    args = typing.get_args(annotation)
    optional = type(None) in args and (typing.get_origin(annotation) in (typing.Union, types.UnionType))
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
            return None
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    try:
        if origin is dict:  # YAML mapping, or "name=Ada,author=Forge" on the command line
            if isinstance(value, str):
                pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
                if any(len(pair) != 2 for pair in pairs):
                    raise ValueError
                value = {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): str(v) for k, v in value.items()}
        if origin is list:
            if isinstance(value, str):
                value = _list_from_text(name, value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            item = (typing.get_args(annotation) or (str,))[0]
            if item is int:
                annotation = list[int]
                return [int(v) for v in value]
            return [str(v) for v in value]
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in TRUE_WORDS:
                return True
            if str(value).strip().lower() in FALSE_WORDS:
                return False
            raise TypeError
        if annotation is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            text = str(value).strip()
            if text.endswith(".0") and text[:-2].lstrip("-").isdigit():  # "64.0", as a number box sends it
                text = text[:-2]
            return int(text)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError
            return float(str(value).strip())
        if annotation is str:
            if not isinstance(value, (str, int, float)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        kind = {
            int: "a whole number",
            float: "a number",
            bool: "true or false",
            str: "text",
            list[int]: "a comma-separated list of whole numbers",
        }.get(annotation, "a mapping (name=value,...)" if origin is dict else "a comma-separated list")
        raise error(f"{name} must be {kind}, got {value!r}") from None
    return value


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The allowed range in words, e.g. '>= 1 and <= 65536' ('' when unbounded)."""
    low, high = meta.get("min"), meta.get("max")
    lower = "" if low is None else f"> {low}" if meta.get("min_exclusive") else f">= {low}"
    return " and ".join(p for p in (lower, "" if high is None else f"<= {high}") if p)


def check_range(f: dataclasses.Field, value: Any, error: type[Exception] = ConfigError) -> None:
    """Raise `error` naming the key when `value` is not one of its choices or outside its range."""
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        choices = [str(c) for c in meta["choices"]]
        close = [c for c in choices if c.lower() == str(value).lower()] or difflib.get_close_matches(
            str(value), choices, n=1
        )
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise error(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}; got '{value}'{hint}")
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(
        value
    ):  # nan passes every comparison; inf is no setting
        raise error(f"{f.name} must be a finite number; got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = low is not None and (value <= low if meta.get("min_exclusive") else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            raise error(f"{f.name} must be {describe_range(meta)}; got {value}")
