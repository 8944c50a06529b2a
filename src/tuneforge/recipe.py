"""A whole fine-tuning run from a config: data → base → loop → save → report. Every face calls this.

    from tuneforge.recipe import run_training
    model, result = run_training(model, tokenizer, config, device="cpu", precision="bf16", source=source)

It sits above train/, evaluate/, generate and models/ and only ties their steps together (TRL's thin main()):
the data is prepared first, so bad data fails before anything slow; `prepare_base` readies the model for the
method (reload quantized, cast, build from scratch, attach LoRA); the loop trains and saves; the report shows
the losses, the fit diagnosis and generations before and after.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from tuneforge.config import RunConfig
from tuneforge.data.examples import prepare_examples
from tuneforge.data.prepared import PreparedData
from tuneforge.defaults import ModelFacts, apply_defaults
from tuneforge.errors import ConfigError
from tuneforge.evaluate.report import training_variants, write_report
from tuneforge.generate import GenerationSettings, generate
from tuneforge.models.adapters import check_module_names, count_parameters, record_adapter_source
from tuneforge.models.kind import is_peft
from tuneforge.models.loading import ModelSource
from tuneforge.models.methods import with_adapter_from_folder, with_attached_adapter
from tuneforge.models.preparation import prepare_base
from tuneforge.models.scratch import train_bpe_tokenizer
from tuneforge.train.batches import planned_steps
from tuneforge.train.checkpoint import (
    find_checkpoint,
    refuse_earlier_run,
    refuse_resume_early,
    run_identity,
)
from tuneforge.train.estimate import Estimate, estimate_run
from tuneforge.train.launch import detect_launch, launched_sharding
from tuneforge.train.loop import TrainResult, save_trained, train

SAMPLE_SETTINGS = GenerationSettings(max_new_tokens=40, do_sample=True, temperature=0.7, seed=0)


def default_run_dir(config) -> Path:
    return Path("runs") / f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def scratch_tokenizer(config):
    """scratch + tokenizer: train — a byte-level BPE tokenizer trained on the run's own data."""
    from tuneforge.data.cleaning import record_text
    from tuneforge.data.sources import read_source

    source = read_source(
        config.data,
        config.encoding,
        config.text_column,
        config.sql_table,
        config.sql_column,
        config.hard_cut_string,
    )
    texts = [source.text] if source.kind == "text" else [record_text(r) for r in source.records]
    return train_bpe_tokenizer(texts, config.vocab_size)


