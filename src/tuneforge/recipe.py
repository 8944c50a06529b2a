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

from tuneforge.data.examples import prepare_examples
from tuneforge.defaults import apply_defaults
from tuneforge.errors import ConfigError
from tuneforge.evaluate.report import write_report
from tuneforge.generate import GenerationSettings, generate
from tuneforge.models.adapters import count_parameters
from tuneforge.models.loading import ModelSource
from tuneforge.models.preparation import prepare_base
from tuneforge.models.scratch import train_bpe_tokenizer
from tuneforge.train.estimate import estimate_run
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
    prepared = prepare_examples(config.data, tokenizer, config)  # bad data fails before anything slow
    prepared = drop_examples_without_loss(prepared, config, log)
    config, prepared = apply_defaults(config, prepared, device, log)  # recipe auto/seed000: chosen, printed
    log(f"data: {prepared.describe()}")

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
        f"method: {config.method}, precision: {precision}, device: {device}, trainable parameters: "
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
