"""A whole fine-tuning run from a config: data → method → loop → save → report. The faces all call this.

    from tuneforge.train.run import run_training
    model, result = run_training(model, tokenizer, config, device="cpu", precision="bf16")
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from tuneforge.data.examples import prepare_examples
from tuneforge.errors import ConfigError
from tuneforge.generate import GenerationSettings, generate
from tuneforge.models.methods import prepare_for_training
from tuneforge.models.scratch import build_scratch_model, train_bpe_tokenizer
from tuneforge.train.loop import save_trained, train
from tuneforge.train.report import write_report

SAMPLE_SETTINGS = GenerationSettings(max_new_tokens=40, do_sample=True, temperature=0.7, seed=0)


def default_run_dir(config) -> Path:
    return Path("runs") / f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def scratch_tokenizer(config):
    """scratch + tokenizer: train — a byte-level BPE tokenizer trained on the run's own data."""
    from tuneforge.data.cleaning import record_text
    from tuneforge.data.sources import read_source

    source = read_source(config.data, config.encoding, config.text_column, config.sql_table, config.sql_column,
                         config.hard_cut_string)
    texts = [source.text] if source.kind == "text" else [record_text(r) for r in source.records]
    return train_bpe_tokenizer(texts, config.vocab_size)


def run_training(model, tokenizer, config, *, device: str, precision: str, show_progress: bool = True,
                 log=print):
    """Train `model` as `config` says; returns (trained model, TrainResult). Writes the run folder.

    For method scratch, `model` is replaced by a new one (and `tokenizer` too with tokenizer: train);
    `result.tokenizer` is the tokenizer the run trained with.
    """
    from transformers import set_seed

    if not config.data:
        raise ConfigError("no training data given; set data: path/to/file.txt (or pass --data)")
    if config.method == "scratch" and config.n_positions < config.cutoff_len:
        raise ConfigError(f"n_positions ({config.n_positions}) must be at least cutoff_len ({config.cutoff_len})")
    if config.method == "scratch" and config.tokenizer == "train":
        tokenizer = scratch_tokenizer(config)
        log(f"trained a byte-level BPE tokenizer with {len(tokenizer):,} tokens on the data")
    prepared = prepare_examples(config.data, tokenizer, config)  # bad data fails before anything slow
    log(f"data: {prepared.describe()}")

    from accelerate import PartialState

    main_process = PartialState().is_main_process  # under accelerate launch/torchrun only rank 0 writes files
    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.replace(output_dir=str(run_dir))
    if main_process:
        config.save(run_dir / "config.yaml")

    set_seed(config.seed)
    if config.method == "scratch":
        model = build_scratch_model(config.architecture, tokenizer, n_layer=config.n_layer, n_head=config.n_head,
                                    n_embd=config.n_embd, n_positions=config.n_positions, seed=config.seed).to(device)
    # sampling must not move the global RNG: LoRA initialisation and dropout draw from it after set_seed
    prompts = config.sample_prompts if main_process else []
    with fork_rng():
        samples_before = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in prompts}
    model = prepare_for_training(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"method: {config.method}, precision: {precision}, device: {device}, trainable parameters: "
        f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%), run folder: {run_dir}")

    on_checkpoint = None
    if config.compare_at_save and main_process:
        from tuneforge.evaluate.compare import record_gallery

        def on_checkpoint(trained, step):
            record_gallery(trained, tokenizer, run_dir, step, config.sample_prompts,
                           heldout=prepared.validation or None)

    model, result = train(model, tokenizer, prepared, config, run_dir, precision=precision, device=device,
                          show_progress=show_progress, on_checkpoint=on_checkpoint)
    result.tokenizer = tokenizer
    if not main_process:
        return model, result
    result.saved_to = save_trained(model, tokenizer, run_dir)
    with fork_rng():
        samples_after = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in prompts}
    write_report(run_dir, config, result, prepared.describe(), samples_before, samples_after, precision, device)
    return model, result


@contextmanager
def fork_rng():
    import torch

    with torch.random.fork_rng(devices=[]):
        yield