def run_training(
    model,
    tokenizer,
    config,
    *,
    device: str,
    precision: str,
    source: ModelSource | None = None,
    trust_remote_code: bool = False,
    show_progress: bool = True,
    log=print,
    on_prepared: Callable[[object], None] | None = None,
) -> tuple[object, TrainResult]:
    """Train `model` as `config` says; returns (trained model, TrainResult). Writes the run folder.

    The model may be replaced: qlora and a dtype change reload the base from `source` (default:
    `config.model`), scratch builds a new one (and a new tokenizer with tokenizer: train);
    `result.tokenizer` is the tokenizer the run trained with. `on_prepared(model)` is called with the
    prepared model before the loop starts, so a caller holding the old one can let it go (a reloaded base
    would otherwise sit in memory twice for the whole run).
    """
    if not config.data:
        raise ConfigError("no training data given; set data: path/to/file.txt (or pass --data)")
    if config.method == "scratch" and config.tokenizer == "train":
        tokenizer = scratch_tokenizer(config)
        log(f"trained a byte-level BPE tokenizer with {len(tokenizer):,} tokens on the data")
    # bad data fails before anything slow
    config, prepared = ready_data(config, model, tokenizer, device, log)
    log(f"data: {prepared.describe()}")
    # a mistyped module, before the run folder (a saved adapter names the modules it was built on)
    if config.method in ("lora", "qlora") and not is_peft(model) and not config.from_adapter:
        check_module_names(model, config.target_modules, config.modules_to_save)
    refuse_examples_past_positions(model, prepared, config)  # before the run folder, too

    from accelerate import PartialState

    # cpu=True lets torchrun's CPU processes join over gloo; without it Accelerate sees no GPU and starts each
    # process alone (measured: two separate 1-process runs writing one folder), and the loop's Accelerator
    # keeps this first state.
    processes = PartialState(cpu=device == "cpu")
    main_process = processes.is_main_process  # under accelerate launch/torchrun only rank 0 writes files
    launch = detect_launch(processes.num_processes)
    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir(config)
    if processes.num_processes > 1 and not config.output_dir:  # one folder, though the ranks' clocks differ
        from accelerate.utils import broadcast_object_list

        run_dir = broadcast_object_list([run_dir])[0]
    if config.resume_from:  # refused before config.yaml is rewritten with this run's settings
        refuse_resume_early(run_dir, config, run_identity(config, prepared))
    if not config.resume_from:
        refuse_earlier_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.replace(output_dir=str(run_dir))
    if main_process:
        config.save(run_dir / "config.yaml")
        launch.note_in_config(run_dir / "config.yaml")
        log(launch.describe())
        if launch.shortfall():
            warnings.warn(cast(str, launch.shortfall()), stacklevel=2)  # just checked: not None

    model = prepare_base(
        model,
        tokenizer,
        config,
        device=device,
        precision=precision,
        source=source,
        trust_remote_code=trust_remote_code,
    )  # seeds the RNG with config.seed
    if on_prepared is not None:
        on_prepared(model)
    # sampling must not move the global RNG: dropout and data order draw from it after the seed
    prompts = config.sample_prompts if main_process else []
    with fork_rng():
        samples_before = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in prompts}
    trainable, total = count_parameters(model)
    log(
        f"method: {' + '.join([config.method, *training_variants(config)])}, precision: {precision}, "
        f"device: {device}, trainable parameters: "
        f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%), run folder: {run_dir}"
    )
    if main_process:  # the estimate before step 1: memory by part, and whether it fits
        log(
            "estimate: "
            + estimate_run(
                config,
                model,
                world_size=launch.world_size,
                device=device,
                sharding=launched_sharding(launch, device),
                data=prepared,
            )
            .describe()
            .replace("\n", "; ")
        )

    on_checkpoint = None
    if config.compare_at_save and main_process:
        from tuneforge.evaluate.compare import record_gallery

        def on_checkpoint(trained, step):
            record_gallery(
                trained, tokenizer, run_dir, step, config.sample_prompts, heldout=prepared.validation or None
            )

    model, result = train(
        model,
        tokenizer,
        prepared,
        config,
        run_dir,
        precision=precision,
        device=device,
        show_progress=show_progress,
        on_checkpoint=on_checkpoint,
    )
    result.tokenizer = tokenizer
    from accelerate.state import AcceleratorState

    launch.engine = AcceleratorState().distributed_type.value  # what the loop's Accelerator ran
    if not main_process:
        return model, result
    result.saved_to = save_trained(model, tokenizer, run_dir, state_dict=result.gathered_state)
    if is_peft(model):  # a further run of this model in memory records the saved adapter as where it started
        record_adapter_source(model, model.active_adapter, result.saved_to)
    result.gathered_state = None  # saved; not kept in memory beside the model
    with fork_rng():
        samples_after = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in prompts}
    write_report(
        run_dir,
        config,
        result,
        prepared.describe(),
        samples_before,
        samples_after,
        precision,
        device,
        launch=launch,
    )
    return model, result


def ready_data(config, model, tokenizer, device: str, log=print):
    """(config, prepared data) as a run trains them: the data prepared, examples without loss dropped (and
    named), an attached adapter's shape kept, and the recipe's defaults chosen (printed) and applied."""
    prepared = prepare_examples(config.data, tokenizer, config)
    warn_about_cut_examples(prepared.counts, config, log, prepared.report)
    prepared = drop_examples_without_loss(prepared, config, log)
    if is_peft(model):  # continuing the attached adapter: its rank, alpha, targets and where it came from
        config = with_attached_adapter(model, config)
    else:  # the same for the saved adapter from_adapter names
        config = with_adapter_from_folder(config)
    if config.from_adapter and config.method in ("lora", "qlora"):
        log(
            f"from_adapter: {config.from_adapter} trains on (rank {config.rank}, alpha {config.alpha:g}, "
            f"{', '.join(config.target_modules)}); the learning rate and steps start over"
        )
    # the model in memory, else (no model yet, or scratch: a new one) what config names
    facts = ModelFacts.of_model(model) if model is not None and config.method != "scratch" else None
    config, reshaped = apply_defaults(config, prepared, tokenizer, device, log, model=facts)  # recipe auto
    if reshaped is not prepared:  # split or packed as chosen: its examples without loss were named above
        prepared = drop_examples_without_loss(reshaped, config, log=lambda line: None)
    return config, prepared


def check_data(config) -> None:
    """Prepare (and cache) a run's data with only its model's tokenizer, so a mistake in a record stops the
    run before the model loads (seconds on a CPU); the run then reads the data from the cache."""
    if config.method == "scratch" and config.tokenizer == "train":
        return  # its tokenizer is trained on the data first
    from tuneforge.models.loading import tokenizer_for

    prepare_examples(config.data, tokenizer_for(config.model, config.trust_remote_code), config)


def check_before_loading(config) -> None:
    """What a run can refuse without its model: a device that is not there, a finished or missing run folder,
    nothing to resume. The CLI checks these before the model loads; run_training checks them all again."""
    from tuneforge.hardware import pick_device

    pick_device(config.device)
    with_adapter_from_folder(config)  # a missing or mismatched adapter, before the model loads
    run_dir = Path(config.output_dir) if config.output_dir else None
    if run_dir is None:
        return
    if config.resume_from:
        find_checkpoint(run_dir, config.resume_from)  # raises when there is nothing to resume
    else:
        refuse_earlier_run(run_dir)


def run_settings(config, device: str, tokenizer=None, log=print):
    """(config, prepared data) a run of `config` would train with, the model not loaded (only its tokenizer):
    `tuneforge estimate` estimates the run `train` starts, recipe auto's choices included (printed)."""
    from tuneforge.models.loading import tokenizer_for

    if tokenizer is None:
        tokenizer = tokenizer_for(config.model, config.trust_remote_code)
    return ready_data(config, None, tokenizer, device, log)


def preview_settings(config, tokenizer, device: str, log=print):
    """(config, prepared data) as `tuneforge data inspect` shows them: recipe auto's choices made (printed) from
    the examples a run keeps, and applied as a run applies them; placeholders and examples without loss are
    counted and shown, not refused or dropped."""
    prepared = prepare_examples(config.data, tokenizer, config, strict=False)
    try:
        kept = drop_examples_without_loss(prepared, config, log=lambda line: None)
    except ConfigError:  # none has a token to learn from: the preview shows why
        kept = prepared
    config, reshaped = apply_defaults(config, kept, tokenizer, device, log, strict=False)
    return config, prepared if reshaped is kept else reshaped


@dataclasses.dataclass
class RunPlan:
    """What a run will do, before it starts (the UI's preview): its config with the recipe's choices, its data,
    its optimizer steps and the memory estimate."""

    config: RunConfig
    prepared: PreparedData
    steps: int
    estimate: Estimate
    notes: list[str]  # the lines a run prints while readying its data ("default chosen: ...")

    def describe(self) -> str:
        unit = "packed blocks" if self.config.packing else "training examples"
        return "\n".join(
            [
                *self.notes,
                f"data: {self.prepared.describe()}",
                f"{len(self.prepared.train)} {unit}, batch {self.config.examples_per_step} → "
                f"{self.steps} optimizer steps",
                f"estimate: {self.estimate.describe()}",
            ]
        )


def plan_run(config, model, tokenizer, device: str) -> RunPlan:
    """The run `config` describes, readied as run_training readies it but not started (nothing is written)."""
    notes: list[str] = []
    config, prepared = ready_data(config, model, tokenizer, device, notes.append)
    steps = planned_steps(config, len(prepared.train))
    return RunPlan(config, prepared, steps, estimate_run(config, device=device, data=prepared), notes)


def warn_about_cut_examples(counts: dict, config, log=print, report: dict | None = None) -> None:
    """Say so when cutoff_len cut many examples or left some without a token to learn (their prompts filled
    it): the data line counts them, but a run quietly training on a tenth of its answers needs a warning.
    input/output pairs are cut by source_max_len and target_max_len instead (`report` says so)."""
    examples = counts.get("train_examples", 0) + counts.get("dropped_without_loss", 0)
    cut, empty = counts.get("truncated", 0), counts.get("dropped_without_loss", 0)
    pairs = (report or {}).get("length_bounds") == "source_max_len, target_max_len"
    if pairs and "cutoff_len" in config.given_keys and config.cutoff_len != RunConfig().cutoff_len:
        log(
            f"note: cutoff_len {config.cutoff_len} does not bound input/output pairs; source_max_len "
            f"({config.source_max_len}) and target_max_len ({config.target_max_len}) cut their two parts"
        )
    if examples and (cut >= max(1, examples // 10) or empty):
        bound = (
            f"source_max_len {config.source_max_len} / target_max_len {config.target_max_len}"
            if pairs
            else f"cutoff_len {config.cutoff_len}"
        )
        advice = (
            "raise source_max_len or target_max_len"
            if pairs
            else f"raise cutoff_len (e.g. {2 * config.cutoff_len})"
        )
        log(
            f"warning: {bound} cut {cut} of {examples} examples"
            + (f" and left {empty} with no token to learn from (dropped)" if empty else "")
            + f"; {advice} to keep their answers"
        )


def refuse_examples_past_positions(model, prepared, config) -> None:
    """Learned position embeddings (GPT-2's n_positions) end where they end: a longer example would fail inside
    the forward pass. input_output data is bounded by source_max_len + target_max_len, not cutoff_len."""
    if config.method == "scratch":  # built later, as config says
        limit = config.n_positions if config.architecture == "gpt2" else None
    else:
        limit = getattr(getattr(model, "config", None), "n_positions", None)
    if not isinstance(limit, int):
        return  # rotary positions (Llama and most models since) have no hard end
    lengths = [
        n
        for table in (prepared.train, prepared.validation)
        for n in (table.lengths if hasattr(table, "lengths") else [len(e["input_ids"]) for e in table])
    ]
    longest = max(lengths, default=0)
    if longest > limit:
        raise ConfigError(
            f"the longest prepared example has {longest} tokens but the model has {limit} positions "
            f"(n_positions); keep examples within it (cutoff_len, or for input_output data source_max_len + "
            f"target_max_len, now {config.source_max_len} + {config.target_max_len})"
            + (", or raise n_positions" if config.method == "scratch" else "")
        )


def drop_examples_without_loss(prepared, config, log=print):
    """Drop (and name) prepared examples with no label to train on; none left refuses to start, naming the
    settings to change, instead of training at loss 0.0."""
    from tuneforge.data.prepared import ExampleTable
    from tuneforge.train.loss import examples_without_loss

    empty = examples_without_loss(prepared.train)
    if not empty:
        return prepared
    shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
    if len(empty) == len(prepared.train):
        raise ConfigError(
            f"none of the {len(empty)} training examples has a token left to learn from (the prompt "
            f"fills all cutoff_len {config.cutoff_len} tokens, or train_on_source is off for data "
            "with no target); raise cutoff_len, shorten the prompts, or set train_on_source: true"
        )
    keep = sorted(set(range(len(prepared.train))) - set(empty))
    rows = getattr(prepared.train, "rows", None)
    train = ExampleTable(rows.select(keep)) if hasattr(rows, "select") else [prepared.train[i] for i in keep]
    log(
        f"dropped {len(empty)} training examples with no token to learn from (prepared example ids {shown}); "
        f"raise cutoff_len (now {config.cutoff_len}) to keep them"
    )
    counts = {
        **prepared.counts,
        "dropped_without_loss": prepared.counts.get("dropped_without_loss", 0) + len(empty),
        "train_examples": len(train),
    }
    return dataclasses.replace(prepared, train=train, counts=counts)


@contextmanager
def fork_rng():
    import torch

    with torch.random.fork_rng(devices=[]):
        yield
